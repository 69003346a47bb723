"""The validation report's schema, and what binds a report to the files, data and params it judges.

A report (``tflite_out/<name>.report.json``) is versioned by ``schema``. It names the test set by its
fingerprint and size, holds the params that produced the shipped artefacts (:data:`BOUND`), and for
each artefact the sha256 of the file and the key of the record beside it. ``check`` re-derives all
of that from the disk before it believes a number (see :func:`file_problems`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from ..core.artifacts import environment, file_hash, read_record, text_hash
from ..core.errors import PipelineError, clip, short
from ..core.params import Params
from ..core.tables import count, markdown_table, pct, text_table
from ..data import Dataset, fingerprint
from .measure import parse_name

SCHEMA = 2
# The params that decide what the shipped files are and how they are scored (data.dir only says where
# the data lives: the test-set fingerprint says what it is). Latency settings and studies are left out.
BOUND = ("name", "seed", "data", "input", "model", "train", "structured", "prune", "cluster", "quantize", "convert")
UNBOUND = ("data.dir", "data.cache")  # where the data is and how it is held change no result
HASH = re.compile(r"sha256:[0-9a-f]{64}")
MAX_REPORT_BYTES = 64 << 20


def bound_params(params: Params) -> dict[str, Any]:
    off = {"structured": not params.structured.enabled, "cluster": not params.cluster.enabled,
           "quantize": params.quantize.aware == "none"}  # a stage that is off changes no file
    bound = params.subset(*(name for name in BOUND if not off.get(name)))
    bound["data"] = {k: v for k, v in bound["data"].items() if f"data.{k}" not in UNBOUND}
    return bound


def params_hash(bound: dict[str, Any]) -> str:
    return text_hash(json.dumps(bound, sort_keys=True))


def test_set(data: Dataset) -> str:
    """The fingerprint of the test images and labels a report scores against."""
    return fingerprint(data.x_test, data.y_test)


def make_report(params: Params, data: Dataset, entries: list[dict]) -> dict:
    bound = bound_params(params)
    return {"schema": SCHEMA, "dataset": data.source, "test_examples": len(data.y_test), "test_set": test_set(data),
            "params": bound, "params_hash": params_hash(bound), "environment": environment(), "artefacts": entries}


# what `diff` compares, per artefact: name -> how to read it from an entry
DIFF_METRICS = {"accuracy": lambda e: e.get("accuracy"), "keras_agreement": lambda e: e.get("keras_agreement"),
                "size_bytes": lambda e: e.get("size_bytes"), "gzip_bytes": lambda e: e.get("gzip_bytes"),
                "p50_ms": lambda e: (e.get("latency_ms") or {}).get("p50")}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def diff(old: dict, new: dict) -> str:
    """Old, new and delta for every metric of every artefact of two reports (per task too), with a
    line for each difference in what they were measured on."""
    notes = []
    if old["test_set"] != new["test_set"]:
        notes.append(f"the test sets differ ({old['test_examples']} and {new['test_examples']} examples)")
    changed = params_difference(old["params"], new["params"])
    if changed:
        notes.append("params differ: " + ", ".join(f"{k} {short(a)} -> {short(b)}" for k, a, b in changed[:8]))
    olds, news = ({e["file"]: e for e in r["artefacts"]} for r in (old, new))
    rows = [("artefact", "metric", "old", "new", "delta")]
    for file in list(dict.fromkeys([*olds, *news])):
        a, b = olds.get(file), news.get(file)
        if a is None or b is None:
            rows.append((file, "(whole file)", "-" if a is None else "present", "-" if b is None else "present", ""))
            continue
        metrics = dict(DIFF_METRICS)
        for task in sorted(set(a.get("tasks", {})) | set(b.get("tasks", {}))):
            metrics[f"accuracy:{task}"] = lambda e, t=task: e.get("tasks", {}).get(t, {}).get("accuracy")
        for name, read in metrics.items():
            x, y = read(a), read(b)
            delta = "" if x is None or y is None else (f"{y - x:+,}" if isinstance(x, int) and isinstance(y, int)
                                                       else f"{y - x:+.4f}")
            rows.append((file, name, _cell(x), _cell(y), delta))
    return "\n".join(notes + [text_table(rows)])


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"epochs": 2}} -> {"train.epochs": 2}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def params_difference(ours: dict[str, Any], theirs: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, ours, theirs) for every key whose value differs. A key that only one side has (params
    written before it existed) differs only if the other side holds something else than its default:
    a key is added with a default that keeps what the pipeline did before."""
    a, b = flatten(ours), flatten(theirs)
    defaults = flatten(bound_params(Params()))

    def differs(key: str) -> bool:
        if (key in a) != (key in b):
            return key not in defaults or (a if key in a else b)[key] != defaults[key]
        return a[key] != b[key]

    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if differs(k)]


