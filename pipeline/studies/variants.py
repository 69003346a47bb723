"""Comparing model variants on one budget: each is trained by the train stage, converted to
full-integer int8, and run in LiteRT. Used by ``mobiledeploy zoo`` and ``mobiledeploy mtl-compare``.

A variant is a complete set of params (its own name, so its model has its own file and a finished
variant is not trained again). With ``studies.seeds``, each variant is trained once per seed (named
``<name>_s<seed>``) and its row holds the mean over the seeds, the standard deviation of each
accuracy (``<key>_sd``) and each seed's own row under ``runs``. All int8 latencies are measured one
after another at the end, so that they share the machine's conditions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.artifacts import check_writable, read_record, trained_path
from ..core.keras_io import load_model
from ..core.params import Params
from ..data import Dataset, load_dataset
from ..export.costs import model_costs, totals
from ..export.measure import measure
from ..export.tflite import Exporter, representative_data
from ..stages.convert import convert_file
from ..stages.train import train


ACCURACIES = ("float_accuracy", "int8_accuracy", "train_accuracy", "val_accuracy", "gap")
AVERAGED = ("int8_bytes", "int8_gzip_bytes", "p50_ms", "p90_ms", "best_epoch", "train_seconds")


def runs_of(variants: dict[str, Params]) -> list[tuple[str, str, Params]]:
    """(variant, run, params) for each training: the variant itself, or once per ``studies.seeds``."""
    runs = []
    for variant, p in variants.items():
        seeds = p.studies.seeds
        runs += [(variant, variant, p)] if not seeds else \
            [(variant, f"{variant}_s{s}", p.overlay({"seed": s, "name": f"{p.name}_s{s}"})) for s in seeds]
    return runs


def combined(runs: list[dict]) -> dict:
    """One variant's row from its seeds' rows: means, and the standard deviation of each accuracy."""
    if len(runs) == 1 and "seed" not in runs[0]:
        return runs[0]
    row = {**runs[0], **{key: float(np.mean([r[key] for r in runs])) for key in AVERAGED}}
    row["int8_bytes"], row["int8_gzip_bytes"] = round(row["int8_bytes"]), round(row["int8_gzip_bytes"])
    row["tasks"] = {}
    for task in runs[0]["tasks"]:
        values = {key: [r["tasks"][task][key] for r in runs] for key in ACCURACIES}
        row["tasks"][task] = {**{key: round(float(np.mean(v)), 5) for key, v in values.items()},
                              **{f"{key}_sd": round(float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, 5)
                                 for key, v in values.items()}}
    del row["seed"]
    row["seeds"] = [r["seed"] for r in runs]
    row["runs"] = runs
    return row


def seeds_text(seeds: list[int] | None) -> str:
    """How a study's table was seeded, for its introduction."""
    if not seeds:
        return "seed"
    return (f"seeds ({', '.join(map(str, seeds))}): each number is the mean over the {len(seeds)} seeds, ± their "
            "standard deviation")


def measure_variants(variants: dict[str, Params], out_dir: Path, label: str) -> list[dict]:
    """One row per variant: params, MACs, int8 bytes and latency, and per task ("label" for a
    single-task model) float and int8 test accuracy, train and validation accuracy and their gap;
    over ``studies.seeds``, their means and standard deviations (:func:`combined`)."""
    datasets: dict[str, Dataset] = {}

    def data_for(p: Params) -> Dataset:
        key = json.dumps(p.section("data"), sort_keys=True)
        if key not in datasets:
            datasets[key] = load_dataset(p.data, p.seed)
        return datasets[key]

    runs = runs_of(variants)
    for _, run, p in runs:  # every name and folder the study will write, before any training
        check_writable(trained_path(p.name))
        check_writable(out_dir / f"{run}.int8.tflite")
    built = []
    for i, (variant, run, p) in enumerate(runs, start=1):
        print(f"{label}: [{i}/{len(runs)}] {run}", flush=True)
        data = data_for(p)
        path = train(p)
        model = load_model(path)
        representative = representative_data(data, p.convert, p.seed)
        with Exporter(model) as exporter:
            out = convert_file(exporter, path, "int8", out_dir / f"{run}.int8.tflite", p, data, representative,
                               pruned=False)
        built.append((variant, run, p, path, out, totals(model_costs(model))))
    rows: dict[str, list[dict]] = {}
    for variant, run, p, path, out, cost in built:  # (the float accuracies are in the train records)
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
        seed = {"seed": p.seed} if p.studies.seeds else {}
        rows.setdefault(variant, []).append(
            {"variant": variant, **seed, "params": cost["params"], "macs": cost["macs"],
             "int8_bytes": entry["size_bytes"], "int8_gzip_bytes": entry["gzip_bytes"],
             "p50_ms": latency["p50"], "p90_ms": latency["p90"], "best_epoch": metrics["best_epoch"],
             "train_seconds": metrics["train_seconds"], "tasks": tasks})
        summary = ", ".join(f"{t} int8 {r['int8_accuracy']:.4f}" for t, r in tasks.items())
        print(f"{label}: {run}: {summary}, p50 {latency['p50']:.3f} ms", flush=True)
    return [combined(found) for found in rows.values()]
