"""TF-MOT quantization-aware training: fake-quantize a trained, pruned or clustered model, fine-tune
it, and hand the converter a model whose int8 ranges it learnt.

Every registered architecture starts with a ``Rescaling`` layer (pixels to the network's range), which
TF-MOT cannot quantize (model-optimization issue 647). It is not annotated: it stays a float layer
in the Keras model, exactly as it was, and every layer after it is fake-quantized. The converter then
quantizes that leading multiply-add from the calibration images, as it does for post-training int8,
so the ``.tflite`` takes the same int8 pixels either way. A leading ``Normalization`` layer (a user's
model) is left alone the same way. TF-MOT's pruning-preserving scheme claims to support every layer
without trainable weights, ``Rescaling`` included, and then fails on it; its registry is asked
through :class:`_LeaveInputScaling`, which says no for the layers left in float.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ..core.errors import PipelineError
from ..core.framework import keras, tfmot
from ..core.params import QuantizeParams, TrainParams
from ..data import Dataset
from ..training import distribute
from ..training.distill import TeacherFile
from ..training.fit import fit_target, seed_everything
from ..training.resume import Diverged, divergence_hint, fit_resumable

quantization = tfmot.quantization.keras
INPUT_SCALING = ("Rescaling", "Normalization")  # left in float when they read the model's input


def _schemes() -> dict:
    combine = tfmot.experimental.combine
    return {"qat": quantization.default_8bit.Default8BitQuantizeScheme,
            "pqat": combine.Default8BitPrunePreserveQuantizeScheme,
            "cqat": lambda: combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=False),
            "pcqat": lambda: combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True)}


def kept_in_float(model) -> list[str]:
    """The layers quantization-aware training leaves as they are: input scaling that reads the input."""
    inputs = {t.ref() for t in model.inputs}

    def reads_input(layer) -> bool:
        return all(t.ref() in inputs for t in (layer.input if isinstance(layer.input, list) else [layer.input]))

    return [layer.name for layer in model.layers if type(layer).__name__ in INPUT_SCALING and reads_input(layer)]


class _LeaveInputScaling:
    """A scheme's quantize registry that does not claim the layers :func:`kept_in_float` names."""

    def __init__(self, registry, names: set[str]):
        self._registry, self._names = registry, names

    def supports(self, layer) -> bool:
        return layer.name not in self._names and self._registry.supports(layer)

    def __getattr__(self, attr):
        return getattr(self._registry, attr)


def quantize_aware(model, aware: str):
    """``model`` (unchanged) fake-quantized by TF-MOT's ``aware`` scheme, with its trained weights and
    batch-norm statistics: "qat"; "pqat" keeps the zeros pruning left through fine-tuning; "cqat" keeps
    the clusters (per output channel, as int8 scales are); "pcqat" keeps both.
    A layer TF-MOT cannot quantize is refused with one line naming it."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    floats = set(kept_in_float(copy))
    # the annotations wrap the copy's own layers, weights and all (kept_in_float reads the copy: a layer of
    # ``model`` may be shared with the model it was stripped from, and its input be that model's)
    annotated = keras.models.clone_model(copy, clone_function=lambda layer: layer if (
        layer.name in floats or type(layer).__name__ == "InputLayer") else quantization.quantize_annotate_layer(layer))
    scheme = _schemes()[aware]()
    registry = _LeaveInputScaling(scheme.get_quantize_registry(), floats)
    scheme.get_quantize_registry = lambda: registry
    try:
        with quantization.quantize_scope():
            return quantization.quantize_apply(annotated, scheme)
    except (RuntimeError, ValueError) as exc:
        text = str(exc).strip()
        found = re.search(r"[Ll]ayer (\S+?):<class '[\w.]*?(\w+)'>", text)
        what = f"layer {found[1]} ({found[2]})" if found else text.splitlines()[0][:200] if text else type(exc).__name__
        raise PipelineError(f"quantize.aware {aware}: TF-MOT cannot quantize {what} of {model.name}; leave "
                            "quantization-aware training off for this model (quantize.aware: none), or replace "
                            "that layer") from None


def quantized_layers(model) -> list:
    """The quantize wrappers of a quantization-aware model (``.layer``: the layer each wraps; its
    variables, the kernel among them, are the wrapper's weights)."""
    return [layer for layer in model.layers if type(layer).__name__.startswith("QuantizeWrapper")]


def qat_model(model, data: Dataset, q: QuantizeParams, seed: int, state_dir: Path | None = None, key: str = "",
              train_p: TrainParams = TrainParams(), teacher: TeacherFile | None = None):
    """Fake-quantize ``model`` (``q.aware``) and fine-tune it for ``q.epochs`` at ``q.learning_rate``
    decayed along a cosine, distilled from ``teacher`` if given; return (quantization-aware model,
    KeepBest). The weights kept are those of the best validation epoch."""
    strategy = distribute.start(train_p.distribute)
    seed_everything(seed)
    steps = math.ceil(len(data.x_train) / q.batch_size)
    feed = distribute.datasets(strategy, data, q.batch_size, seed, "quantize.batch_size")
    with strategy.scope(), quantization.quantize_scope():
        net = distribute.replica(model, strategy, train_p.sync_batchnorm)
        aware = quantize_aware(net, q.aware)
        target = fit_target(aware, data, train_p, keras.optimizers.schedules.CosineDecay(
            q.learning_rate, steps * q.epochs), teacher.load(data) if teacher else None)
    keep = fit_resumable(target, feed, q.epochs, state_dir, key, strategy=strategy, callbacks=[Diverged(
        "quantization-aware training", divergence_hint(data.tasks, "quantize.learning_rate"))])
    with quantization.quantize_scope():
        return as_default_scheme(distribute.local_copy(aware, strategy), model, q.aware), keep


def as_default_scheme(aware, model, scheme: str):
    """The fine-tuned ``aware`` model (of ``scheme``) as a model of TF-MOT's default scheme on ``model``'s
    layers, with the same weights and ranges: the same outputs, and a file tf_keras reloads.

    The preserving schemes differ from the default only in how they train: their weight quantizers
    write the kept zeros and clusters into each kernel on every training step, and hold extra variables
    for it (masks, centroids, indices) that tf_keras cannot rebuild on load. Every variable of the
    default-scheme model has a namesake in ``aware``. The sparsity-preserving schemes keep the zeros
    only approximately: PCQAT pulls some of them to the cluster nearest zero, which is not always zero
    (configs/smallest.yaml: 62.6% of its fake-quantized kernel weights zero after PCQAT, 79.9% before).
    Their zeros are set again, so the model keeps exactly the zeros of the one it was fine-tuned from."""
    if scheme == "qat":
        return aware
    plain = quantize_aware(model, "qat")
    theirs = {v.name: v for v in aware.weights}
    for variable in plain.weights:
        variable.assign(theirs[variable.name])
    if scheme in ("pqat", "pcqat"):  # the zeros the scheme promises to keep, kept exactly
        ours = {v.name: v for v in plain.weights}
        for weight in (w for layer in model.layers for w in layer.trainable_weights if "kernel" in w.name):
            zeros = weight.numpy() == 0
            if zeros.any():
                ours[weight.name].assign(np.where(zeros, 0.0, ours[weight.name].numpy()))
    return plain
