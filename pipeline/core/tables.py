"""The one home of tables: Markdown for reports and studies, aligned plain text for the terminal,
and the few cell formats they share."""

from __future__ import annotations

from typing import Any, Sequence


def pct(value: float | None, digits: int = 2) -> str:
    """A share as a percentage without the sign (0.9274 -> "92.74"); "-" for nothing."""
    return "-" if value is None else f"{100 * value:.{digits}f}"


def pct_sd(stats: dict, key: str) -> str:
    """``stats[key]`` as :func:`pct`, followed by "± sd" when ``stats`` holds its standard deviation
    (``<key>_sd``, over the seeds of a study)."""
    spread = stats.get(f"{key}_sd")
    return pct(stats[key]) if spread is None else f"{pct(stats[key])} ± {pct(spread)}"


def count(value: int | None) -> str:
    """An integer with thousands separators; "-" for nothing."""
    return "-" if value is None else f"{value:,}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub-flavoured Markdown table. ``align`` has one letter per column, ``l`` or ``r``; by
    default the first column is left-aligned and the others (numbers) right-aligned."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header) or any(len(row) != len(header) for row in rows):
        raise ValueError("every row of a table needs one cell per column")
    lines = ["| " + " | ".join(header) + " |", "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def text_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells (the first is the header) as aligned plain text."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
