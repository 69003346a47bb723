"""Stage 4: a config's .tflite files through LiteRT: accuracy, agreement with Keras, size, latency."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np

from . import litert
from .artifacts import OUT_DIR, USER_DIR, is_config_model, model_stem, place, read_record, report_path, tflite_path, \
    write_json, write_text
from .costs import model_costs, totals
from .data import Dataset, load_dataset
from .errors import PipelineError
from .params import FORMATS, Params


def discover(params: Params, keras_model: Path | None = None, out_dir: Path = OUT_DIR) -> list[Path]:
    """The .tflite files to validate: this config's (its trained and pruned models in every format
    of params), or all those converted from ``keras_model``."""
    if keras_model is None:
        stems = (params.name, f"{params.name}.pruned")
        files = [f for stem in stems for fmt in params.convert.formats
                 if (f := out_dir / tflite_path(stem, fmt).name).is_file()]
        what, made_by = f"of {params.name}", "mobiledeploy convert"
    else:
        wanted = keras_model.resolve()
        folder = out_dir if is_config_model(keras_model, params.name) else out_dir / USER_DIR
        files = [f for f in sorted(folder.glob("*.tflite"))
                 if Path((read_record(f) or {}).get("keras_model", "")).resolve() == wanted]
        what, made_by = f"converted from {keras_model}", f"mobiledeploy convert --model {keras_model}"
    if not files:
        raise PipelineError(f"no .tflite files {what} in {folder if keras_model else out_dir}; they are made by "
                            f"`{made_by}`")
    return files


def parse_name(path: Path) -> tuple[str, str]:
    """``<model>.<format>.tflite`` -> (model, format)."""
    stem = path.name.removesuffix(".tflite")
    model, _, fmt = stem.rpartition(".")
    return (model, fmt) if model and fmt in FORMATS else (stem, "unknown")


class KerasParents:
    """Keras predictions on the test set, computed once per parent model."""

    def __init__(self, x_test: np.ndarray):
        self.x_test = x_test
        self._cache: dict[str, tuple[np.ndarray, dict]] = {}

    def get(self, path: str) -> tuple[np.ndarray, dict] | None:
        if path not in self._cache:
            if not Path(path).is_file():
                return None
            from .keras_io import load_model
            from .train import predict_labels

            model = load_model(Path(path))
            self._cache[path] = (predict_labels(model, self.x_test), totals(model_costs(model)))
        return self._cache[path]


def _by_task(labels, tasks: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Predictions keyed by task ("label" for a single-task model)."""
    return labels if isinstance(labels, dict) else {tasks[0] if tasks else "label": labels}


def validate_one(path: Path, params: Params, data: Dataset, parents: KerasParents) -> dict:
    record = read_record(path) or {}
    model, fmt = parse_name(path)
    v = params.validate
    predictions, latencies = litert.evaluate(path, data.x_test, v.batch_size, v.threads, v.warmup_runs,
                                             v.latency_runs)
    heads = data.tasks or ("label",)
    if sorted(predictions) != sorted(heads) and not (len(heads) == 1 and len(predictions) == 1):
        raise PipelineError(f"{path}: outputs {', '.join(sorted(predictions))} do not match the data's "
                            f"{'tasks ' + ', '.join(heads) if data.tasks else 'single label'}")
    if len(heads) == 1:
        predictions = {heads[0]: next(iter(predictions.values()))}
    truth = {task: (data.y_test[:, i] if data.tasks else data.y_test) for i, task in enumerate(heads)}
    parent = parents.get(record["keras_model"]) if record.get("keras_model") else None
    keras_labels = _by_task(parent[0], data.tasks) if parent else {}
    per_task = {}
    for task in heads:
        found = {"accuracy": round(float(np.mean(predictions[task] == truth[task])), 5),
                 "keras_accuracy": None, "keras_agreement": None}
        if parent:
            found.update(keras_accuracy=round(float(np.mean(keras_labels[task] == truth[task])), 5),
                         keras_agreement=round(float(np.mean(keras_labels[task] == predictions[task])), 5))
        per_task[task] = found

    def mean(key):
        values = [t[key] for t in per_task.values()]
        return None if None in values else round(float(np.mean(values)), 5)

    blob = path.read_bytes()
    entry = {
        "file": path.as_posix(), "model": record.get("model", model), "format": record.get("format", fmt),
        "pruned": bool(record.get("pruned", False)), "accuracy": mean("accuracy"),
        "keras_model": record.get("keras_model"), "keras_accuracy": mean("keras_accuracy"),
        "keras_agreement": mean("keras_agreement"),
        "size_bytes": len(blob), "gzip_bytes": len(gzip.compress(blob, 9)),
        "latency_ms": latencies[0], "latency_by_threads": latencies,
        "params": None, "macs": None, "sparsity": None,
    }
    if data.tasks:  # the headline numbers above are means over the tasks
        entry["tasks"] = per_task
    if parent is not None:
        cost = parent[1]
        entry.update(params=cost["params"], macs=cost["macs"], sparsity=round(cost["sparsity"], 4))
    return entry


