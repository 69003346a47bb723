"""Stage 5: the accuracy-regression gate. Compares a report against a committed gates file.

``check`` believes nothing it cannot re-derive: the report must match its schema (finite metrics in
range, one entry per file), every file it judged must still be on disk with the same sha256 and
record, and it must have been made on the test set and with the params the gates were written for.
With ``recompute`` the accuracies themselves are measured again from the files.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from pathlib import Path
from typing import Any, Callable

import yaml

from ..core.artifacts import OUT_DIR, write_text
from ..core.contract import declared
from ..core.errors import PipelineError, clip, short
from ..core.params import CheckParams, ParamsError, read_yaml
from ..core.provenance import chain, disagreements
from ..core.tables import text_table
from ..data import load_dataset
from ..export.measure import KerasParents, file_contract, measure
from ..export.report import (
    SCHEMA,
    file_problems,
    flatten,
    latency_ratio,
    load_report,
    params_difference,
    params_hash,
    sibling,
    test_set,
)


@dataclasses.dataclass(frozen=True)
class Violation:
    file: str
    gate: str
    limit: Any
    value: Any
    baseline: Any = None  # what the gate's number was when the gates were written (made_with.baseline)
    kind: str = "gate"  # gate | file (the disk differs from the report) | binding (gates made for other data/params)
    #                     | records (the files' records say other params than the report) | recomputed


def _drop(e: dict) -> float | None:
    return None if e.get("keras_accuracy") is None else e["keras_accuracy"] - e["accuracy"]


# Latency gates are ratios of two latencies of the same run, so that a slower machine does not fail
# them, but a change that makes one file slower relative to its sibling does.
RATIOS = {"max_p50_vs_float32": {"fmt": "float32"}, "max_p50_vs_unpruned": {"unpruned": True}}

# gate name -> (what it reads from a report entry, given all the report's entries by file; True if the
# value must stay at or above the limit)
GATES: dict[str, tuple[Callable[[dict, dict], Any], bool]] = {
    "min_accuracy": (lambda e, _: e["accuracy"], True),
    "min_agreement": (lambda e, _: e.get("keras_agreement"), True),
    "max_drop": (lambda e, _: _drop(e), False),
    "max_size_bytes": (lambda e, _: e["size_bytes"], False),
    "max_gzip_bytes": (lambda e, _: e["gzip_bytes"], False),
    **{name: ((lambda w: lambda e, entries: latency_ratio(e, entries, **w))(which), False)
       for name, which in RATIOS.items()},
    # one class's accuracy: min_class_accuracy:<class>, or min_class_accuracy:<task>:<class> (multi-task)
    "min_class_accuracy": (lambda e, _: None, True),
}


TASK_GATES = ("min_accuracy", "min_agreement", "max_drop")  # also per task: "<gate>:<task>"


def _class_accuracy(e: dict, which: str) -> float | None:
    if "tasks" in e:
        task, _, name = which.partition(":")
        return ((e["tasks"].get(task) or {}).get("per_class") or {}).get(name)
    return (e.get("per_class") or {}).get(which)


def reader(gate: str) -> tuple[Callable[[dict, dict], Any], bool] | None:
    """(read, at_least) for a gate name; ``<gate>:<task>`` reads that task's numbers of a multi-task
    entry, ``min_class_accuracy:[<task>:]<class>`` one class's accuracy. ``read(entry, entries)``."""
    base, _, rest = gate.partition(":")
    if base not in GATES or (rest and base not in TASK_GATES + ("min_class_accuracy",)) or \
            (base == "min_class_accuracy" and not rest):
        return None
    read, at_least = GATES[base]
    if base == "min_class_accuracy":
        return (lambda e, _: _class_accuracy(e, rest)), at_least
    if not rest:
        return read, at_least
    return (lambda e, entries: read(e["tasks"][rest], entries) if rest in e.get("tasks", {}) else None), at_least


@dataclasses.dataclass(frozen=True)
class Gates:
    limits: dict[str, dict[str, float]]  # file -> gate -> limit
    made_with: dict[str, Any]  # schema, dataset, test_examples, test_set, params: what the limits were measured on


