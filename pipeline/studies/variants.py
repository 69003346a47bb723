"""Comparing model variants on one budget: each is trained by the train stage, converted to
full-integer int8, and run in LiteRT. Used by ``mobiledeploy zoo`` and ``mobiledeploy mtl-compare``.

A variant is a complete set of params (its own name, so its model has its own file and a finished
variant is not trained again). All int8 latencies are measured one after another at the end, so
that they share the machine's conditions.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.artifacts import check_writable, read_record, trained_path
from ..core.keras_io import load_model
from ..core.params import Params
from ..data import Dataset, load_dataset
from ..export.costs import model_costs, totals
from ..export.measure import measure
from ..export.tflite import Exporter, representative_data
from ..stages.convert import convert_file
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

    for variant, p in variants.items():  # every name and folder the study will write, before any training
        check_writable(trained_path(p.name))
        check_writable(out_dir / f"{variant}.int8.tflite")
    built = []
    for i, (variant, p) in enumerate(variants.items(), start=1):
        print(f"{label}: [{i}/{len(variants)}] {variant}", flush=True)
        data = data_for(p)
        path = train(p)
        model = load_model(path)
        representative = representative_data(data, p.convert, p.seed)
        with Exporter(model) as exporter:
            out = convert_file(exporter, path, "int8", out_dir / f"{variant}.int8.tflite", p, data, representative,
                               pruned=False)
        built.append((variant, p, path, out, totals(model_costs(model))))
    rows = []
    for variant, p, path, out, cost in built:  # (the float accuracies are in the train records)
        data = data_for(p)
        entry = measure(out, data, p.validate, threads=[1])
        metrics = read_record(path)["metrics"]
        trained = metrics.get("tasks", {"label": metrics})
        measured = entry.get("tasks", {"label": entry})
        tasks = {task: {"float_accuracy": trained[task]["test_accuracy"],
                        "int8_accuracy": measured[task]["accuracy"],
                        "train_accuracy": trained[task]["train_accuracy"],
                        "val_accuracy": trained[task]["val_accuracy"],
                        "gap": round(trained[task]["train_accuracy"] - trained[task]["val_accuracy"], 5)}
                 for task in (data.tasks or ("label",))}
        latency = entry["latency_ms"]
        rows.append({"variant": variant, "params": cost["params"], "macs": cost["macs"],
                     "int8_bytes": entry["size_bytes"], "int8_gzip_bytes": entry["gzip_bytes"],
                     "p50_ms": latency["p50"], "p90_ms": latency["p90"], "best_epoch": metrics["best_epoch"],
                     "train_seconds": metrics["train_seconds"], "tasks": tasks})
        summary = ", ".join(f"{t} int8 {r['int8_accuracy']:.4f}" for t, r in tasks.items())
        print(f"{label}: {variant}: {summary}, p50 {latency['p50']:.3f} ms", flush=True)
    return rows
