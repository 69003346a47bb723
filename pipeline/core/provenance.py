"""What the records behind an artefact say it was made with, re-derived from the disk.

A ``.tflite`` file's record names its Keras model; that model's record (prune, shrink) names its
parent, down to the trained model, whose record holds the name, seed, data, model and training
params. :func:`claimed` walks that chain and returns every params value the records commit to, so
``validate`` can refuse files made with other params than the ones it is given (a ``--set``
experiment is never measured as if the params file had made it) and ``check`` can compare the
report's params with the records instead of believing the report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..export.report import BOUND, UNBOUND, flatten
from .artifacts import file_hash, read_record

MAX_CHAIN = 8  # tflite -> pruned -> shrunk -> trained is 4; more means a loop or a hand-made chain


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system, a folder we may not enter
        return False


def chain(path: Path, root: str | None = None) -> tuple[dict[str, tuple[Any, str]], bool]:
    """(claims, complete): flattened params key -> (value, the record that says so), for the bound
    params (see :data:`pipeline.export.report.BOUND`, less its ``UNBOUND``) that the records behind ``path``
    commit to, the record nearest to ``path`` winning where two say the same key; and whether the
    chain of records reaches a trained model's record, or the ready-made model ``root`` (``model.file``,
    which has none), within MAX_CHAIN links."""
    claims: dict[str, tuple[Any, str]] = {}
    current: Path | None = path
    for _ in range(MAX_CHAIN):
        if current is None:
            break
        if root is not None and os.path.realpath(current) == os.path.realpath(root):
            return claims, True
        record = read_record(current) if _is_file(current) else None
        if not record:
            break
        used = record.get("params") if isinstance(record.get("params"), dict) else {}
        found: dict[str, Any] = {}
        if record.get("stage") == "convert":  # its keys are flat; those of convert params go under convert.
            for key in ("representative_samples", "calibration_source", "calibration_stratified"):
                if key in used:
                    found[f"convert.{key}"] = used[key]
            found.update(flatten({k: used[k] for k in ("data", "input") if isinstance(used.get(k), dict)}))
            parent = record.get("keras_model")
        else:  # train, prune, shrink: their params are sections of the params file
            found.update(flatten({k: v for k, v in used.items() if k in BOUND}))
            if record.get("stage") == "train" and record.get("seed") is not None:
                found["seed"] = record["seed"]
            parent = record.get("parent")
        source = f"{current}.json"
        for key, value in found.items():
            if key not in UNBOUND:
                claims.setdefault(key, (value, source))
        if record.get("stage") == "train":
            return claims, True
        current = Path(parent) if isinstance(parent, str) and parent else None
    return claims, False


def stale_link(path: Path) -> tuple[Path, Path] | None:
    """(artefact, parent) for the first artefact in the chain behind ``path`` that was made from
    another version of its parent than the one on disk now (the parent was re-made since: another
    seed, other params), or None."""
    current: Path | None = path
    for _ in range(MAX_CHAIN):
        record = read_record(current) if current is not None and _is_file(current) else None
        if not record:
            return None
        parent = record.get("keras_model") if record.get("stage") == "convert" else record.get("parent")
        inputs = record.get("inputs")
        made_from = inputs.get("model") if isinstance(inputs, dict) else None
        if not isinstance(parent, str) or not parent:
            return None
        parent_path = Path(parent)
        if isinstance(made_from, str) and _is_file(parent_path) and file_hash(parent_path) != made_from:
            return current, parent_path
        current = parent_path
    return None


def claimed(path: Path) -> dict[str, tuple[Any, str]]:
    """The params the records behind ``path`` commit to (see :func:`chain`); empty without records."""
    return chain(path)[0]


def disagreements(path: Path, flat_params: dict[str, Any]) -> list[tuple[str, Any, Any, str]]:
    """(key, what the records say, what ``flat_params`` says, record) for every bound key on which the
    records behind ``path`` and the given (flattened) params differ."""
    return [(key, value, flat_params.get(key), source) for key, (value, source) in claimed(path).items()
            if key in flat_params and flat_params[key] != value]
