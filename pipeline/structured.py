"""Structured pruning: rank the channels (conv filters, dense neurons) of a model and physically
remove the weakest, giving an ordinary narrower Keras model.

Channels are tracked as *channel spaces*: a Conv2D or Dense layer creates one; batch norm,
activations, pooling, dropout and depthwise convolutions carry their input's; an ``Add`` ties the
spaces of its inputs together, so a residual connection loses the same channels on both sides. A
space is prunable unless it reaches a model output (a classifier) or the input. Removing channels
slices every weight that reads or writes them: the producers' kernels and biases, batch norm, depthwise
kernels, the next layer's input channels, and the dense layer after a ``Flatten`` (whose inputs are
position x channel).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import PipelineError
from .tf import keras, tf

PRODUCERS = ("Conv2D", "Dense")
PASS_THROUGH = ("BatchNormalization", "ReLU", "Activation", "MaxPooling2D", "AveragePooling2D", "Dropout",
                "GlobalAveragePooling2D", "DepthwiseConv2D")
CRITERIA = ("l1", "l2", "mean_activation", "apoz", "taylor")


@dataclasses.dataclass
class Space:
    """Channels that must be removed together: written by ``producers``, seen after ReLU at ``activation``."""
    id: int
    channels: int
    producers: list[str]
    activation: str | None = None  # the first ReLU/Activation on these channels (after the last Add, if tied)
    output: str | None = None      # where to read them when nothing activates them: the producer, or the Add
    prunable: bool = True


class ChannelGraph:
    """The channel spaces of a functional model, built from its config."""

    def __init__(self, model):
        self.model = model
        self.layers = {layer.name: layer for layer in model.layers}
        config = model.get_config()
        self.space_of: dict[str, int | None] = {}  # layer name -> the space of its output (None: input channels)
        self.flatten_input: dict[str, tuple[int, int, int, int | None]] = {}
        self.flat: dict[str, str] = {}  # layer name -> the Flatten whose output it carries (Flatten, Dropout...)
        self.inputs_of: dict[str, list[str]] = {}
        self.spaces: dict[int, Space] = {}
        self._parent: dict[int, int] = {}
        declared = config["output_layers"]  # a list of [layer, node, tensor], or a dict of them by output name
        outputs = {entry[0] for entry in (declared.values() if isinstance(declared, dict) else declared)}
        for entry in config["layers"]:
            name, kind = entry["name"], entry["class_name"]
            inbound = [node[0] for nodes in entry["inbound_nodes"] for node in nodes]
            self.inputs_of[name] = inbound
            spaces = [self.find(self.space_of[i]) for i in inbound]
            if kind in ("InputLayer", "Rescaling"):
                self.space_of[name] = None
            elif kind in PRODUCERS:
                if kind == "Conv2D" and self.layers[name].groups != 1:
                    raise PipelineError(f"structured pruning: grouped convolution {name} is not supported")
                sid = len(self._parent)
                self._parent[sid] = sid
                self.spaces[sid] = Space(sid, self.layers[name].output_shape[-1], [name], output=name)
                self.space_of[name] = sid
                if name in outputs:
                    self.spaces[sid].prunable = False
            elif kind in PASS_THROUGH:
                if kind == "DepthwiseConv2D" and self.layers[name].depth_multiplier != 1:
                    raise PipelineError(f"structured pruning: depthwise layer {name} has a depth multiplier")
                self.space_of[name] = spaces[0]
                if inbound[0] in self.flat:
                    self.flat[name] = self.flat[inbound[0]]
                if kind in ("ReLU", "Activation") and spaces[0] is not None and self.spaces[spaces[0]].activation is None:
                    self.spaces[spaces[0]].activation = name
            elif kind == "Add":
                self.space_of[name] = self.union(spaces, name)
            elif kind == "Flatten":
                h, w, c = self.layers[name].input_shape[1:]
                self.flatten_input[name] = (h, w, c, spaces[0])
                self.flat[name] = name
                self.space_of[name] = None
            else:
                raise PipelineError(f"structured pruning: layer {name} ({kind}) is not supported")
            if name in outputs and self.space_of[name] is not None:
                self.spaces[self.find(self.space_of[name])].prunable = False

    def find(self, sid: int | None) -> int | None:
        if sid is None:
            return None
        while self._parent[sid] != sid:
            sid = self._parent[sid]
        return sid

    def union(self, sids: list[int | None], add: str) -> int | None:
        if any(s is None for s in sids):  # tied to the input's channels: none of them can go
            for s in sids:
                if s is not None:
                    self.spaces[s].prunable = False
            return None
        root = sids[0]
        for other in sids[1:]:
            if other != root:
                self._parent[other] = root
                mine, theirs = self.spaces[root], self.spaces.pop(other)
                mine.producers += theirs.producers
                mine.prunable = mine.prunable and theirs.prunable
        self.spaces[root].activation, self.spaces[root].output = None, add  # what the next layers see is the sum
        return root

    def prunable(self) -> list[Space]:
        """Spaces whose channels may be removed, in the model's order."""
        return [s for s in self.spaces.values() if s.prunable and s.channels > 1]

    def space(self, name: str) -> int | None:
        return self.find(self.space_of[name])


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
    names = [s.activation or s.output for s in spaces]
    model = graph.model
    probe = keras.Model(model.inputs, [graph.layers[n].output for n in names] + [model.outputs])
    sums = [np.zeros(s.channels) for s in spaces]
    count = 0
    ce = keras.losses.SparseCategoricalCrossentropy(reduction="sum")
    # labels per model output, in the order of model.outputs (a dict of labels is keyed by output name)
    targets = [y[name] for name in model.output_names] if isinstance(y, dict) else [y]
    for start in range(0, len(x), batch_size):
        xb = tf.constant(x[start:start + batch_size], tf.float32)
        with tf.GradientTape() as tape:
            *acts, outs = probe(xb, training=False)
            if criterion == "taylor":
                outs = outs if isinstance(outs, list) else [outs]
                loss = tf.add_n([ce(t[start:start + batch_size], out) for t, out in zip(targets, outs)])
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
    fractions.update({known[name]: value for name, value in by_layer.items()})
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


