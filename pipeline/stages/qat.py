"""Quantization-aware training: TF-MOT's fake quantization on the trained model (qat), the pruned one
with its zeros kept (pqat), or the clustered one with its clusters kept (cqat; pcqat: from pruned, both
kept), fine-tuned; ``models/<name>.<aware>.h5``, converted to int8."""

from __future__ import annotations

import time
from pathlib import Path

from ..compression.qat import kept_in_float, qat_model, quantized_layers
from ..core.artifacts import aware_path, clustered_path, derived, file_hash, make_record, pruned_path
from ..core.errors import PipelineError
from ..core.params import Params
from ..training import distribute
from ..training.fit import split_accuracies
from .base import finetune_settings, load_parent, made_from, make, teacher_for


def kernel_sparsity(layers) -> float:
    """The share of zero kernel weights over ``layers`` (plain layers or quantize wrappers; their kernels
    are what pruning zeroes)."""
    kernels = [w.numpy() for layer in layers for w in layer.trainable_weights if "kernel" in w.name]
    total = sum(k.size for k in kernels)
    return round(sum(int((k == 0).sum()) for k in kernels) / total, 4) if total else 0.0


def qat(params: Params, model_path: Path | None = None) -> Path:
    """Fine-tune the trained model (or a user's ``model_path``) with fake quantization, or its pruned
    model (pqat) or clustered model (cqat, pcqat); write ``models/<stem>.<aware>.h5``."""
    distribute.start(params.train.distribute)  # before TensorFlow runs anything
    q = params.quantize
    if q.aware == "none":
        raise PipelineError("quantize.aware is none in these params: there is no quantization-aware model to make "
                            "(set it to qat, pqat, cqat or pcqat, or leave this stage out)")
    source, model, data = load_parent(params, model_path, refuse=("prune",))
    parent = source
    clustered = q.aware in ("cqat", "pcqat")
    if q.aware == "pqat":
        parent, model, data = made_from(params, source, model_path, data, pruned_path, "prune")
    elif clustered:
        parent, model, data = made_from(params, source, model_path, data, clustered_path, "cluster")
    out = derived(lambda stem: aware_path(stem, q.aware), source, params)
    teacher, distilled = teacher_for(params, out, parent, data)
    sections = ("data", "input", "augment", "quantize", *(("prune",) if params.prune.enabled and q.aware != "qat"
                                                          else ()), *(("cluster",) if clustered else ()))
    used = {**params.subset(*sections), **finetune_settings(params, data), **distilled}
    planned = make_record("qat", used, params.seed, {"model": file_hash(parent), "dataset": data.fingerprint},
                          parent=str(parent), dataset=data.source)

    def work(state: Path):
        floats = kept_in_float(model)
        print(f"qat: {q.aware} on {parent}, {q.epochs} epochs on {data.describe()}"
              + (f"; kept in float: {', '.join(floats)}" if floats else "")
              + (f", {teacher.describe()}" if teacher else ""), flush=True)
        start = time.perf_counter()
        aware, keep = qat_model(model, data, q, params.seed, state, planned["key"], params.train, teacher)
        layers = quantized_layers(aware)
        names = {layer.layer.name for layer in layers}
        metrics = {**split_accuracies(aware, data), "finetune_seconds": round(time.perf_counter() - start, 1),
                   "kept_in_float": floats, "quantized_layers": len(layers),
                   "kernel_sparsity": kernel_sparsity(layers), "parent_kernel_sparsity": kernel_sparsity(
                       [layer for layer in model.layers if layer.name in names]),
                   "best_epoch": keep.best_epoch + 1, "history": keep.history}
        print(f"qat: {len(layers)} layers fake-quantized, kernel sparsity {metrics['kernel_sparsity']:.1%} (parent "
              f"{metrics['parent_kernel_sparsity']:.1%}), val {metrics['val_accuracy']:.4f}, "
              f"test {metrics['test_accuracy']:.4f} -> {out}", flush=True)
        return aware, metrics

    make(out, planned, work)
    return out
