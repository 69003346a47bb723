"""The one function that measures a ``.tflite`` file against a dataset: accuracy per task and per
class, the confusion matrix, agreement with its Keras parent, bytes, gzipped bytes and latency.
``validate`` writes what it returns into the report; ``check --recompute`` calls it again to
re-derive the report's numbers from the files; the studies and the shrink stage call it for theirs."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..core.artifacts import file_hash, read_record, record_path
from ..core.contract import HOW_TO_DECLARE, InputContract
from ..core.errors import PipelineError
from ..core.params import ValidateParams
from ..data import Dataset
from . import litert
from .costs import model_costs, totals
from .flatbuffer import weight_stats
from .sidecar import SUFFIX, read_contract
from .tflite import FORMATS


def parse_name(path: Path) -> tuple[str, str]:
    """``<model>.<format>.tflite`` -> (model, format)."""
    stem = path.name.removesuffix(".tflite")
    model, _, fmt = stem.rpartition(".")
    return (model, fmt) if model and fmt in FORMATS else (stem, "unknown")


def file_contract(path: Path, declared: InputContract | None = None) -> InputContract:
    """How pixels become the input of the ``.tflite`` at ``path``: what its record says it was converted
    with, else what its sidecar says, else ``declared`` (``input`` params); refused if none says."""
    record = read_record(path) or {}
    if "input" in record:
        return InputContract.from_dict(record["input"], str(record_path(path)))
    found = read_contract(path)
    if found is not None:
        return found
    if declared is not None:
        return declared
    raise PipelineError(f"{path}: neither a record nor a sidecar (*{SUFFIX}) says how its input is made from "
                        f"pixels; {HOW_TO_DECLARE}")


def chance_warning(entry: dict, num_classes: int) -> str | None:
    """A warning for a file whose accuracy is near chance (at most 1.5 / classes), naming the likely causes."""
    if entry["accuracy"] is None or entry["accuracy"] > 1.5 / num_classes:
        return None
    return (f"warning: {Path(entry['file']).name}: accuracy {entry['accuracy']:.1%} is near chance "
            f"({1 / num_classes:.1%} for {num_classes} classes). Likely causes: its input scaling is not the one it "
            "was trained with (input.pixels; see the report's input line), the classes are in another order than "
            "at training (folder names sort alphabetically), or it is a model for other data")


class KerasParents:
    """Keras predictions on the test set, computed once per parent model (loaded safely) and input
    contract."""

    def __init__(self, x_test):
        self.x_test = x_test
        self._cache: dict[tuple, tuple[np.ndarray, dict]] = {}

    def get(self, path: str, contract: InputContract) -> tuple[np.ndarray, dict] | None:
        key = (path, contract.scale, contract.offset)
        if key not in self._cache:
            if not Path(path).exists():
                return None
            from ..core.model_files import load_any

            model = load_any(Path(path))
            scores = model.predict(self.x_test, contract=contract)
            labels = {name: np.argmax(s, axis=-1) for name, s in scores.items()}
            self._cache[key] = (next(iter(labels.values())) if len(labels) == 1 else labels,
                                totals(model_costs(model.keras)) if model.keras is not None else None)
        return self._cache[key]


def _by_task(labels, tasks: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Predictions keyed by task ("label" for a single-task model)."""
    return labels if isinstance(labels, dict) else {tasks[0] if tasks else "label": labels}


def confusion(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class): row i is what the images of class i were taken for."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (truth.astype(np.int64), predicted.astype(np.int64)), 1)
    return matrix


def per_class(matrix: np.ndarray, class_names: list[str]) -> dict[str, float | None]:
    """Accuracy of each class (its diagonal share of its row); None for a class absent from the test set."""
    totals = matrix.sum(axis=1)
    return {name: (round(float(matrix[i, i] / totals[i]), 5) if totals[i] else None)
            for i, name in enumerate(class_names)}


