"""Stage 2: TF-MOT magnitude pruning with fine-tuning, then strip the masks."""

from __future__ import annotations

import time
from pathlib import Path

from ..compression.magnitude import pruned_layers, prune_model, target_sparsity
from ..core.artifacts import derived, file_hash, make_record, pruned_path
from ..core.errors import PipelineError
from ..core.params import Params
from ..export.costs import model_costs, totals
from ..training import distribute
from ..training.fit import split_accuracies
from .base import finetune_settings, load_parent, make, teacher_for

# Part of the stage's record key: raised when a fix changes what the same inputs and params produce, so
# models pruned before it are redone (2: layers left dense kept their trained weights from then on; 3: the
# mask updates fit the fine-tuning's steps).
REVISION = 3
TOLERANCE = 0.02  # how far the pruned layers' sparsity may end from the one asked for


def prune(params: Params, model_path: Path | None = None) -> Path:
    """Prune the trained model (or a user's ``model_path``); write ``models/<stem>.pruned.keras``."""
    distribute.start(params.train.distribute)  # before TensorFlow runs anything
    source, model, data = load_parent(params, model_path, refuse=("prune",))
    if not params.prune.enabled:
        raise PipelineError("prune.enabled is false in these params: there is nothing to prune (set it to true, or "
                            "leave this stage out)")
    out = derived(pruned_path, source, params)
    teacher, distilled = teacher_for(params, out, source, data)
    used = {**params.subset("data", "input", "augment", "prune"), **finetune_settings(params, data), **distilled}
    planned = make_record("prune", used, params.seed, {"model": file_hash(source), "dataset": data.fingerprint,
                                                       "revision": REVISION}, parent=str(source), dataset=data.source)
    p = params.prune

    def work(state: Path):
        print(f"prune: {p.schedule} to {p.final_sparsity:.0%} over {p.epochs} fine-tuning epochs on "
              f"{data.describe()}" + (f", {teacher.describe()}" if teacher else ""), flush=True)
        start = time.perf_counter()
        wrapped, stripped, keep = prune_model(model, data, p, params.seed, state, planned["key"], params.train,
                                             teacher)
        costs = model_costs(stripped)
        names = set(pruned_layers(wrapped))
        pruned = [c for c in costs if c.name in names]
        reached = sum(c.zeros for c in pruned) / max(sum(c.prunable for c in pruned), 1)
        if abs(reached - target_sparsity(p)) > TOLERANCE:
            raise PipelineError(f"prune: the pruned layers ended at {reached:.1%} sparsity, {target_sparsity(p):.1%} "
                                f"was asked for; nothing written. Give the fine-tuning more steps (prune.epochs, "
                                f"prune.end_epoch) or a lower prune.frequency")
        metrics = {**split_accuracies(stripped, data), "finetune_seconds": round(time.perf_counter() - start, 1),
                   "sparsity": totals(costs)["sparsity"], "pruned_layers_sparsity": round(reached, 4),
                   "layer_sparsity": {c.name: round(c.zeros / c.prunable, 4) for c in costs if c.prunable},
                   "best_epoch": keep.best_epoch + 1, "history": keep.history}
        print(f"prune: sparsity {reached:.1%} in the {len(pruned)} pruned layers ({metrics['sparsity']:.1%} of all "
              f"weights), val {metrics['val_accuracy']:.4f}, "
              f"test {metrics['test_accuracy']:.4f} -> {out}", flush=True)
        return stripped, metrics

    make(out, planned, work)
    return out
