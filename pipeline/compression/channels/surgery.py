"""Choosing the channels to keep and cutting a model down to them, surviving weights copied."""

from __future__ import annotations

import numpy as np

from ...core.errors import PipelineError
from ...core.framework import keras
from .graph import PRODUCERS, ChannelGraph


def layer_fractions(model, fraction: float, by_layer: dict[str, float]) -> dict[int, float]:
    """The share of channels to remove from each prunable space: ``fraction``, or the value given in
    ``by_layer`` for a layer that writes the space (names as in ``mobiledeploy summary``)."""
    spaces = ChannelGraph(model).prunable()
    known = {name: space.id for space in spaces for name in space.producers}
    unknown = sorted(set(by_layer) - set(known))
    if unknown:
        raise PipelineError(f"structured.layer_fractions: {', '.join(unknown)}: not a prunable layer of "
                            f"{model.name}; prunable: {', '.join(known)}")
    fractions = {space.id: fraction for space in spaces}
    asked: dict[int, tuple[str, float]] = {}
    for name, value in by_layer.items():
        sid = known[name]
        if sid in asked and asked[sid][1] != value:  # a residual connection or tied towers: one set of channels
            raise PipelineError(f"structured.layer_fractions: {asked[sid][0]} ({asked[sid][1]}) and {name} ({value}) "
                                "write the same channels (they are tied, by a residual connection or as task "
                                "towers), so they lose the same share; give them one value")
        asked[sid] = (name, value)
        fractions[sid] = value
    return fractions


def kept_width(channels: int, fraction: float, multiple: int = 1) -> int:
    """How many of ``channels`` survive removing ``fraction`` of them: at least one, and with
    ``multiple`` > 1 rounded down to a multiple of it (int8 kernels work on blocks of channels, so
    only whole blocks save time); a layer already at ``multiple`` channels or fewer is left alone."""
    kept = channels - min(int(fraction * channels), channels - 1)
    if multiple > 1 and kept < channels:
        kept = channels if channels <= multiple else max(multiple, kept // multiple * multiple)
    return kept


def choose(scores: dict[int, np.ndarray], fraction: float | dict[int, float], scope: str = "layer",
           multiple: int = 1) -> dict[int, np.ndarray]:
    """The channels to keep (sorted indices) per space after removing ``fraction`` of them (one share,
    or one per space, layer scope only): the lowest-scored in each space (``layer``, widths rounded
    by :func:`kept_width`), or the lowest across all spaces with scores normalised by each space's
    mean (``global``). Every space keeps at least one channel."""
    fractions = fraction if isinstance(fraction, dict) else dict.fromkeys(scores, fraction)
    if not all(0 <= f < 1 for f in fractions.values()):
        raise PipelineError(f"fraction of channels to remove must be in [0, 1), got {fraction}")
    keep = {}
    if scope == "layer":
        for sid, s in scores.items():
            keep[sid] = np.sort(np.argsort(s, kind="stable")[len(s) - kept_width(len(s), fractions[sid], multiple):])
        return keep
    if isinstance(fraction, dict) or multiple > 1:
        raise PipelineError("per-layer fractions and channel multiples need scope: layer")
    flat = [(value / (np.mean(s) or 1.0), sid, i) for sid, s in scores.items() for i, value in enumerate(s)]
    flat.sort()
    budget = int(fraction * len(flat))
    removed = {sid: set() for sid in scores}
    for _, sid, i in flat:
        if budget == 0:
            break
        if len(removed[sid]) < len(scores[sid]) - 1:
            removed[sid].add(i)
            budget -= 1
    return {sid: np.array([i for i in range(len(s)) if i not in removed[sid]]) for sid, s in scores.items()}


def remove_channels(model, keep: dict[int, np.ndarray]):
    """A narrower copy of ``model`` holding only the kept channels of each space, with the surviving
    weights copied. Spaces not in ``keep`` keep all their channels."""
    graph = ChannelGraph(model)

    def kept(sid: int | None, size: int) -> np.ndarray:
        return keep[sid] if sid is not None and sid in keep else np.arange(size)

    config = model.get_config()
    for entry in config["layers"]:
        name, kind = entry["name"], entry["class_name"]
        sid = graph.space(name) if name in graph.space_of else None
        if kind in PRODUCERS and sid in keep:
            entry["config"]["filters" if kind == "Conv2D" else "units"] = int(len(keep[sid]))
        entry.pop("build_config", None)
    narrow = keras.Model.from_config(config)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        kind = type(layer).__name__
        inbound = graph.inputs_of[layer.name]
        in_sid = graph.space(inbound[0]) if inbound else None
        if kind in PRODUCERS:
            out_idx = kept(graph.space(layer.name), weights[0].shape[-1])
            if kind == "Dense" and inbound and inbound[0] in graph.flat:
                h, w, c, flat_sid = graph.flatten_input[graph.flat[inbound[0]]]
                channels = kept(graph.find(flat_sid), c)
                in_idx = np.array([(i * w + j) * c + ch for i in range(h) for j in range(w) for ch in channels])
            else:
                in_idx = kept(in_sid, weights[0].shape[-2])
            kernel = np.take(np.take(weights[0], in_idx, axis=-2), out_idx, axis=-1)
            weights = [kernel] + [b[out_idx] for b in weights[1:]]
        elif kind == "BatchNormalization":
            idx = kept(graph.space(layer.name), weights[0].shape[0])
            weights = [w[idx] for w in weights]
        elif kind == "DepthwiseConv2D":
            idx = kept(graph.space(layer.name), weights[0].shape[2])
            weights = [weights[0][:, :, idx]] + [b[idx] for b in weights[1:]]
        narrow.get_layer(layer.name).set_weights(weights)
    return narrow