def measure(path: Path, data: Dataset, v: ValidateParams, parents: KerasParents | None = None,
            threads: list[int] | None = None) -> dict:
    """One report entry for ``path`` on ``data``'s test split: accuracy per task and per class with
    the confusion matrix, agreement with the Keras parent named by the file's record (if ``parents``
    is given and the parent is on disk), bytes, gzipped bytes, and single-image latency for each of
    ``threads`` (default ``v.threads``; ``[]`` skips timing and ``latency_ms`` is then None)."""
    record = read_record(path) or {}
    model, fmt = parse_name(path)
    threads = v.threads if threads is None else threads
    predictions, latencies = litert.evaluate(path, data.x_test, v.batch_size, threads, v.warmup_runs, v.latency_runs,
                                             num_classes=data.num_classes, contract=data.contract)
    heads = data.tasks or ("label",)
    # a model for named tasks must name the same ones (one top_left head is not a bottom_right model); a
    # plain single-task model's one output may be called anything
    if sorted(predictions) != sorted(heads) and not (not data.tasks and len(predictions) == 1):
        raise PipelineError(f"{path}: outputs {', '.join(sorted(predictions))} do not match the data's "
                            f"{'tasks ' + ', '.join(heads) if data.tasks else 'single label'}")
    if len(heads) == 1:
        predictions = {heads[0]: next(iter(predictions.values()))}
    truth = {task: (data.y_test[:, i] if data.tasks else data.y_test) for i, task in enumerate(heads)}
    parent_path = record.get("keras_model")
    parent = parents.get(parent_path, data.contract) if parents is not None and isinstance(parent_path, str) else None
    keras_labels = _by_task(parent[0], data.tasks) if parent else {}
    if parent and sorted(keras_labels) != sorted(predictions):
        raise PipelineError(f"{path}: its Keras parent {parent_path} has outputs {', '.join(sorted(keras_labels))}, "
                            f"the file has {', '.join(sorted(predictions))}")
    per_task = {}
    for task in heads:
        matrix = confusion(truth[task], predictions[task], data.num_classes)
        found = {"accuracy": round(float(np.mean(predictions[task] == truth[task])), 5),
                 "keras_accuracy": None, "keras_agreement": None,
                 "per_class": per_class(matrix, data.class_names), "confusion": matrix.tolist()}
        if parent:
            found.update(keras_accuracy=round(float(np.mean(keras_labels[task] == truth[task])), 5),
                         keras_agreement=round(float(np.mean(keras_labels[task] == predictions[task])), 5))
        per_task[task] = found

    def mean(key):
        values = [t[key] for t in per_task.values()]
        return None if None in values else round(float(np.mean(values)), 5)

    blob = path.read_bytes()
    try:
        weights = weight_stats(blob)
    except PipelineError as exc:
        raise PipelineError(f"{path}: {exc}") from None
    entry = {
        "file": path.as_posix(), "sha256": file_hash(path), "record_key": record.get("key"),
        "model": record.get("model", model), "format": record.get("format", fmt),
        "pruned": bool(record.get("pruned", False)), "input": data.contract.to_dict(), "accuracy": mean("accuracy"),
        "keras_model": parent_path if isinstance(parent_path, str) else None, "keras_accuracy": mean("keras_accuracy"),
        "keras_agreement": mean("keras_agreement"),
        "size_bytes": len(blob), "gzip_bytes": len(gzip.compress(blob, 9)),
        "latency_ms": latencies[0] if latencies else None, "latency_by_threads": latencies,
        "params": None, "macs": None, "sparsity": None, "file_weights": weights,
    }
    if data.tasks:  # the headline numbers above are means over the tasks
        entry["tasks"] = per_task
    else:
        entry.update(per_class=per_task["label"]["per_class"], confusion=per_task["label"]["confusion"])
    if parent is not None and parent[1] is not None:  # costs are counted on tf_keras parents
        cost = parent[1]
        entry.update(params=cost["params"], macs=cost["macs"], sparsity=round(cost["sparsity"], 4))
    return entry
