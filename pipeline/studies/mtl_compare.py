"""`mobiledeploy mtl-compare`: single-task baselines against hard and soft parameter sharing, on one
budget and one multi-task dataset (MultiFashion by default).

Variants: one single-task model per task (the same trunk, one head), hard sharing with fixed task
weights, soft sharing with the L2 and with the trace-norm penalty (``train.sharing_coefficient``), and
hard sharing with learned uncertainty weights. Each is trained by the train stage as
``models/<name>_<variant>.keras`` and converted to int8 under ``tflite_out/mtl/``.
"""

from __future__ import annotations

from pathlib import Path

from ..core.artifacts import OUT_DIR, write_bytes, write_json, write_text
from ..core.errors import PipelineError
from ..core.params import Params
from ..core.plots import scatter_png
from ..core.tables import count, markdown_table, pct_sd
from ..data import load_dataset
from .variants import measure_variants, seeds_text

MTL_DIR = OUT_DIR / "mtl"
SINGLES = "single tasks together"


def variants(params: Params, tasks: tuple[str, ...]) -> dict[str, Params]:
    hard = {"model": {"options": {"sharing": "hard"}}, "train": {"loss_weighting": "fixed"}}
    soft = {"model": {"options": {"sharing": "soft"}}, "train": {"loss_weighting": "fixed"}}
    changes = {f"single_{t}": {"data": {"tasks": [t]}, **hard} for t in tasks}
    changes.update({
        "hard": hard,
        "soft_l2": {**soft, "train": {"loss_weighting": "fixed", "sharing_penalty": "l2"}},
        "soft_trace": {**soft, "train": {"loss_weighting": "fixed", "sharing_penalty": "trace"}},
        "hard_uncertainty": {**hard, "train": {"loss_weighting": "uncertainty"}},
    })
    options = params.model.options
    return {name: params.overlay({**change, "name": f"{params.name}_{name}",
                                  "model": {"options": {**options, **change["model"]["options"]}}})
            for name, change in changes.items()}


def mtl_compare(params: Params, out_dir: Path = MTL_DIR) -> Path:
    """Train and measure every variant; write mtl.json, mtl.md and mtl.png under ``out_dir``."""
    tasks = load_dataset(params.data, params.seed).tasks
    if len(tasks) < 2:
        raise PipelineError(f"mtl-compare needs a multi-task dataset (data.source: multifashion, data.tasks: "
                            f"null); {params.data.source} has {len(tasks) or 'no'} tasks")
    if params.train.sharing_coefficient <= 0:
        raise PipelineError("mtl-compare: soft sharing needs train.sharing_coefficient > 0")
    rows = measure_variants(variants(params, tasks), out_dir, "mtl-compare")
    singles = [r for r in rows if r["variant"].startswith("single_")]
    together = {"variant": SINGLES, **{k: sum(r[k] for r in singles) for k in
                                       ("params", "macs", "int8_bytes", "int8_gzip_bytes", "p50_ms")},
                "tasks": {t: r["tasks"][t] for r in singles for t in r["tasks"]}}
    result = {"tasks": list(tasks), "epochs": params.train.epochs, "seeds": params.studies.seeds,
              "sharing_coefficient": params.train.sharing_coefficient, "latency_runs": params.validate.latency_runs,
              "variants": rows, "single_tasks_together": together}
    write_json(out_dir / "mtl.json", result)
    write_text(out_dir / "mtl.md", markdown(result))
    write_bytes(out_dir / "mtl.png", plot(result))
    print(f"mtl-compare: {len(rows)} variants -> {out_dir / 'mtl.md'}, {out_dir / 'mtl.png'}", flush=True)
    return out_dir / "mtl.json"


def _cell(row: dict, task: str, key: str) -> str:
    found = row["tasks"].get(task)
    return "-" if found is None else pct_sd(found, key)


def markdown(result: dict) -> str:
    tasks = result["tasks"]
    lines = [f"# Multi-task comparison\n\nEvery variant trained for {result['epochs']} epochs with the same data, "
             f"optimiser and {seeds_text(result.get('seeds'))}; soft-sharing coefficient "
             f"{result['sharing_coefficient']}. Accuracy in % on the test set; gap: train minus validation accuracy "
             f"of the kept epoch. Latency: int8, one image, 1 thread, median of {result['latency_runs']} runs.\n"]
    header = ["variant", "params", "MACs"] + [c for t in tasks for c in (f"{t} float / int8", f"{t} gap")] + \
        ["int8 bytes", "p50 ms"]
    rows = [[r["variant"], count(r["params"]), f"{r['macs'] / 1e6:.2f}M"] +
            [c for t in tasks for c in (f"{_cell(r, t, 'float_accuracy')} / {_cell(r, t, 'int8_accuracy')}",
                                        _cell(r, t, "gap"))] + [count(r["int8_bytes"]), f"{r['p50_ms']:.3f}"]
            for r in [*result["variants"], result["single_tasks_together"]]]
    return "\n".join(lines) + "\n" + markdown_table(header, rows)


def plot(result: dict) -> bytes:
    """Int8 accuracy on the first task against the second, per variant; marker area = int8 bytes."""
    first, second = result["tasks"][:2]
    rows = [r for r in result["variants"] if not r["variant"].startswith("single_")] + \
        [result["single_tasks_together"]]
    biggest = max(r["int8_bytes"] for r in rows)
    points = [(r["variant"], 100 * r["tasks"][first]["int8_accuracy"], 100 * r["tasks"][second]["int8_accuracy"],
               40 + 900 * r["int8_bytes"] / biggest, f"{r['int8_bytes'] / 1024:.0f} KiB, {r['p50_ms']:.3f} ms")
              for r in rows]
    return scatter_png(points, f"{first} int8 test accuracy (%)", f"{second} int8 test accuracy (%)",
                       "Both tasks at once; marker area = int8 .tflite bytes (single tasks: summed)", log_x=False)
