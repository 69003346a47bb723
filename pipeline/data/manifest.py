"""Labelled images listed in a CSV manifest: a ``path`` column, then one label column (one task) or
one column per task (a multi-task model, one head per column; every task has the same classes).
Paths are relative to ``data.dir`` (default: the manifest's folder). Splits are hashed on each path as
written, like an image folder's."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from ..core.errors import PipelineError, short
from ..core.params import DataParams
from .folder import MAX_CLASSES, decode_split, sniff

MAX_BYTES = 256 << 20  # a list of paths and labels, not the images
TASK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")  # a task names a model output and its layers


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """(label columns, rows of [path, labels...]) of the manifest; one line for what is not a manifest."""
    try:
        if not path.is_file():
            raise PipelineError(f"data.manifest {path}: {'not a file' if path.exists() else 'not found'}")
        if path.stat().st_size > MAX_BYTES:
            raise PipelineError(f"data.manifest {path}: larger than {MAX_BYTES >> 20} MiB; not a manifest")
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: the byte-order mark spreadsheets write
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PipelineError(f"data.manifest {path}: cannot read it as UTF-8 CSV ({exc.__class__.__name__})") from None
    if not rows or [c.strip().lower() for c in rows[0][:1]] != ["path"] or len(rows[0]) < 2:
        raise PipelineError(f"data.manifest {path}: the first line must be a header 'path,<label column>[,...]' "
                            f"(one label column, or one per task); got {short(rows[0] if rows else '')}")
    columns = [c.strip() for c in rows[0][1:]]
    for column in columns:
        if len(columns) > 1 and not TASK_NAME.fullmatch(column):
            raise PipelineError(f"data.manifest {path}: column {short(column)} cannot name a task (a letter, then up "
                                "to 39 letters, digits or '_')")
    if len(set(columns)) != len(columns):
        raise PipelineError(f"data.manifest {path}: a column is named twice")
    body = [r for r in rows[1:] if any(cell.strip() for cell in r)]
    for number, row in enumerate(rows[1:], start=2):
        if any(cell.strip() for cell in row) and (len(row) != len(columns) + 1 or not all(c.strip() for c in row)):
            raise PipelineError(f"data.manifest {path}, line {number}: expected {len(columns) + 1} non-empty "
                                f"cells (path and {', '.join(columns)}), got {short(row)}")
    return columns, [[cell.strip() for cell in row] for row in body]


def load_manifest(params: DataParams, seed: int):
    if not params.manifest:
        raise PipelineError("data.source is 'manifest' but data.manifest is not set; --set data.manifest=FILE.csv")
    manifest = Path(params.manifest)
    columns, rows = read_rows(manifest)
    wanted = params.tasks or columns
    missing = [t for t in wanted if t not in columns]
    if missing:
        raise PipelineError(f"data.tasks: {short(missing[0])} is not a column of {manifest} ({', '.join(columns)})")
    picked = [columns.index(t) for t in wanted]
    root = Path(params.dir) if params.dir else manifest.parent
    seen: dict[str, int] = {}
    paths = []
    for number, row in enumerate(rows, start=2):
        if row[0] in seen:
            raise PipelineError(f"data.manifest {manifest}, line {number}: {short(row[0])} is listed twice (also "
                                "at an earlier line)")
        seen[row[0]] = number
        image = root / row[0]
        if not image.is_file():
            raise PipelineError(f"data.manifest {manifest}, line {number}: {image} "
                                f"{'is not a file' if image.exists() else 'not found'}")
        if sniff(image) is None:
            raise PipelineError(f"data.manifest {manifest}, line {number}: {image} is not an image")
        paths.append(image)
    if not rows:
        raise PipelineError(f"data.manifest {manifest}: lists no images")
    labels = [[row[1 + i] for i in picked] for row in rows]
    per_task = [sorted({r[k] for r in labels}) for k in range(len(picked))]
    names = per_task[0]
    for task, classes in zip(wanted, per_task):
        if classes != names:
            raise PipelineError(f"data.manifest {manifest}: task {task}'s classes ({short(classes)}) differ from "
                                f"{wanted[0]}'s ({short(names)}); every task here has the same classes")
    if not 2 <= len(names) <= MAX_CLASSES:
        raise PipelineError(f"data.manifest {manifest}: {len(names)} class(es); a classifier here has 2 to "
                            f"{MAX_CLASSES}")
    index = {name: i for i, name in enumerate(names)}
    y = np.asarray([[index[v] for v in r] for r in labels], np.uint8)
    tasks = tuple(wanted) if len(columns) > 1 else ()
    y = y if tasks else y[:, 0]
    keys = [row[0] for row in rows]
    return (*decode_split(paths, keys, y, names, tasks, params, seed), names, tasks, f"manifest ({manifest})")
