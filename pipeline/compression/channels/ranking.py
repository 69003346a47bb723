"""How important each channel is: weight norms (L1, L2), mean activation, APoZ, first-order Taylor."""

from __future__ import annotations

import numpy as np

from ...core.errors import PipelineError
from .graph import ChannelGraph, Space

# The registry of criteria (params' structured.criterion accepts these). Importing this module does not
# import TensorFlow: params reads the names.
CRITERIA = ("l1", "l2", "mean_activation", "apoz", "taylor")


def _kernel(layer) -> np.ndarray:
    return layer.get_weights()[0]


def weight_scores(graph: ChannelGraph, space: Space, order: int) -> np.ndarray:
    """Mean |w| (order 1) or root-mean-square w (order 2) of each channel's weights, summed over the
    space's producers: the filter's norm normalised by its size."""
    total = np.zeros(space.channels)
    for name in space.producers:
        kernel = _kernel(graph.layers[name]).reshape(-1, space.channels)
        total += np.mean(np.abs(kernel), axis=0) if order == 1 else np.sqrt(np.mean(kernel ** 2, axis=0))
    return total


def activation_scores(graph: ChannelGraph, spaces: list[Space], x: np.ndarray, y, criterion: str,
                      batch_size: int = 256) -> dict[int, np.ndarray]:
    """Per space, per channel: mean activation, 1 - APoZ (fraction of non-zero activations), or the
    first-order Taylor estimate |mean over positions of activation x gradient| averaged over examples.

    The activation is the space's first ReLU (after its Add, for a tied space), or the producer's
    output when nothing activates it (linear projections)."""
    from ...core.framework import keras, tf

    names = [s.activation or s.output for s in spaces]
    model = graph.model
    probe = keras.Model(model.inputs, [graph.layers[n].output for n in names] + [model.outputs])
    sums = [np.zeros(s.channels) for s in spaces]
    count = 0
    ce = keras.losses.SparseCategoricalCrossentropy(reduction="sum")
    logits = None  # per output: True if it gives logits (read from the first batch)
    # labels per model output, in the order of model.outputs (a dict of labels is keyed by output name)
    targets = [y[name] for name in model.output_names] if isinstance(y, dict) else [y]
    for start in range(0, len(x), batch_size):
        xb = tf.constant(x[start:start + batch_size], tf.float32)
        with tf.GradientTape() as tape:
            *acts, outs = probe(xb, training=False)
            if criterion == "taylor":
                outs = outs if isinstance(outs, list) else [outs]
                if logits is None:
                    from ...core.contract import gives_probabilities

                    logits = [not gives_probabilities(out) for out in outs]
                loss = tf.add_n([ce(t[start:start + batch_size], tf.nn.softmax(out) if lg else out)
                                 for t, out, lg in zip(targets, outs, logits)])
        grads = tape.gradient(loss, acts) if criterion == "taylor" else [None] * len(acts)
        for i, (a, g) in enumerate(zip(acts, grads)):
            a = a.numpy().reshape(a.shape[0], -1, a.shape[-1])  # (batch, positions, channels)
            if criterion == "mean_activation":
                sums[i] += a.mean(axis=1).sum(axis=0)
            elif criterion == "apoz":
                sums[i] += (a != 0).mean(axis=1).sum(axis=0)
            else:
                g = g.numpy().reshape(a.shape)
                sums[i] += np.abs((a * g).mean(axis=1)).sum(axis=0)
        count += len(xb)
    return {s.id: total / count for s, total in zip(spaces, sums)}


def refuse_ties(model, scores: dict[int, np.ndarray], criterion: str, fractions: dict[int, float] | None = None
                ) -> None:
    """One line if ``criterion`` scores every channel of a space to be cut the same: removing channels
    there would drop the lowest-indexed ones, not the least important (APoZ on a layer that no ReLU
    follows: its activations are never zero). ``fractions``: only spaces with a share above 0 count."""
    graph = ChannelGraph(model)
    flat = [graph.spaces[sid] for sid, s in scores.items() if len(s) > 1 and np.ptp(s) == 0 and
            (fractions is None or fractions.get(sid, 1) > 0)]
    if flat:
        names = ", ".join(" + ".join(space.producers) for space in flat)
        why = " (no ReLU follows them, so no activation is ever zero)" if criterion == "apoz" else ""
        spare = ", ".join(f"{space.producers[0]}: 0" for space in flat)
        raise PipelineError(f"structured.criterion {criterion} cannot rank the channels of {names}: every channel "
                            f"scores the same{why}. Use another criterion (l1, l2, taylor), or spare them with "
                            f"structured.layer_fractions: {{{spare}}}")


def rank(model, criterion: str, x: np.ndarray | None = None, y=None) -> dict[int, np.ndarray]:
    """Importance of every channel of every prunable space (higher = keep). The activation-based
    criteria need validation images ``x``; Taylor also their labels ``y`` (a dict keyed by task for a
    multi-task model)."""
    if criterion not in CRITERIA:
        raise PipelineError(f"unknown ranking criterion {criterion!r}; known: {', '.join(CRITERIA)}")
    graph = ChannelGraph(model)
    spaces = graph.prunable()
    if criterion in ("l1", "l2"):
        return {s.id: weight_scores(graph, s, 1 if criterion == "l1" else 2) for s in spaces}
    if x is None or (criterion == "taylor" and y is None):
        raise PipelineError(f"ranking by {criterion} needs validation data")
    return activation_scores(graph, spaces, x, y, criterion)