# --- schema ---------------------------------------------------------------------------------------


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a report may hold")


def load_report(path: Path) -> dict:
    """A report read from ``path`` and checked against the schema; PipelineError on the first problem."""
    try:
        if not path.is_file():
            raise PipelineError(f"report {path} not found; it is made by `mobiledeploy validate`" if not path.exists()
                                else f"report {path}: not a regular file")
        if path.stat().st_size > MAX_REPORT_BYTES:
            raise PipelineError(f"report {path}: larger than {MAX_REPORT_BYTES >> 20} MiB; not a report")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"report {path}: cannot read it ({exc.__class__.__name__})") from None
    try:
        report = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise PipelineError(f"report {path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        raise PipelineError(f"report {path}: {clip(str(exc), 100)}") from None
    try:
        problem = schema_problem(report)
    except (RecursionError, TypeError, ValueError):
        problem = "nested too deeply, or holds what JSON cannot hash"
    if problem:
        raise PipelineError(f"report {path} does not match the report schema {SCHEMA}: {problem}; re-run "
                            "`mobiledeploy validate` to write a new one")
    return report


def _number(value: Any, low: float, high: float, integer: bool = False) -> bool:
    kinds = (int,) if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value) and low <= value <= high


def _scores_problem(where: str, scores: Any) -> str | None:
    if not isinstance(scores, dict):
        return f"{where}: expected an object"
    if not _number(scores.get("accuracy"), 0, 1):
        return f"{where}.accuracy: expected a number in [0, 1], got {short(scores.get('accuracy'))}"
    for key in ("keras_accuracy", "keras_agreement"):
        if scores.get(key) is not None and not _number(scores[key], 0, 1):
            return f"{where}.{key}: expected null or a number in [0, 1], got {short(scores[key])}"
    classes = scores.get("per_class", {})
    if not isinstance(classes, dict) or not all(v is None or _number(v, 0, 1) for v in classes.values()):
        return f"{where}.per_class: expected class -> null or a number in [0, 1], got {short(classes)}"
    return None


def _entry_problem(i: int, e: Any) -> str | None:
    where = f"artefacts[{i}]"
    if not isinstance(e, dict):
        return f"{where}: expected an object"
    if not isinstance(e.get("file"), str) or not 0 < len(e["file"]) <= 4096:
        return f"{where}.file: expected a path (at most 4096 characters)"
    where = f"{where} ({clip(e['file'], 80)})"
    if not isinstance(e.get("sha256"), str) or not HASH.fullmatch(e["sha256"]):
        return f"{where}.sha256: expected 'sha256:' and 64 hex digits, got {short(e.get('sha256'))}"
    if e.get("record_key") is not None and not isinstance(e["record_key"], str):
        return f"{where}.record_key: expected null or a string"
    problem = _scores_problem(where, e)
    if problem:
        return problem
    for key in ("size_bytes", "gzip_bytes"):
        if not _number(e.get(key), 1, 1 << 40, integer=True):
            return f"{where}.{key}: expected a positive integer, got {short(e.get(key))}"
    latency = e.get("latency_ms")
    if not isinstance(latency, dict) or not all(_number(latency.get(k), 0, 1e7) for k in ("p50", "p90", "p99")):
        return f"{where}.latency_ms: expected p50, p90 and p99 in ms, got {short(latency)}"
    if latency.get("spread") is not None and not _number(latency["spread"], 0, 1e3):
        return f"{where}.latency_ms.spread: expected null or a non-negative number, got {short(latency['spread'])}"
    tasks = e.get("tasks", {})
    if not isinstance(tasks, dict):
        return f"{where}.tasks: expected an object"
    for task, scores in tasks.items():
        problem = _scores_problem(f"{where}.tasks.{clip(str(task), 40)}", scores)
        if problem:
            return problem
    return None


