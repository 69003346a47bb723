"""`mobiledeploy zoo`: train registered variants on the same data and budget, and compare what each
costs on a device (params, MACs, int8 bytes, int8 latency) against what it scores.

Each variant is trained by the train stage as ``models/zoo_<variant>.keras``, converted to int8 under
``tflite_out/zoo/`` and run in LiteRT (:mod:`pipeline.studies.variants`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..architectures import resolve
from ..core.artifacts import OUT_DIR, write_bytes, write_json, write_text
from ..core.params import Params
from ..core.plots import scatter_png
from ..core.tables import count, markdown_table, pct_sd
from .variants import ACCURACIES, measure_variants, seeds_text

ZOO_DIR = OUT_DIR / "zoo"


def variant_params(params: Params, variant: str) -> Params:
    """``params`` with the registered variant's own hyperparameters and a name of its own."""
    model = dataclasses.replace(params.model, architecture=variant, width=None, options={})
    return dataclasses.replace(params, name=f"zoo_{variant}", model=model)


def zoo(params: Params, out_dir: Path = ZOO_DIR) -> Path:
    """Train, convert and measure every variant in ``params.zoo.variants``; write zoo.json/.md/.png."""
    variants = {v: variant_params(params, v) for v in params.zoo.variants}
    rows = []
    for row in measure_variants(variants, out_dir, "zoo"):
        hp = resolve(row["variant"])
        # the headline numbers are means over the tasks (one task: its own); each task's stay under "tasks"
        per_task = list(row["tasks"].values())
        mean = dict(per_task[0]) if len(per_task) == 1 else \
            {key: round(sum(t[key] for t in per_task) / len(per_task), 5) for key in ACCURACIES}
        rows.append({**row, "block": hp["block"], "pooling": hp["pooling"], "width": hp["width"], **mean})
    tasks = list(rows[0]["tasks"]) if rows else []
    result = {"epochs": params.train.epochs, "seeds": params.studies.seeds,
              "latency_runs": params.validate.latency_runs,
              "tasks": tasks if len(tasks) > 1 else [], "variants": rows}
    write_json(out_dir / "zoo.json", result)
    write_text(out_dir / "zoo.md", markdown(result))
    biggest = max(r["int8_bytes"] for r in rows)
    points = [(r["variant"], r["macs"], 100 * r["int8_accuracy"], 40 + 900 * r["int8_bytes"] / biggest,
               f"{r['int8_bytes'] / 1024:.0f} KiB, {r['p50_ms']:.3f} ms") for r in rows]
    write_bytes(out_dir / "zoo.png", scatter_png(points, "multiply-accumulates per image (log scale)",
                                                 "int8 test accuracy (%)",
                                                 "Accuracy against compute; marker area = int8 .tflite bytes"))
    print(f"zoo: {len(rows)} variants -> {out_dir / 'zoo.md'}, {out_dir / 'zoo.png'}", flush=True)
    return out_dir / "zoo.json"


def markdown(result: dict) -> str:
    tasks = result.get("tasks") or []

    def acc(r: dict, key: str) -> str:  # per task, side by side, for a multi-task zoo
        return " / ".join(pct_sd(r["tasks"][t], key) for t in tasks) if tasks else pct_sd(r, key)

    per_task = f" For each task ({' / '.join(tasks)}), side by side." if tasks else ""
    intro = (f"# Architecture comparison\n\nEvery variant trained for {result['epochs']} epochs with the same "
             f"data, optimiser and {seeds_text(result.get('seeds'))}. Accuracy in % on the test set." + per_task +
             " Latency: int8, one image, "
             f"1 thread, median of {result['latency_runs']} runs. Gap: train minus validation accuracy of the kept "
             "epoch.\n\n")
    rows = [[r["variant"], r["block"], r["pooling"] if isinstance(r["pooling"], str) else "/".join(r["pooling"]),
             count(r["params"]), f"{r['macs'] / 1e6:.2f}M", acc(r, "float_accuracy"), acc(r, "int8_accuracy"),
             count(r["int8_bytes"]), f"{r['p50_ms']:.3f}", acc(r, "train_accuracy"), acc(r, "val_accuracy"),
             acc(r, "gap"), f"{r['train_seconds']:.0f}"] for r in result["variants"]]
    header = ["variant", "block", "pooling", "params", "MACs", "float acc", "int8 acc", "int8 bytes", "p50 ms",
              "train acc", "val acc", "gap", "train s"]
    return intro + markdown_table(header, rows, "lll" + "r" * 10)
