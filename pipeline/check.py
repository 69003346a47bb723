"""Stage 5: the accuracy-regression gate. Compares report.json against a committed gates file."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Any, Callable

import yaml

from .artifacts import read_json, write_text
from .errors import PipelineError
from .params import CheckParams


@dataclasses.dataclass(frozen=True)
class Violation:
    file: str
    gate: str
    limit: float | None
    value: float | None


def _drop(e: dict) -> float | None:
    return None if e.get("keras_accuracy") is None else e["keras_accuracy"] - e["accuracy"]


# gate name -> (what it reads from a report entry, True if the value must stay at or above the limit)
GATES: dict[str, tuple[Callable[[dict], Any], bool]] = {
    "min_accuracy": (lambda e: e["accuracy"], True),
    "min_agreement": (lambda e: e.get("keras_agreement"), True),
    "max_drop": (_drop, False),
    "max_size_bytes": (lambda e: e["size_bytes"], False),
    "max_gzip_bytes": (lambda e: e["gzip_bytes"], False),
}


TASK_GATES = ("min_accuracy", "min_agreement", "max_drop")  # also per task: "<gate>:<task>"


def reader(gate: str) -> tuple[Callable[[dict], Any], bool] | None:
    """(read, at_least) for a gate name; ``<gate>:<task>`` reads that task's numbers of a multi-task entry."""
    base, _, task = gate.partition(":")
    if base not in GATES or (task and base not in TASK_GATES):
        return None
    read, at_least = GATES[base]
    if not task:
        return read, at_least
    return (lambda e: read(e["tasks"][task]) if task in e.get("tasks", {}) else None), at_least


def load_gates(path: Path) -> dict[str, dict[str, float]]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"gates file {path} not found; write one from a report with `mobiledeploy check "
                            "--update` (or `make gates`)") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"gates file {path}: YAML syntax error: {exc}".splitlines()[0]) from None
    gates = (data or {}).get("artefacts") if isinstance(data, dict) else None
    if not isinstance(gates, dict) or not gates:
        raise PipelineError(f"gates file {path}: expected a non-empty 'artefacts' mapping of file -> gates")
    for file, limits in gates.items():
        if not isinstance(limits, dict):
            raise PipelineError(f"gates file {path}: {file}: expected a mapping of gate -> limit")
        for gate, limit in limits.items():
            if reader(gate) is None:
                raise PipelineError(f"gates file {path}: {file}: unknown gate {gate!r}; known: {', '.join(GATES)}, "
                                    f"and per task {', '.join(f'{g}:<task>' for g in TASK_GATES)}")
            if not isinstance(limit, (int, float)) or isinstance(limit, bool):
                raise PipelineError(f"gates file {path}: {file}: {gate}: expected a number, got {limit!r}")
    return gates


def violations(report: dict, gates: dict[str, dict[str, float]]) -> list[Violation]:
    """Every gate the report breaks; an artefact named in the gates but absent from the report is one."""
    entries = {e["file"]: e for e in report.get("artefacts", [])}
    found = []
    for file, limits in gates.items():
        entry = entries.get(file)
        if entry is None:
            found.append(Violation(file, "present in report", None, None))
            continue
        for gate, limit in limits.items():
            read, at_least = reader(gate)
            value = read(entry)
            if value is None or (value < limit if at_least else value > limit):
                found.append(Violation(file, gate, limit, value))
    return found


def _fmt(value: float | None) -> str:
    if value is None:
        return "missing"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def table(found: list[Violation]) -> str:
    rows = [("artefact", "gate", "limit", "value")] + [(v.file, v.gate, _fmt(v.limit), _fmt(v.value)) for v in found]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def check(report_path: Path, gates_path: Path) -> tuple[list[Violation], int]:
    """(violations, number of gates checked)."""
    report = read_json(report_path)
    gates = load_gates(gates_path)
    return violations(report, gates), sum(len(g) for g in gates.values())


def gates_from_report(report: dict, margins: CheckParams) -> dict[str, dict[str, float]]:
    """Gates that the report passes with room for run-to-run noise (the margins in params.check)."""
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
        gates[e["file"]] = g
    return gates


def update_gates(report_path: Path, gates_path: Path, margins: CheckParams, command: str) -> None:
    """Rewrite the gates file from a report, on purpose only (``check --update``)."""
    report = read_json(report_path)
    gates = gates_from_report(report, margins)
    header = (f"# Accuracy-regression gates, written by `{command}` on {datetime.date.today()}\n"
              f"# from {report_path} ({report['dataset'].split(' (')[0]}, {report['test_examples']} test examples).\n"
              f"# Room for noise (params.check): accuracy -{margins.accuracy_margin}, drop vs Keras "
              f"+{margins.drop_margin}, size and gzipped size +{margins.size_margin:.0%}.\n"
              "# Edit by hand only to tighten or loosen a gate on purpose; say why in the commit.\n")
    write_text(gates_path, header + yaml.safe_dump({"artefacts": gates}, sort_keys=True))
