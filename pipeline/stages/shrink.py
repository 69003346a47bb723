"""The structured-pruning stage: remove channels in rounds until a target or the accuracy budget
(:func:`pipeline.compression.channels.search.iterate`), and the per-layer sensitivity analysis.

``shrink`` writes ``models/<stem>.shrunk.keras``: an ordinary, narrower Keras model that convert,
validate and TF-MOT's prune take like any other (``--model``). The round-by-round history goes into
its record and into ``tflite_out/<stem>.shrunk.md`` and ``.png``.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

from ..compression.channels.search import iterate
from ..core.artifacts import (
    MODELS_DIR,
    OUT_DIR,
    check_writable,
    derived,
    file_hash,
    make_record,
    shrunk_path,
    write_bytes,
    write_text,
)
from ..core.params import Params
from ..core.plots import scatter_png
from ..core.tables import count, markdown_table, pct
from ..data import Dataset
from ..export.measure import measure
from ..export.tflite import representative_data, to_tflite
from ..training import distribute
from ..training.fit import split_accuracies
from .base import finetune_settings, load_parent, make, teacher_for


def int8_latency(params: Params, data: Dataset):
    """model -> median single-image latency (ms, 1 thread) of its full-integer int8 conversion, timed
    by the one measurement (on 8 validation images: only the latency is used)."""
    representative = representative_data(data, params.convert, params.seed)
    probe = dataclasses.replace(data, x_test=data.x_val[:8], y_test=data.y_val[:8])

    def timed(model) -> float:
        with tempfile.TemporaryDirectory(prefix="shrink-") as tmp:
            path = Path(tmp) / "m.int8.tflite"
            path.write_bytes(to_tflite(model, "int8", representative))
            return measure(path, probe, params.validate, threads=[1])["latency_ms"]["p50"]

    # in a multi-worker run the chief times it alone and tells the others: the rounds' decisions must agree
    strategy = distribute.start(params.train.distribute)
    return lambda model: distribute.from_chief(strategy, lambda: timed(model))


def shrink(params: Params, model_path: Path | None = None) -> Path:
    """Structured pruning of the trained model (or ``model_path``); writes ``models/<stem>.shrunk.keras``."""
    distribute.start(params.train.distribute)  # before TensorFlow runs anything
    source, model, data = load_parent(params, model_path, refuse=("prune", "shrink"), head=False)
    out = derived(shrunk_path, source, params)
    stem = out.name.removesuffix(".shrunk.keras")
    teacher, distilled = teacher_for(params, out, source, data)
    used = {**params.subset("data", "input", "augment", "structured"), "validate": params.section("validate"),
            **finetune_settings(params, data), **distilled}
    planned = make_record("shrink", used, params.seed, {"model": file_hash(source), "dataset": data.fingerprint},
                          parent=str(source), dataset=data.source)
    s = params.structured
    pages = [OUT_DIR / out.parent.relative_to(MODELS_DIR) / f"{stem}.shrunk.{kind}" for kind in ("md", "png")]
    check_writable(pages[0])

    def work(_state: Path):
        rounds = f"{s.max_rounds} round{'s' if s.max_rounds != 1 else ''}"
        print(f"shrink: up to {rounds} of removing {s.fraction:.0%} of the channels (ranked by "
              f"{s.criterion}, {s.scope}), {s.finetune_epochs} fine-tuning epochs each; target {s.target} <= "
              f"{s.target_ratio:.0%}, accuracy budget {s.accuracy_budget}" + (f"; {teacher.describe()}" if teacher
                                                                              else ""), flush=True)
        start = time.perf_counter()
        kept, history = iterate(model, data, s, params.train, params.seed, int8_latency(params, data), teacher)
        metrics = {**split_accuracies(kept, data), "seconds": round(time.perf_counter() - start, 1),
                   "history": history}
        if distribute.is_chief():
            write_text(pages[0], history_markdown(stem, s, history))
            write_bytes(pages[1], history_png(history))
        kept_row = [h for h in history if h["within_budget"]][-1]
        print(f"shrink: kept round {kept_row['round']}: {kept_row['macs'] / history[0]['macs']:.0%} of the MACs, "
              f"p50 {kept_row['p50_ms']:.3f} ms (from {history[0]['p50_ms']:.3f}), test "
              f"{metrics['test_accuracy']:.4f} -> {out}", flush=True)
        return kept, metrics

    make(out, planned, work)
    return out


def history_markdown(stem: str, s, history: list[dict]) -> str:
    tasks = [t for t in history[0]["val_tasks"] if len(history[0]["val_tasks"]) > 1]
    intro = (f"# Structured pruning of {stem}\n\nEach round removes {s.fraction:.0%} of the remaining channels "
             f"(ranked by {s.criterion}, {s.scope}) and fine-tunes for {s.finetune_epochs} epochs. Accuracy in %; "
             f"within budget: no task more than {100 * s.accuracy_budget:g} points below round 0. Latency: "
             "int8, one image, 1 thread, p50.\n\n")
    header = ["round", "params", "MACs", "val accuracy", *(f"val {t}" for t in tasks), "p50 ms", "within budget"]
    rows = [[h["round"], count(h["params"]), count(h["macs"]), pct(h["val_accuracy"]),
             *(pct(h["val_tasks"][t]) for t in tasks), f"{h['p50_ms']:.3f}", "yes" if h["within_budget"] else "no"]
            for h in history]
    return intro + markdown_table(header, rows, "r" * (len(header) - 1) + "l")


def history_png(history: list[dict]) -> bytes:
    biggest = max(h["params"] for h in history)
    points = [(f"round {h['round']}", h["macs"], 100 * h["val_accuracy"], 40 + 600 * h["params"] / biggest,
               f"{h['p50_ms']:.3f} ms") for h in history]
    return scatter_png(points, "MACs per image (log scale)", "validation accuracy (%)",
                       "Structured pruning, round by round; marker area = parameters")
