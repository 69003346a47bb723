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

from ...core.errors import PipelineError

PRODUCERS = ("Conv2D", "Dense")


PASS_THROUGH = ("BatchNormalization", "ReLU", "Activation", "MaxPooling2D", "AveragePooling2D", "Dropout",
                "GlobalAveragePooling2D", "DepthwiseConv2D", "ZeroPadding2D", "Cropping2D", "GlobalMaxPooling2D",
                "Softmax")


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
            if kind in ("InputLayer", "Rescaling") or (kind == "Normalization" and spaces == [None]):
                self.space_of[name] = None  # the input's channels (a Normalization there scales the pixels)
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
                first = spaces[0] is not None and self.spaces[spaces[0]].activation is None
                if kind in ("ReLU", "Activation") and first:
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
        if isinstance(declared, dict) and len(declared) > 1:
            self.tie_towers(list(declared))

    def tie_towers(self, tasks: list[str]) -> None:
        """Soft parameter sharing: the corresponding layers of the task towers (``<task>_<rest>``, as in
        :func:`pipeline.training.multitask.tower_groups`) lose the same channels, so the towers keep
        equal widths and the penalty on their distance stays defined. Activation-based criteria rank
        a tied space on the first task's tower."""
        by_rest: dict[str, list[int]] = {}
        for name, sid in self.space_of.items():
            for task in tasks:
                if sid is not None and name.startswith(f"{task}_") and type(self.layers[name]).__name__ in PRODUCERS:
                    by_rest.setdefault(name[len(task) + 1:], []).append(sid)
        for sids in by_rest.values():
            roots = list(dict.fromkeys(self.find(s) for s in sids))
            if len(sids) == len(tasks) and len({self.spaces[r].channels for r in roots}) == 1:
                for other in roots[1:]:
                    self._parent[other] = roots[0]
                    mine, theirs = self.spaces[roots[0]], self.spaces.pop(other)
                    mine.producers += theirs.producers
                    mine.prunable = mine.prunable and theirs.prunable

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