def load_gates(path: Path) -> Gates:
    try:
        data = read_yaml(path, "gates file")
    except ParamsError as exc:
        if not path.exists():
            raise PipelineError(f"gates file {path} not found; write one from a report with `mobiledeploy check "
                                "--update` (or `make gates`)") from None
        raise PipelineError(str(exc)) from None
    gates = data.get("artefacts") if isinstance(data, dict) else None
    if not isinstance(gates, dict) or not gates:
        raise PipelineError(f"gates file {path}: expected a non-empty 'artefacts' mapping of file -> gates")
    for file, limits in gates.items():
        if not isinstance(file, str):
            raise PipelineError(f"gates file {path}: {short(file)}: expected the path of a .tflite file")
        if not isinstance(limits, dict) or not limits:
            raise PipelineError(f"gates file {path}: {short(file)}: expected a non-empty mapping of gate -> limit")
        for gate, limit in limits.items():
            if not isinstance(gate, str) or reader(gate) is None:
                raise PipelineError(f"gates file {path}: {short(file)}: unknown gate {short(gate)}; known: "
                                    f"{', '.join(GATES)}, and per task {', '.join(f'{g}:<task>' for g in TASK_GATES)}")
            if not isinstance(limit, (int, float)) or isinstance(limit, bool) or not math.isfinite(limit):
                raise PipelineError(f"gates file {path}: {short(file)}: {gate}: expected a finite number, "
                                    f"got {short(limit)}")
    made_with = data.get("made_with")
    if not isinstance(made_with, dict) or made_with.get("schema") != SCHEMA or \
            not isinstance(made_with.get("params"), dict) or not isinstance(made_with.get("test_set"), str):
        raise PipelineError(f"gates file {path}: no 'made_with' block of schema {SCHEMA} (the test set and params "
                            "the limits were measured on); rewrite it on purpose with `mobiledeploy check --update`")
    try:
        params_hash(made_with["params"])
    except (TypeError, ValueError, RecursionError):
        raise PipelineError(f"gates file {path}: made_with.params is not the params of a report (keys must be "
                            "names, values plain YAML)") from None
    return Gates(gates, made_with)


def binding(report: dict, made_with: dict) -> list[Violation]:
    """The report was made on another test set, or with other params, than the gates were written for."""
    found = []
    if report["test_set"] != made_with["test_set"]:
        found.append(Violation("(report)", "test set", f"{made_with.get('test_examples')} examples, "
                               f"{made_with['test_set'][:15]}…", f"{report['test_examples']} examples, "
                               f"{report['test_set'][:15]}…", kind="binding"))
    if params_hash(report["params"]) != params_hash(made_with["params"]):  # a key added since may still agree
        for key, gates_value, report_value in params_difference(made_with["params"], report["params"]):
            found.append(Violation("(report)", f"params {key}", gates_value, report_value, kind="binding"))
    return found


def record_claims(report: dict) -> list[Violation]:
    """The report's params against what the records behind each file say they were made with: the
    params in a report are re-derived from the disk, not believed. The config's own files (named
    after ``params.name``) must have records all the way down to their trained model."""

    flat, name = flatten(report["params"]), report["params"].get("name")
    model = report["params"].get("model")
    root = model.get("file") if isinstance(model, dict) and isinstance(model.get("file"), str) else None
    found = []
    for e in report["artefacts"]:
        path = Path(e["file"])
        found += [Violation(e["file"], f"params {key}", f"{made!r} in {record}", f"{now!r} in the report",
                            kind="records") for key, made, now, record in disagreements(path, flat)]
        own = path.parent == OUT_DIR and (path.name.startswith(f"{name}.") if isinstance(name, str) else False)
        if own and not chain(path, root)[1]:
            found.append(Violation(e["file"], "records", "down to a trained model", "incomplete or missing",
                                   kind="records"))
    return found


