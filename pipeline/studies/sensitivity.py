"""`mobiledeploy sensitivity`: validation accuracy after removing a share of one layer's channels alone."""

from __future__ import annotations

from pathlib import Path

from ..compression.channels.search import sensitivity
from ..core.artifacts import (
    OUT_DIR,
    check_writable,
    model_stem,
    place,
    write_bytes,
    write_text,
)
from ..core.params import Params
from ..core.plots import png, pyplot
from ..core.tables import markdown_table, pct
from ..stages.base import load_parent


def sensitivity_report(params: Params, model_path: Path | None = None) -> Path:
    """Validation accuracy after removing 10/25/50/75% of each layer's channels alone (no retraining);
    writes ``tflite_out/<stem>.sensitivity.md`` and ``.png``."""
    source, model, data = load_parent(params, model_path, refuse=("prune", "shrink"), head=False)
    stem = model_stem(source)
    out = place(OUT_DIR / f"{stem}.sensitivity.md", source, params.name)
    check_writable(out)
    base, rows = sensitivity(model, data, params.structured.criterion)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(" + ".join(r["layers"]), []).append(r)
    ratios = sorted({r["ratio"] for r in rows})
    table = markdown_table(["layer", "channels", *(f"{r:.0%}" for r in ratios)],
                           [[name, found[0]["channels"], *(f"{pct(r['val_accuracy'])} ({r['removed']})" for r in found)]
                            for name, found in groups.items()])
    intro = (f"# Sensitivity of {stem}\n\nValidation accuracy (%) after removing a share of one layer's channels "
             f"(ranked by {params.structured.criterion}), the rest untouched, no retraining; in brackets, how many "
             f"channels that share removes (\"-\": none, in a layer too small for it). Unpruned: {pct(base)}.\n\n")
    write_text(out, intro + table)
    write_bytes(out.with_suffix(".png"), sensitivity_png(groups, base))
    print(f"sensitivity: {len(groups)} layers -> {out}", flush=True)
    return out


def sensitivity_png(groups: dict[str, list[dict]], base: float) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for name, found in groups.items():
        measured = [r for r in found if r["val_accuracy"] is not None]  # a share that removed nothing: no point
        ax.plot([100 * r["removed"] / r["channels"] for r in measured], [100 * r["val_accuracy"] for r in measured],
                marker="o", label=name)
    ax.axhline(100 * base, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("channels removed from this layer alone (%)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Per-layer sensitivity (no retraining)")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return png(fig)
