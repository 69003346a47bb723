"""Comparing model variants on one budget: each is trained by the train stage, converted to
full-integer int8, and run in LiteRT. Used by ``mobiledeploy zoo`` and ``mobiledeploy mtl-compare``.

A variant is a complete set of params (its own name, so its model has its own file and a finished
variant is not trained again). All int8 latencies are measured one after another at the end, so
that they share the machine's conditions.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from ..core.artifacts import read_record
from ..core.keras_io import load_model
from ..core.params import Params
from ..data import Dataset, load_dataset
from ..export import litert
from ..export.costs import model_costs, totals
from ..stages.convert import convert_file, representative_data
from ..stages.train import train


def measure_variants(variants: dict[str, Params], out_dir: Path, label: str) -> list[dict]:
    """One row per variant: params, MACs, int8 bytes and latency, and per task ("label" for a
    single-task model) float and int8 test accuracy, train and validation accuracy and their gap."""
    datasets: dict[str, Dataset] = {}

    def data_for(p: Params) -> Dataset:
        key = json.dumps(p.section("data"), sort_keys=True)
        if key not in datasets:
            datasets[key] = load_dataset(p.data, p.seed)
        return datasets[key]

    built = []
    for i, (variant, p) in enumerate(variants.items(), start=1):
        print(f"{label}: [{i}/{len(variants)}] {variant}", flush=True)
        data = data_for(p)
        path = train(p)
        model = load_model(path)
        representative = representative_data(data.x_train, p.convert.representative_samples, p.seed)
        out = convert_file(model, path, "int8", out_dir / f"{variant}.int8.tflite", p, data, representative,
                           pruned=False)
        built.append((variant, p, data, path, out, totals(model_costs(model))))
    rows = []
    for variant, p, data, path, out, cost in built:
        v = p.validate
        predictions, (latency,) = litert.evaluate(out, data.x_test, v.batch_size, [1], v.warmup_runs, v.latency_runs)
        metrics = read_record(path)["metrics"]
        heads = data.tasks or ("label",)
        per_task_metrics = metrics.get("tasks", {"label": metrics})
        tasks = {}
        for i, task in enumerate(heads):
            truth = data.y_test[:, i] if data.tasks else data.y_test
            labels = predictions[task] if data.tasks else next(iter(predictions.values()))
            m = per_task_metrics[task]
            tasks[task] = {"float_accuracy": m["test_accuracy"],
                           "int8_accuracy": round(float(np.mean(labels == truth)), 5),
                           "train_accuracy": m["train_accuracy"], "val_accuracy": m["val_accuracy"],
                           "gap": round(m["train_accuracy"] - m["val_accuracy"], 5)}
        blob = out.read_bytes()
        rows.append({"variant": variant, "params": cost["params"], "macs": cost["macs"], "int8_bytes": len(blob),
                     "int8_gzip_bytes": len(gzip.compress(blob, 9)), "p50_ms": latency["p50"],
                     "p90_ms": latency["p90"], "best_epoch": metrics["best_epoch"],
                     "train_seconds": metrics["train_seconds"], "tasks": tasks})
        summary = ", ".join(f"{t} int8 {r['int8_accuracy']:.4f}" for t, r in tasks.items())
        print(f"{label}: {variant}: {summary}, p50 {latency['p50']:.3f} ms", flush=True)
    return rows