def violations(report: dict, limits: dict[str, dict[str, float]], baseline: dict | None = None) -> list[Violation]:
    """Every gate the report breaks; an artefact named in the gates but absent from the report is one.
    ``baseline`` (file -> gate -> value when the gates were written) is carried into each violation."""
    entries = {e["file"]: e for e in report.get("artefacts", [])}
    baseline = baseline if isinstance(baseline, dict) else {}
    found = []
    for file, gates in limits.items():
        entry = entries.get(file)
        if entry is None:
            found.append(Violation(file, "present in report", None, None))
            continue
        for gate, limit in gates.items():
            read, at_least = reader(gate)
            value = read(entry, entries)
            if value is None or not math.isfinite(value) or (value < limit if at_least else value > limit):
                was = (baseline.get(file) or {}).get(gate) if isinstance(baseline.get(file), dict) else None
                found.append(Violation(file, gate, limit, value, was if isinstance(was, (int, float)) else None))
    return found


def check(report_path: Path, gates_path: Path, recompute: Callable[[dict], list[Violation]] | None = None
          ) -> tuple[list[Violation], int]:
    """(violations, number of gates checked). Files that differ from the report and a report made for
    other data or params are violations too; ``recompute(report)`` re-measures the files, replacing the
    report's numbers with the measured ones and returning where they disagreed."""
    report = load_report(report_path)
    gates = load_gates(gates_path)
    found = [Violation(file, "file", "as validated", problem, kind="file") for file, problem in file_problems(report)]
    found += binding(report, gates.made_with)
    found += record_claims(report)
    if recompute is not None and not found:
        found += recompute(report)
    found += violations(report, gates.limits, gates.made_with.get("baseline"))
    return found, sum(len(g) for g in gates.limits.values())


