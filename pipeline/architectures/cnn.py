"""Plain CNNs: convolution blocks, pooling that halves the map per stage, a 1x1 bottleneck, a dense head."""

from __future__ import annotations

from typing import Sequence

from . import register


def conv_block(x, filters: int, kernel: int, name: str, stride: int = 1):
    """Conv (no bias: batch norm supplies it) -> BatchNorm -> ReLU, with stable layer names."""
    from ..tf import keras

    L = keras.layers
    x = L.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    # momentum 0.9, not 0.99: moving statistics must settle within a few hundred steps on small data
    x = L.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return L.ReLU(name=f"{name}_relu")(x)


def pool(x, kind: str | None, name: str):
    """Halve the feature map (rounding up for odd sizes) with max or average pooling; None keeps it."""
    from ..tf import keras

    if kind is None:
        return x
    layer = {"max": keras.layers.MaxPooling2D, "avg": keras.layers.AveragePooling2D}[kind]
    return layer(pool_size=2, padding="same", name=f"{name}_{kind}pool")(x)


def cnn(input_shape, num_classes: int, *, stages: Sequence[tuple[int, str | None]], bottleneck: int,
        dense: int, dropout: float, name: str):
    """``stages``: (filters, pooling) per 3x3 conv stage; then a 1x1 bottleneck and the head."""
    from ..tf import keras

    L = keras.layers
    inputs = keras.Input(shape=input_shape, name="image")
    x = L.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i, (filters, kind) in enumerate(stages, start=1):
        x = conv_block(x, filters, 3, f"stage{i}")
        x = pool(x, kind, f"stage{i}")
    x = conv_block(x, bottleneck, 1, "bottleneck")
    x = L.Flatten(name="flatten")(x)
    if dense:
        x = L.Dropout(dropout, name="head_dropout1")(x)
        x = L.Dense(dense, activation="relu", name="head_dense")(x)
    x = L.Dropout(dropout, name="head_dropout")(x)
    outputs = L.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


@register("small_cnn", "3 conv stages (w, 2w, 2w; max pooling after the first two), 1x1 bottleneck to w, "
                       "dense 128 head. ~260k params at width 32.")
def small_cnn(input_shape, num_classes, *, width, dropout):
    return cnn(input_shape, num_classes, stages=[(width, "max"), (2 * width, "max"), (2 * width, None)],
               bottleneck=width, dense=128, dropout=dropout, name="small_cnn")


@register("tiny", "For tests: two 8-filter conv stages with max pooling, 1x1 bottleneck to 4, no hidden "
                  "dense layer. Ignores width.")
def tiny(input_shape, num_classes, *, width, dropout):
    return cnn(input_shape, num_classes, stages=[(8, "max"), (8, "max")], bottleneck=4, dense=0,
               dropout=dropout, name="tiny")
