"""Pictures of what a CNN learned: the first convolution's filters, and one test image's feature maps
after each stage (after its pooling, or its strided block)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..core.artifacts import OUT_DIR, model_stem, write_bytes
from ..core.errors import PipelineError
from ..core.framework import keras
from ..core.keras_io import load_model
from ..core.plots import png, pyplot

PICTURES_DIR = OUT_DIR / "pictures"
MAPS_PER_STAGE = 16


def first_conv(model):
    for layer in model.layers:
        if type(layer).__name__ == "Conv2D":
            return layer
    raise PipelineError(f"model {model.name} has no Conv2D layer to draw filters of")


def stage_outputs(model) -> list:
    """The last layer of each stage (``stage<i>`` or ``stage<i>_<j>`` names), in order."""
    last: dict[int, object] = {}
    for layer in model.layers:
        match = re.match(r"stage(\d+)(_|$)", layer.name)
        if match:
            last[int(match.group(1))] = layer
    if not last:
        raise PipelineError(f"model {model.name} has no layers named stage<i>_...; feature maps are drawn "
                            "for the pipeline's registered architectures")
    return [last[i] for i in sorted(last)]


def filters_png(model) -> bytes:
    """One tile per filter of the first convolution (averaged over input channels), each scaled to its own range."""
    plt = pyplot()
    layer = first_conv(model)
    kernel = layer.get_weights()[0].mean(axis=2)  # (kh, kw, filters)
    count = kernel.shape[-1]
    cols = min(8, count)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows + 0.5), dpi=100, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < count:
            ax.imshow(kernel[:, :, i], cmap="gray", interpolation="nearest")
    fig.suptitle(f"{model.name}: the {count} filters of {layer.name} ({kernel.shape[0]}x{kernel.shape[1]})", fontsize=9)
    return png(fig)


def features_png(model, image: np.ndarray, caption: str) -> bytes:
    """The image, then up to 16 feature maps after each stage, one row per stage, with its spatial size."""
    plt = pyplot()
    layers = stage_outputs(model)
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    maps = probe(image[None].astype(np.float32), training=False)
    maps = maps if isinstance(maps, list) else [maps]
    cols = MAPS_PER_STAGE + 1
    fig, axes = plt.subplots(len(layers), cols, figsize=(cols * 0.9, len(layers) * 1.05 + 0.5), dpi=100,
                             squeeze=False)
    for row, (layer, fmap) in enumerate(zip(layers, maps)):
        fmap = np.asarray(fmap)[0]
        for col, ax in enumerate(axes[row]):
            ax.axis("off")
            if col == 0:
                ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
                ax.set_title(f"{layer.name}\n{fmap.shape[0]}x{fmap.shape[1]}x{fmap.shape[2]}", fontsize=6)
            elif col - 1 < fmap.shape[-1]:
                ax.imshow(fmap[:, :, col - 1], cmap="viridis", interpolation="nearest")
    fig.suptitle(f"{model.name}: feature maps of {caption} after each stage", fontsize=9)
    return png(fig)


def samples_png(data, count: int) -> bytes:
    """The first ``count`` training images in a grid, each titled with its label (per task)."""
    plt = pyplot()
    count = min(count, len(data.x_train))
    cols = min(8, count)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.7 * rows + 0.4), dpi=100, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= count:
            continue
        image = data.x_train[i]
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
        labels = data.y_train[i] if data.tasks else [data.y_train[i]]
        ax.set_title("\n".join(data.class_names[int(label)] for label in labels), fontsize=6)
    tasks = f" (labels: {', '.join(data.tasks)})" if data.tasks else ""
    fig.suptitle(f"{data.source.split(' (')[0]}: {count} training images{tasks}", fontsize=9)
    return png(fig)


def samples(data, count: int, name: str, out_dir: Path = PICTURES_DIR) -> Path:
    path = out_dir / f"{name}.samples.png"
    write_bytes(path, samples_png(data, count))
    return path


def pictures(model_path: Path, image: np.ndarray, caption: str, out_dir: Path = PICTURES_DIR) -> list[Path]:
    model = load_model(model_path)
    stem = model_stem(model_path)
    written = []
    for kind, blob in (("filters", filters_png(model)), ("features", features_png(model, image, caption))):
        path = out_dir / f"{stem}.{kind}.png"
        write_bytes(path, blob)
        written.append(path)
    return written