def _fmt(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return clip(str(value), 70)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def _change(v: Violation) -> str:
    if v.baseline is None or not isinstance(v.value, (int, float)) or isinstance(v.value, bool):
        return ""
    delta = v.value - v.baseline
    return f"{delta:+,}" if isinstance(delta, int) else f"{delta:+.4f}"


def table(found: list[Violation]) -> str:
    """The violations; for a gate, also its baseline (the value when the gates were written) and the change."""
    rows = [("artefact", "gate", "limit", "value", "baseline", "change")]
    rows += [(v.file, v.gate, _fmt(v.limit), _fmt(v.value), "" if v.baseline is None else _fmt(v.baseline), _change(v))
             for v in found]
    return text_table(rows)


def gates_from_report(report: dict, margins: CheckParams) -> dict[str, dict[str, float]]:
    """Gates that the report passes with room for run-to-run noise (the margins in params.check).

    Latency gates (``margins.latency_gates``) bound each file's p50 relative to its float32 sibling
    and its unpruned parent, measured in the same run, with a margin of ``margins.latency_margin`` or
    twice the two measurements' run-to-run spread, whichever is larger. Per-class gates are written
    when ``margins.class_margin`` is set."""
    entries = {e["file"]: e for e in report["artefacts"]}
    gates = {}
    for e in report["artefacts"]:
        g: dict[str, float] = {"min_accuracy": round(e["accuracy"] - margins.accuracy_margin, 4)}
        drop = _drop(e)
        if drop is not None:
            g["max_drop"] = round(max(drop, 0.0) + margins.drop_margin, 4)
        for task, numbers in e.get("tasks", {}).items():  # a change that hurts one task fails on its own
            g[f"min_accuracy:{task}"] = round(numbers["accuracy"] - margins.accuracy_margin, 4)
            task_drop = _drop(numbers)
            if task_drop is not None:
                g[f"max_drop:{task}"] = round(max(task_drop, 0.0) + margins.drop_margin, 4)
        g["max_size_bytes"] = int(e["size_bytes"] * (1 + margins.size_margin))
        g["max_gzip_bytes"] = int(e["gzip_bytes"] * (1 + margins.size_margin))
        if margins.latency_gates:
            for gate, which in RATIOS.items():
                ratio = latency_ratio(e, entries, **which)
                if ratio is not None:
                    other = entries[sibling(e["file"], **which)]
                    spread = (e["latency_ms"].get("spread") or 0) + (other["latency_ms"].get("spread") or 0)
                    g[gate] = round(ratio * (1 + max(margins.latency_margin, 2 * spread)), 3)
        if margins.class_margin is not None:  # one class can collapse while the mean holds
            for task, numbers in (e["tasks"].items() if "tasks" in e else [(None, e)]):
                for name, accuracy in (numbers.get("per_class") or {}).items():
                    if accuracy is not None:
                        key = f"min_class_accuracy:{task}:{name}" if task else f"min_class_accuracy:{name}"
                        g[key] = round(max(accuracy - margins.class_margin, 0.0), 4)
        gates[e["file"]] = g
    return gates


def made_with(report: dict, gates: dict[str, dict[str, float]]) -> dict[str, Any]:
    """What the gates were measured on, and the measured value behind each limit (the baseline)."""
    entries = {e["file"]: e for e in report["artefacts"]}
    baseline = {file: {gate: reader(gate)[0](entries[file], entries) for gate in limits}
                for file, limits in gates.items()}
    return {"schema": SCHEMA, "dataset": report["dataset"].split(" (")[0], "test_examples": report["test_examples"],
            "test_set": report["test_set"], "params": report["params"], "baseline": baseline}


def update_gates(report_path: Path, gates_path: Path, margins: CheckParams, command: str) -> None:
    """Rewrite the gates file from a report, on purpose only (``check --update``). The report must
    match its schema and every file it judged must be on disk unchanged."""
    report = load_report(report_path)
    stale = file_problems(report)
    if stale:
        file, problem = stale[0]
        raise PipelineError(f"{report_path}: {file} is {problem}; re-run `mobiledeploy validate` before writing "
                            "gates from it")
    gates = gates_from_report(report, margins)
    header = (f"# Accuracy-regression gates, written by `{command}` on {datetime.date.today()}\n"
              f"# from {report_path} ({report['dataset'].split(' (')[0]}, {report['test_examples']} test examples).\n"
              f"# Room for noise (params.check): accuracy -{margins.accuracy_margin}, drop vs Keras "
              f"+{margins.drop_margin}, size and gzipped size +{margins.size_margin:.0%}"
              + (f", latency ratios +{margins.latency_margin:.0%} or twice their measured spread"
                 if margins.latency_gates else "")
              + (f", each class -{margins.class_margin}" if margins.class_margin is not None else "") + ".\n"
              "# made_with: the test set and params these limits were measured on; `check` refuses a report\n"
              "# made on another test set or with other params. Edit by hand only to tighten or loosen a\n"
              "# gate on purpose; say why in the commit.\n")
    write_text(gates_path, header + yaml.safe_dump({"made_with": made_with(report, gates), "artefacts": gates},
                                                   sort_keys=True))


MEASURED = ("accuracy", "keras_accuracy", "keras_agreement", "size_bytes", "gzip_bytes")


def recomputer(params) -> Callable[[dict], list[Violation]]:
    """``check --recompute``: measure every file of a report again (LiteRT and the Keras parent on the
    test set of ``params``; no latency), put the measured numbers in the report so the gates judge
    them, and flag each number the report got wrong by more than one test example."""

    def recompute(report: dict) -> list[Violation]:

        data = load_dataset(params.data, params.seed)
        if test_set(data) != report["test_set"]:
            return [Violation("(report)", "test set", f"{report['test_examples']} examples in the report",
                              f"{len(data.y_test)} examples in this config's data", "binding")]
        parents, tolerance = KerasParents(data.x_test), 1 / len(data.y_test) + 1e-9
        found = []
        for e in report["artefacts"]:
            path = Path(e["file"])
            contract = file_contract(path, declared(params.input, data.input_shape[-1]))
            fresh = measure(path, data.with_contract(contract), params.validate, parents, threads=[])
            pairs = [(key, e.get(key), fresh[key]) for key in MEASURED]
            pairs += [(f"{key}:{task}", e.get("tasks", {}).get(task, {}).get(key), scores[key])
                      for task, scores in fresh.get("tasks", {}).items() for key in MEASURED[:3]]
            for key, claimed, measured in pairs:
                if (claimed is None) != (measured is None) or \
                        (measured is not None and abs(claimed - measured) > tolerance):
                    found.append(Violation(e["file"], f"recomputed {key}", claimed, measured, kind="recomputed"))
            e.update({key: fresh[key] for key in MEASURED})
            for key in ("tasks", "per_class", "confusion"):  # what the per-task and per-class gates read
                if key in fresh:
                    e[key] = fresh[key]
        return found

    return recompute
