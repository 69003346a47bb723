"""Stage 2: TF-MOT magnitude pruning with fine-tuning, then strip the masks."""

from __future__ import annotations

import time
from pathlib import Path

from ..compression.magnitude import prune_model
from ..core.artifacts import file_hash, make_record, model_stem, place, pruned_path, reuse_if_current
from ..core.keras_io import save_model
from ..core.params import Params
from ..export.costs import model_costs, totals
from ..training.resume import backup_dir, finish
from .base import load_parent, multitask_settings
from .train import split_accuracies

# Part of the stage's record key: raised when a fix changes what the same inputs and params produce, so
# models pruned before it are redone (2: layers left dense kept their trained weights from then on).
REVISION = 2


def prune(params: Params, model_path: Path | None = None) -> Path:
    """Prune the trained model (or a user's ``model_path``); write ``models/<stem>.pruned.keras``."""
    source, model, data = load_parent(params, model_path, refuse=("prune",))
    out = place(pruned_path(model_stem(source)), source, params.name)
    used = {**params.subset("data", "prune"), **multitask_settings(params, data)}
    planned = make_record("prune", used, params.seed, {"model": file_hash(source), "dataset": data.fingerprint,
                                                       "revision": REVISION}, parent=str(source), dataset=data.source)
    if reuse_if_current(out, planned):
        print(f"prune: {out} is up to date (same model, data, params and versions); nothing to do", flush=True)
        return out
    p = params.prune
    print(f"prune: {p.schedule} to {p.final_sparsity:.0%} over {p.epochs} fine-tuning epochs on {data.describe()}",
          flush=True)
    start = time.perf_counter()
    state = backup_dir(out)
    _, stripped, keep = prune_model(model, data, p, params.seed, state, planned["key"], params.train)
    costs = model_costs(stripped)
    metrics = {**split_accuracies(stripped, data), "finetune_seconds": round(time.perf_counter() - start, 1),
               "sparsity": totals(costs)["sparsity"],
               "layer_sparsity": {c.name: round(c.zeros / c.prunable, 4) for c in costs if c.prunable},
               "best_epoch": keep.best_epoch + 1, "history": keep.history}
    save_model(stripped, out, {**planned, "metrics": metrics})
    finish(state)
    print(f"prune: sparsity {metrics['sparsity']:.1%}, val {metrics['val_accuracy']:.4f}, "
          f"test {metrics['test_accuracy']:.4f} -> {out}", flush=True)
    return out