def val_accuracies(model, data) -> dict[str, float]:
    """Validation accuracy per task (``{"label": ...}`` for a single-task model)."""
    from .train import accuracy

    found = accuracy(model, data.x_val, data.y_val, data.tasks)
    return found if isinstance(found, dict) else {"label": found}


def val_accuracy(model, data) -> float:
    """Validation accuracy (the mean over tasks for a multi-task model)."""
    return float(np.mean(list(val_accuracies(model, data).values())))


def within_budget(start: dict, row: dict, budget: float) -> bool:
    """True if no task's validation accuracy in ``row`` is more than ``budget`` below ``start``'s (history
    rows of :func:`iterate`): on a multi-task model, one task may not pay for the other."""
    return all(start["val_tasks"][t] - acc <= budget for t, acc in row["val_tasks"].items())


def sensitivity(model, data, criterion: str, ratios=(0.1, 0.25, 0.5, 0.75)) -> tuple[float, list[dict]]:
    """(validation accuracy of ``model``, one row per prunable layer group and ratio): the validation
    accuracy after removing that share of the group's channels alone, without retraining."""
    scores = rank(model, criterion, data.x_val, data.labels(data.y_val))
    base = val_accuracy(model, data)
    rows = []
    for space in ChannelGraph(model).prunable():
        for ratio in ratios:
            narrow = remove_channels(model, choose({space.id: scores[space.id]}, ratio))
            found = val_accuracy(narrow, data)
            rows.append({"layers": space.producers, "channels": space.channels, "ratio": ratio,
                         "removed": min(int(ratio * space.channels), space.channels - 1),
                         "val_accuracy": round(found, 5), "drop": round(base - found, 5)})
    return base, rows


