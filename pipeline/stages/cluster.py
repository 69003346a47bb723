"""Weight clustering with fine-tuning, then strip: ``models/<name>.clustered.keras``, made from the
pruned model when pruning is on (its zeros kept) and from the trained model otherwise."""

from __future__ import annotations

import time
from pathlib import Path

from ..compression.clustering import cluster_model, distinct_values
from ..core.artifacts import clustered_path, derived, file_hash, make_record, pruned_path
from ..core.errors import PipelineError
from ..core.params import Params
from ..export.costs import model_costs, totals
from ..training import distribute
from ..training.fit import split_accuracies
from .base import finetune_settings, load_parent, made_from, make, teacher_for


def cluster(params: Params, model_path: Path | None = None) -> Path:
    """Cluster the pruned model (or the trained one, without pruning) of the config or of a user's
    ``model_path``; write ``models/<stem>.clustered.keras``."""
    distribute.start(params.train.distribute)  # before TensorFlow runs anything
    c = params.cluster
    if not c.enabled:
        raise PipelineError("cluster.enabled is false in these params: there is nothing to cluster (set it to true, "
                            "or leave this stage out)")
    source, model, data = load_parent(params, model_path, refuse=("prune",))
    parent = source
    if params.prune.enabled:  # clustering follows pruning, and keeps its zeros
        parent, model, data = made_from(params, source, model_path, data, pruned_path, "prune")
    out = derived(clustered_path, source, params)
    teacher, distilled = teacher_for(params, out, parent, data)
    sections = ("data", "input", "augment", "cluster") + (("prune",) if params.prune.enabled else ())
    used = {**params.subset(*sections), **finetune_settings(params, data), **distilled}
    planned = make_record("cluster", used, params.seed, {"model": file_hash(parent), "dataset": data.fingerprint},
                          parent=str(parent), dataset=data.source)

    def work(state: Path):
        print(f"cluster: {c.clusters} clusters ({c.init}) on {parent}, {c.epochs} fine-tuning epochs on "
              f"{data.describe()}" + (", zeros kept" if params.prune.enabled else "")
              + (f", {teacher.describe()}" if teacher else ""), flush=True)
        start = time.perf_counter()
        stripped, names, keep = cluster_model(model, data, c, params.seed, params.prune.enabled, state,
                                              planned["key"], params.train, teacher)
        distinct = distinct_values(stripped, names)
        most = c.clusters + int(params.prune.enabled)  # the zeros are a value of their own
        over = {name: n for name, n in distinct.items() if n > most}
        if over:
            name, n = next(iter(over.items()))
            raise PipelineError(f"cluster: layer {name} ended with {n} distinct kernel values, more than "
                                f"{most}; nothing written")
        metrics = {**split_accuracies(stripped, data), "finetune_seconds": round(time.perf_counter() - start, 1),
                   "clustered_layers": distinct, "sparsity": totals(model_costs(stripped))["sparsity"],
                   "best_epoch": keep.best_epoch + 1, "history": keep.history}
        print(f"cluster: {len(names)} layers at most {max(distinct.values())} distinct values each, sparsity "
              f"{metrics['sparsity']:.1%}, val {metrics['val_accuracy']:.4f}, test {metrics['test_accuracy']:.4f} "
              f"-> {out}", flush=True)
        return stripped, metrics

    make(out, planned, work)
    return out