def validate(params: Params, keras_model: Path | None = None, out_dir: Path = OUT_DIR) -> Path:
    """Validate the .tflite files and write ``<model>.report.json`` and ``.md`` beside them."""
    files = discover(params, keras_model, out_dir)
    data = load_dataset(params.data, params.seed)
    parents = KerasParents(data.x_test)
    entries = []
    for path in files:
        start = time.perf_counter()
        entry = validate_one(path, params, data, parents)
        entries.append(entry)
        print(f"validate: {path.name}: accuracy {entry['accuracy']:.4f}, p50 {entry['latency_ms']['p50']:.3f} ms "
              f"({time.perf_counter() - start:.0f}s)", flush=True)
    report = {"dataset": data.source, "test_examples": len(data.y_test), "artefacts": entries}
    if keras_model is None:
        json_path = out_dir / report_path(params.name).name
    else:
        json_path = place(out_dir / report_path(model_stem(keras_model)).name, keras_model, params.name)
    md_path = json_path.with_suffix(".md")
    write_json(json_path, report)
    write_text(md_path, markdown(report))
    print(f"validate: {len(entries)} artefacts -> {json_path}, {md_path}")
    return json_path


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _int(value) -> str:
    return "-" if value is None else f"{value:,}"


def markdown(report: dict) -> str:
    lines = [f"# Validation report\n\nTest set: {report['dataset']}, {report['test_examples']} examples. "
             "Accuracy and agreement in %; agreement is top-1 agreement with the Keras parent. Latency: "
             "one image, after warm-up, in ms.\n",
             "| file | accuracy | Keras | agreement | bytes | gzip bytes | p50 / p90 / p99 (1 thread) "
             "| p50 (all cores) | params | MACs | sparsity |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in report["artefacts"]:
        lat = e["latency_ms"]
        many = e["latency_by_threads"][-1]
        lines.append(
            f"| {Path(e['file']).name} | {_pct(e['accuracy'])} | {_pct(e['keras_accuracy'])} "
            f"| {_pct(e['keras_agreement'])} | {e['size_bytes']:,} | {e['gzip_bytes']:,} "
            f"| {lat['p50']:.3f} / {lat['p90']:.3f} / {lat['p99']:.3f} | {many['p50']:.3f} ({many['threads']}) "
            f"| {_int(e['params'])} | {_int(e['macs'])} | {_pct(e['sparsity'])} |")
    tasks = [t for t in report["artefacts"][0].get("tasks", {})] if report["artefacts"] else []
    if tasks:  # multi-task: the accuracies above are means over the tasks; here each task side by side
        lines += ["\nPer task: accuracy / Keras accuracy / agreement with Keras, in %.\n",
                  "| file | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
        for e in report["artefacts"]:
            cells = [" / ".join(_pct(e["tasks"][t][k]) for k in ("accuracy", "keras_accuracy", "keras_agreement"))
                     for t in tasks]
            lines.append(f"| {Path(e['file']).name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