def schema_problem(report: Any) -> str | None:
    """What makes ``report`` not a report of the current schema, or None."""
    if not isinstance(report, dict):
        return f"expected an object, got {type(report).__name__}"
    if report.get("schema") != SCHEMA:
        return f"schema is {short(report.get('schema'))}, this version reads {SCHEMA}"
    if not isinstance(report.get("dataset"), str):
        return "dataset: expected a string"
    if not _number(report.get("test_examples"), 1, 1 << 40, integer=True):
        return f"test_examples: expected a positive integer, got {short(report.get('test_examples'))}"
    if not isinstance(report.get("test_set"), str) or not HASH.fullmatch(report["test_set"]):
        return "test_set: expected the test set's sha256 fingerprint"
    if not isinstance(report.get("params"), dict):
        return "params: expected an object"
    if report.get("params_hash") != params_hash(report["params"]):
        return "params_hash does not match params"
    entries = report.get("artefacts")
    if not isinstance(entries, list) or not entries:
        return "artefacts: expected a non-empty list"
    seen: set[str] = set()
    for i, e in enumerate(entries):
        problem = _entry_problem(i, e)
        if problem:
            return problem
        if e["file"] in seen:
            return f"artefacts[{i}]: {clip(e['file'], 80)} appears twice"
        seen.add(e["file"])
    return None


# --- the files on disk ----------------------------------------------------------------------------


def file_problems(report: dict, root: Path = Path()) -> list[tuple[str, str]]:
    """(file, what is wrong) for every artefact whose file on disk is not the one the report judged:
    missing, changed since (another sha256), or with a record that changed since (another key)."""
    problems = []
    for e in report["artefacts"]:
        path = root / e["file"]
        try:
            present = path.is_file()
        except OSError as exc:  # a name too long for the file system, a folder we may not enter
            problems.append((e["file"], f"unreadable ({exc.strerror or exc.__class__.__name__})"))
            continue
        if not present:
            problems.append((e["file"], "missing"))
            continue
        try:
            digest = file_hash(path)
        except OSError as exc:
            problems.append((e["file"], f"unreadable ({exc.strerror or exc.__class__.__name__})"))
            continue
        if digest != e["sha256"]:
            problems.append((e["file"], "changed since it was validated (another sha256)"))
            continue
        try:
            record = read_record(path)
        except PipelineError:
            record = None
        key = record.get("key") if isinstance(record, dict) else None
        if key != e.get("record_key"):
            problems.append((e["file"], "its record changed since it was validated (another key)"))
    return problems


# --- latency within one run ----------------------------------------------------------------------


def p50(e: dict | None) -> float | None:
    latency = (e or {}).get("latency_ms")
    return latency.get("p50") if isinstance(latency, dict) else None


def sibling(file: str, fmt: str | None = None, unpruned: bool = False) -> str | None:
    """The report entry name of ``file``'s model in another format, or of its unpruned parent in the
    same format; None when ``file`` has no such sibling by name."""
    path = Path(file)
    model, own = parse_name(path)
    if own == "unknown" or (unpruned and not model.endswith(".pruned")) or (fmt is not None and fmt == own):
        return None
    return path.with_name(f"{model.removesuffix('.pruned') if unpruned else model}.{fmt or own}.tflite").as_posix()


def latency_ratio(e: dict, entries: dict[str, dict], **which) -> float | None:
    """p50 of ``e`` over p50 of its sibling, both measured in the same run."""
    other = sibling(e["file"], **which)
    mine, theirs = p50(e), p50(entries.get(other)) if other else None
    return None if mine is None or not theirs else round(mine / theirs, 4)


