"""Drawing to PNG bytes with matplotlib (no display needed): the one home of the project's plots."""

from __future__ import annotations

import io


def pyplot():
    """matplotlib.pyplot drawing to files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return buf.getvalue()


def scatter_png(points: list[tuple[str, float, float, float, str]], xlabel: str, ylabel: str, title: str,
                log_x: bool = True) -> bytes:
    """A labelled scatter plot; ``points`` are (label, x, y, marker area, note). PNG bytes."""
    fig, ax = pyplot().subplots(figsize=(8, 5.5), dpi=110)
    for name, x, y, area, note in points:
        ax.scatter(x, y, s=area, alpha=0.55)
        ax.annotate(f"{name}\n{note}", (x, y), textcoords="offset points", xytext=(8, 6), fontsize=7)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return png(fig)


def curves_png(histories: dict[str, dict[str, list[float]]]) -> bytes:
    """Training curves, one column per model (``label -> Keras history``): accuracy and loss per
    epoch on the training and validation data."""
    plt = pyplot()
    fig, axes = plt.subplots(2, len(histories), figsize=(4.2 * len(histories), 6), dpi=100, squeeze=False)
    for col, (label, history) in enumerate(histories.items()):
        for row, metric in enumerate(("accuracy", "loss")):
            ax = axes[row][col]
            for key, style in ((metric, "-"), (f"val_{metric}", "--")):
                values = history.get(key) or []
                ax.plot(range(1, len(values) + 1), values, style, marker="o", markersize=3,
                        label="validation" if key.startswith("val_") else "training")
            ax.set_title(f"{label}: {metric}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def confusion_png(matrices: list[tuple[str, list[list[int]]]], class_names: list[str]) -> bytes:
    """One confusion matrix per (title, matrix), rows the true class and columns the predicted one,
    each row shaded by its share so that a small class reads like a large one."""
    import numpy as np

    plt = pyplot()
    cols = min(4, len(matrices))
    rows = -(-len(matrices) // cols)
    # up to 256 classes (an image folder's limit): panels stop growing at 8 inches, names at 30 classes
    size = min(1.2 + 0.32 * len(class_names), 8.0)
    named = len(class_names) <= 30
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.3), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    ticks = range(len(class_names))
    for i, (ax, (title, matrix)) in enumerate(zip(axes.flat, matrices)):
        counts = np.asarray(matrix, dtype=float)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.axis("on")
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        # class names along the left column and under the lowest panel of each column only: every panel
        # has the same classes, and thousands of labels made drawing the figure take seconds
        left, lowest = i % cols == 0, i + cols >= len(matrices)
        ax.set_xticks(ticks, class_names if named and lowest else [], rotation=90, fontsize=6)
        ax.set_yticks(ticks, class_names if named and left else [], fontsize=6)
        if lowest:
            ax.set_xlabel("predicted", fontsize=7)
        if left:
            ax.set_ylabel("true", fontsize=7)
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    return png(fig)


def layer_error_png(series: dict[str, list[tuple[str, float]]]) -> bytes:
    """Error (%) at each op, one line per file (``name -> [(layer, error)]`` in execution order), the
    layers of the first file along the axis."""
    plt = pyplot()
    first = next(iter(series.values()))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(first) + 2), 4.5), dpi=100)
    for name, points in series.items():
        ax.plot(range(len(points)), [100 * error for _, error in points], marker="o", markersize=3, label=name)
    ax.set_xticks(range(len(first)), [layer[:28] for layer, _ in first], rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("error against float32 (%)")
    ax.set_title("Quantization error accumulated along the graph", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)
