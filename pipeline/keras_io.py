"""Loading and saving Keras models safely, with the record beside them."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from .artifacts import save_with_record
from .errors import PipelineError


def load_model(path: Path):
    """Load a ``.keras`` or ``.h5`` model without compiling it and without running arbitrary code.

    ``safe_mode=True`` makes Keras refuse to deserialise lambda layers (their bytecode would run on
    load). Anything that is not a loadable Keras model becomes a PipelineError naming the file.
    """
    from .tf import keras, tfmot

    if not path.is_file():
        raise PipelineError(f"{path} not found")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise PipelineError(f"{path}: not a Keras model file (a .keras file is a zip archive)")
    if path.suffix not in (".keras", ".h5"):
        raise PipelineError(f"{path}: unsupported model file; expected .keras or .h5")
    try:
        with tfmot.sparsity.keras.prune_scope():
            return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for bad files; all mean "cannot load"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise PipelineError(f"{path}: cannot load Keras model: {first[:300]}") from None


def save_model(model, path: Path, record: dict[str, Any]) -> None:
    save_with_record(path, lambda tmp: model.save(tmp), record)


def check_fits_data(model, data, path: Path) -> None:
    """Refuse a model whose input shape, outputs (one per task) or number of classes do not match the dataset."""
    expected = tuple(model.input_shape[1:])
    if expected != data.input_shape:
        raise PipelineError(f"{path}: model input shape {expected} does not match the data's {data.input_shape}")
    names = list(model.output_names)
    if data.tasks and sorted(names) != sorted(data.tasks):
        raise PipelineError(f"{path}: model outputs ({', '.join(names)}) are not the data's tasks "
                            f"({', '.join(data.tasks)})")
    if not data.tasks and len(names) != 1:
        raise PipelineError(f"{path}: model has {len(names)} outputs ({', '.join(names)}); the data has one task")
    for name, output in zip(names, model.outputs):
        if output.shape[-1] != data.num_classes:
            raise PipelineError(f"{path}: output {name} predicts {output.shape[-1]} classes, the data has "
                                f"{data.num_classes}")