def markdown(report: dict) -> str:
    """The report as Markdown: one table of every file, per-task and per-class accuracy, and where and
    when it was measured. Written to ``<name>.report.md``; it reads as a CI job summary."""
    entries = report["artefacts"]
    env = report.get("environment", {})
    header = ["file", "accuracy", "Keras", "agreement", "bytes", "gzip bytes", "p50 / p90 / p99 ms (1 thread)",
              "p50 vs float32", "p50 ms (all cores)", "params", "MACs", "sparsity", "zeros in file",
              "distinct values", "per channel"]
    by_file = {e["file"]: e for e in entries}
    rows = []
    for e in entries:
        lat, many = e["latency_ms"], e["latency_by_threads"][-1]
        rows.append([Path(e["file"]).name, pct(e["accuracy"]), pct(e["keras_accuracy"]), pct(e["keras_agreement"]),
                     count(e["size_bytes"]), count(e["gzip_bytes"]),
                     f"{lat['p50']:.3f} / {lat['p90']:.3f} / {lat['p99']:.3f}",
                     "-" if (ratio := latency_ratio(e, by_file, fmt="float32")) is None else f"{ratio:.2f}×",
                     f"{many['p50']:.3f} ({many['threads']})",
                     count(e["params"]), count(e["macs"]), pct(e["sparsity"]),
                     pct((e.get("file_weights") or {}).get("zero_share")),
                     count((e.get("file_weights") or {}).get("max_unique")),
                     count((e.get("file_weights") or {}).get("max_unique_per_channel"))])
    parts = [f"# Validation report\n\nTest set: {report['dataset']}, {report['test_examples']} examples. "
             "Accuracy and agreement in %; agreement is top-1 agreement with the Keras parent. Latency: "
             "one image, after warm-up, in ms; *vs float32*: its p50 over the float32 file's of the same model, "
             "both timed in this run. *Sparsity* counts the Keras parent's zero weights; *zeros in file*, *distinct values* "
             "(the most in any one weight tensor) and *per channel* (the most in one output channel of one, where int8 "
             "scales are per channel) are read from the file's own weight tensors.\n\n", markdown_table(header, rows)]
    micro = [e for e in entries if e.get("micro")]
    if micro:
        def cells(m: dict) -> list:
            if "source" not in m:
                return ["-"] * 5
            return [Path(m["source"]).name, m["images"], m["same_labels"], m["identical"], m["max_steps_reference"]]

        parts += ["\nLiteRT Micro: the smallest tensor arena each file runs in under Micro's interpreter (its tensors' "
                  "runtime memory; *not run*: why Micro cannot), and for each C array (`<file>.cc` and `.h`, beside "
                  "an int8 file), run one image at a time against LiteRT: images with LiteRT's top-1 labels, images "
                  "bit-identical to its reference kernels and the largest difference from them in quantization "
                  "steps.\n\n",
                  markdown_table(["file", "arena bytes", "C source", "images", "same labels", "bit-identical",
                                  "max steps"],
                                 [[Path(e["file"]).name, count(e["micro"]["arena_bytes"]) if e["micro"]["arena_bytes"]
                                   else f"not run: {e['micro']['not_run'][:90]}", *cells(e["micro"])] for e in micro],
                                 align="lrlrrrr")]
    tasks = list(entries[0].get("tasks", {})) if entries else []
    if tasks:  # multi-task: the accuracies above are means over the tasks; here each task side by side
        parts += ["\nPer task: accuracy / Keras accuracy / agreement with Keras, in %.\n\n",
                  markdown_table(["file", *tasks], [[Path(e["file"]).name] + [
                      " / ".join(pct(e["tasks"][t][k]) for k in ("accuracy", "keras_accuracy", "keras_agreement"))
                      for t in tasks] for e in entries])]
    for task in tasks or [None]:
        classes = [e["tasks"][task] if task else e for e in entries]
        names = list((classes[0].get("per_class") or {})) if classes else []
        if names:
            parts += [f"\nAccuracy per class{f' ({task})' if task else ''}, in %: one class can collapse while "
                      "the mean holds.\n\n", markdown_table(["file", *names], [
                          [Path(e["file"]).name] + [pct(c["per_class"].get(n)) for n in names]
                          for e, c in zip(entries, classes)])]
    if env:
        versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v)
        parts.append(f"\nMeasured {env.get('date')} at commit {env.get('git_commit') or 'unknown'} on "
                     f"{env.get('cpu')} ({env.get('cpu_count')} cores); {versions}.\n")
    return "".join(parts)
