"""One CNN family, many registered variants.

A network is: stages of blocks, each stage ending in a downsampling step (max or average pooling,
a stride-2 last block, or none); then an optional 1x1 bottleneck convolution, a flatten or
global-average-pooling head, an optional hidden dense layer and the softmax. Stage ``i`` has
``width * stages[i]`` filters. The first block of the network is always a plain 3x3 convolution (a
depthwise filter over one grey channel would learn almost nothing); the others are of the kind
``block`` names, so variants that differ only in ``block`` or ``pooling`` are the same network
otherwise, which is what makes the comparison in ``mobiledeploy zoo`` fair.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import short
from . import register

MAX_WIDTH = 512  # filters in the first stage

BLOCKS = ("conv", "separable", "bottleneck", "inverted")
POOLING = ("max", "avg", "strided", "none")
HEADS = ("flatten", "gap")
SHARING = ("hard", "soft")


def stage_pooling(pooling, stages) -> list[str]:
    """``pooling`` is one kind for every stage or a list with one kind per stage."""
    return [pooling] * len(stages) if isinstance(pooling, str) else list(pooling)


def check(hp: dict[str, Any]) -> str | None:
    """Why these hyperparameters cannot build a network, or None."""
    # the upper bounds keep a typo from building a network that exhausts the machine
    positive_int = lambda v, most: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= most  # noqa: E731
    if not positive_int(hp["width"], MAX_WIDTH):
        return f"width must be an integer in [1, {MAX_WIDTH}], got {short(hp['width'])}"
    if hp["block"] not in BLOCKS:
        return f"block must be one of {', '.join(BLOCKS)}, got {short(hp['block'])}"
    stages = hp["stages"]
    if not isinstance(stages, (list, tuple)) or not 1 <= len(stages) <= 8 or not all(
            isinstance(m, (int, float)) and not isinstance(m, bool) and 0 < m <= 16 for m in stages):
        return f"stages must be a list of 1 to 8 width multipliers in (0, 16], got {short(stages)}"
    if not positive_int(hp["depth"], 16):
        return f"depth (blocks per stage) must be an integer in [1, 16], got {short(hp['depth'])}"
    pooling = hp["pooling"]
    kinds = stage_pooling(pooling, stages) if isinstance(pooling, (str, list, tuple)) else [None]
    if len(kinds) != len(stages) or any(k not in POOLING for k in kinds):
        return (f"pooling must be one of {', '.join(POOLING)}, or a list with one of them per stage "
                f"({len(stages)}), got {short(pooling)}")
    if hp["sharing"] not in SHARING:
        return f"sharing (multi-task data only) must be one of {', '.join(SHARING)}, got {short(hp['sharing'])}"
    if hp["head"] not in HEADS:
        return f"head must be one of {', '.join(HEADS)}, got {short(hp['head'])}"
    bottleneck = hp["bottleneck"]
    if not isinstance(bottleneck, (int, float)) or isinstance(bottleneck, bool) or not 0 <= bottleneck <= 16:
        return f"bottleneck (1x1 channels before the head, as a multiple of width; 0 = none) must be in [0, 16], " \
               f"got {short(bottleneck)}"
    if not isinstance(hp["dense"], int) or isinstance(hp["dense"], bool) or not 0 <= hp["dense"] <= 4096:
        return f"dense must be an integer in [0, 4096], got {short(hp['dense'])}"
    for key in ("ratio", "expansion"):
        if not positive_int(hp[key], 16):
            return f"{key} must be an integer in [1, 16], got {short(hp[key])}"
    return None


def cnn(input_shape, num_classes: int, *, name: str, dropout: float, width: int, block: str, stages, depth: int,
        pooling, bottleneck: float, head: str, dense: int, ratio: int, expansion: int, sharing: str,
        tasks: tuple[str, ...] = ()):
    """The network; with ``tasks``, one softmax head per task (named after it) and a dict output:
    ``sharing="hard"`` puts every head on one trunk, ``"soft"`` gives each task a tower of its own
    (layers prefixed ``<task>_``)."""
    from ..core.framework import keras
    from .blocks import (
        bottleneck_block,
        conv_block,
        inverted_residual_block,
        pool,
        separable_block,
    )

    make = {
        "conv": lambda x, f, n, s: conv_block(x, f, 3, n, s),
        "separable": separable_block,
        "bottleneck": lambda x, f, n, s: bottleneck_block(x, f, n, s, ratio=ratio),
        "inverted": lambda x, f, n, s: inverted_residual_block(x, f, n, s, expansion=expansion),
    }
    L = keras.layers

    def trunk(x, p: str):
        for i, (multiplier, kind) in enumerate(zip(stages, stage_pooling(pooling, stages)), start=1):
            filters = max(1, round(width * multiplier))
            for j in range(1, depth + 1):
                prefix = f"{p}stage{i}" if depth == 1 else f"{p}stage{i}_{j}"
                stride = 2 if kind == "strided" and j == depth else 1
                first = i == 1 and j == 1
                x = conv_block(x, filters, 3, prefix, stride) if first or block == "conv" else \
                    make[block](x, filters, prefix, stride)
            if kind in ("max", "avg"):
                x = pool(x, kind, f"{p}stage{i}")
        if bottleneck:
            x = conv_block(x, max(1, round(width * bottleneck)), 1, f"{p}bottleneck")
        return L.Flatten(name=f"{p}flatten")(x) if head == "flatten" else L.GlobalAveragePooling2D(name=f"{p}gap")(x)

    def classifier(x, p: str, out: str):
        if dense:
            x = L.Dropout(dropout, name=f"{p}head_dropout1")(x)
            x = L.Dense(dense, activation="relu", name=f"{p}head_dense")(x)
        x = L.Dropout(dropout, name=f"{p}head_dropout")(x)
        return L.Dense(num_classes, activation="softmax", name=out)(x)

    inputs = keras.Input(shape=input_shape, name="image")
    x = L.Rescaling(1.0 / 255, name="rescale")(inputs)
    if not tasks:
        outputs = classifier(trunk(x, ""), "", "predictions")
    elif sharing == "hard":
        shared = trunk(x, "")
        outputs = {task: classifier(shared, f"{task}_", task) for task in tasks}
    else:
        outputs = {task: classifier(trunk(x, f"{task}_"), f"{task}_", task) for task in tasks}
    return keras.Model(inputs, outputs, name=name)


def variant(name: str, doc: str, **overrides) -> None:
    """Register a variant of the family: the defaults below, with ``overrides``."""
    defaults = dict(width=32, block="conv", stages=[1, 2], depth=2, pooling="max", bottleneck=0.5,
                    head="flatten", dense=0, ratio=4, expansion=4, sharing="hard")
    register(name, cnn, doc, check, **{**defaults, **overrides})


variant("small_cnn", "The default: 3 conv stages (w, 2w, 2w; max pooling after the first two), 1x1 "
        "bottleneck to w, dense 128 head. 260k params, 6.0M MACs at width 32.",
        stages=[1, 2, 2], depth=1, pooling=["max", "max", "none"], bottleneck=1, dense=128)
variant("plain_cnn", "Plain conv+pool: 2 stages of two 3x3 convs (w, 2w), max pooling after each, 1x1 "
        "bottleneck to w/2, flatten, softmax. 74k params, 18.3M MACs at width 32.")
variant("plain_cnn_avg", "plain_cnn with average instead of max pooling.", pooling="avg")
variant("plain_cnn_strided", "plain_cnn without pooling: each stage's last conv has stride 2 instead.",
        pooling="strided")
variant("bottleneck_cnn", "plain_cnn with residual bottleneck blocks (1x1 reduce by `ratio`, 3x3, 1x1 "
        "expand, shortcut) after the first conv.", block="bottleneck", width=48)
variant("mobile_cnn", "plain_cnn with depthwise-separable blocks (3x3 depthwise, 1x1 pointwise) after "
        "the first conv.", block="separable", width=48)
variant("inverted_cnn", "plain_cnn with MobileNetV2 inverted residual blocks (1x1 expand by "
        "`expansion`, 3x3 depthwise, 1x1 linear projection) after the first conv.", block="inverted", width=24)
variant("tiny", "For tests: two stages of one 8-filter conv, max pooling, 1x1 bottleneck to 4, softmax.",
        width=8, depth=1, stages=[1, 1])