def finetune(model, data, s, train_p, seed: int) -> None:
    """``s.finetune_epochs`` of training at ``s.learning_rate`` decayed along a cosine (the task
    weighting and soft-sharing penalty of ``train_p`` apply to a multi-task model)."""
    import math

    from .resume import keras_verbosity
    from .train import as_dataset, fit_target, seed_everything

    seed_everything(seed)
    steps = math.ceil(len(data.x_train) / s.batch_size)
    target = fit_target(model, data, train_p, keras.optimizers.schedules.CosineDecay(
        s.learning_rate, steps * s.finetune_epochs))
    target.fit(as_dataset(data.x_train, data.labels(data.y_train), s.batch_size, seed), epochs=s.finetune_epochs,
               verbose=keras_verbosity())


def iterate(model, data, s, train_p, seed: int, latency) -> tuple[object, list[dict]]:
    """Prune, fine-tune, repeat: each round removes ``s.fraction`` of the remaining channels (ranked by
    ``s.criterion``, per layer or globally; ``s.layer_fractions`` overrides the share of named layers,
    ``s.channel_multiple`` rounds the widths) and fine-tunes. Stops when ``s.target`` (MACs, params, or
    int8 p50 from ``latency(model)``) is at or below ``s.target_ratio`` of the start, when the
    validation accuracy (of any task) has dropped by more than ``s.accuracy_budget``, when no channel
    can be removed, or after ``s.max_rounds``.

    Returns the last model within the budget and one history row per round (round 0: the start).
    """
    from .costs import model_costs, totals

    def measure(m, round_: int) -> dict:
        cost = totals(model_costs(m))
        tasks = {t: round(a, 5) for t, a in val_accuracies(m, data).items()}
        return {"round": round_, "params": cost["params"], "macs": cost["macs"],
                "val_accuracy": round(float(np.mean(list(tasks.values()))), 5), "val_tasks": tasks,
                "p50_ms": latency(m)}

    start = measure(model, 0)
    history = [{**start, "within_budget": True}]
    kept, current = model, model
    for r in range(1, s.max_rounds + 1):
        scores = rank(current, s.criterion, data.x_val, data.labels(data.y_val))
        shares = layer_fractions(current, s.fraction, s.layer_fractions) if s.layer_fractions else s.fraction
        keep = choose(scores, shares, s.scope, s.channel_multiple)
        if all(len(keep[sid]) == len(found) for sid, found in scores.items()):
            print(f"structured: round {r}: no layer can lose more channels at these settings; stopping", flush=True)
            break
        narrow = remove_channels(current, keep)
        finetune(narrow, data, s, train_p, seed + r)
        row = measure(narrow, r)
        row["within_budget"] = within_budget(start, row, s.accuracy_budget)
        history.append(row)
        print(f"structured: round {r}: {row['params']:,} params, {row['macs']:,} MACs, val {row['val_accuracy']:.4f}, "
              f"p50 {row['p50_ms']:.3f} ms{'' if row['within_budget'] else ' (over the accuracy budget)'}", flush=True)
        if not row["within_budget"]:
            break
        kept = current = narrow
        key = {"macs": "macs", "params": "params", "latency": "p50_ms"}[s.target]
        if row[key] <= s.target_ratio * start[key]:
            break
    return kept, history


def one_shot(model, data, s, train_p, seed: int, like, criterion: str | None = None):
    """``model`` cut in one step to the per-layer widths of ``like`` (a model it was pruned to), keeping
    the best channels by ``criterion`` (default ``s.criterion``), then fine-tuned for
    ``s.finetune_epochs``: the baseline that iteration, and each criterion, are compared with."""
    import dataclasses

    criterion = criterion or s.criterion
    graph = ChannelGraph(model)
    scores = rank(model, criterion, data.x_val, data.labels(data.y_val))
    keep = {}
    for space in graph.prunable():
        width = like.get_layer(space.producers[0]).get_weights()[0].shape[-1]
        keep[space.id] = np.sort(np.argsort(scores[space.id], kind="stable")[space.channels - width:])
    narrow = remove_channels(model, keep)
    finetune(narrow, data, dataclasses.replace(s, criterion=criterion), train_p, seed)
    return narrow
