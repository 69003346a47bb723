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
