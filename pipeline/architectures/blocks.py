"""The building blocks of the CNN family, as functions on Keras tensors with stable layer names.

Every block takes ``stride``: 2 halves the feature map (rounding up, "same" padding), which is how a
stage downsamples when its pooling is ``strided``.
"""

from __future__ import annotations

from ..core.framework import keras

L = keras.layers


def _bn(x, name: str):
    # momentum 0.9, not 0.99: moving statistics must settle within a few hundred steps on small data
    return L.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)


def conv_block(x, filters: int, kernel: int, name: str, stride: int = 1):
    """Conv (no bias: batch norm supplies it) -> BatchNorm -> ReLU."""
    x = L.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    return L.ReLU(name=f"{name}_relu")(_bn(x, name))


def separable_block(x, filters: int, name: str, stride: int = 1):
    """Depthwise-separable convolution: 3x3 depthwise -> BN -> ReLU -> 1x1 pointwise -> BN -> ReLU.

    Two layers, not one SeparableConv2D, so that each has its own batch norm (as in MobileNetV1) and
    the pointwise convolution is an ordinary Conv2D that TF-MOT prunes like any other.
    """
    x = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = L.ReLU(name=f"{name}_dw_relu")(_bn(x, f"{name}_dw"))
    x = L.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
    return L.ReLU(name=f"{name}_pw_relu")(_bn(x, f"{name}_pw"))


def bottleneck_block(x, filters: int, name: str, stride: int = 1, ratio: int = 4):
    """Residual bottleneck (ResNet-50 style): 1x1 reduce to filters/ratio -> 3x3 -> 1x1 expand, plus a
    shortcut (identity, or a strided 1x1 projection when the shape changes), then ReLU."""
    inner = max(1, filters // ratio)
    y = conv_block(x, inner, 1, f"{name}_reduce")
    y = conv_block(y, inner, 3, f"{name}_mid", stride)
    y = L.Conv2D(filters, 1, use_bias=False, name=f"{name}_expand_conv")(y)
    y = _bn(y, f"{name}_expand")
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = L.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj_conv")(x)
        shortcut = _bn(shortcut, f"{name}_proj")
    return L.ReLU(name=f"{name}_relu")(L.Add(name=f"{name}_add")([shortcut, y]))


def inverted_residual_block(x, filters: int, name: str, stride: int = 1, expansion: int = 4):
    """MobileNetV2 inverted residual: 1x1 expand (x expansion) -> ReLU6 -> 3x3 depthwise -> ReLU6 ->
    1x1 linear projection; the shortcut exists only when input and output shapes match."""
    channels = x.shape[-1]
    y = L.Conv2D(channels * expansion, 1, use_bias=False, name=f"{name}_expand_conv")(x)
    y = L.ReLU(6.0, name=f"{name}_expand_relu")(_bn(y, f"{name}_expand"))
    y = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(y)
    y = L.ReLU(6.0, name=f"{name}_dw_relu")(_bn(y, f"{name}_dw"))
    y = L.Conv2D(filters, 1, use_bias=False, name=f"{name}_project_conv")(y)
    y = _bn(y, f"{name}_project")  # linear: a ReLU here would destroy information in the narrow output
    if stride == 1 and channels == filters:
        y = L.Add(name=f"{name}_add")([x, y])
    return y


def pool(x, kind: str, name: str):
    """Halve the feature map (rounding up for odd sizes) with max or average pooling."""
    layer = {"max": L.MaxPooling2D, "avg": L.AveragePooling2D}[kind]
    return layer(pool_size=2, padding="same", name=f"{name}_{kind}pool")(x)
