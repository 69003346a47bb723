"""Stage 3: Keras models -> TFLite in float32, float16, dynamic-range int8 and full-integer int8."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.artifacts import (
    file_hash,
    make_record,
    model_stem,
    place,
    pruned_path,
    read_record,
    require,
    tflite_path,
    trained_path,
)
from ..core.keras_io import check_fits_data, load_model
from ..core.params import Params
from ..data import Dataset, load_dataset
from ..export.tflite import CALIBRATED, representative_data, to_tflite
from .base import make, refuse_foreign


def sources(params: Params, model_path: Path | None) -> list[Path]:
    if model_path is not None:
        return [model_path]
    own = [require(trained_path(params.name), "mobiledeploy train"),
           require(pruned_path(params.name), "mobiledeploy prune")]
    for path in own:  # what the config ships must be what these params make
        refuse_foreign(path, params)
    return own


def convert(params: Params, model_path: Path | None = None) -> list[Path]:
    """Convert the trained and pruned models (or a user's ``model_path``) to every format in params."""
    paths = sources(params, model_path)
    models = [(path, load_model(path)) for path in paths]  # fail on a bad file before any work
    needs_data = any(fmt in CALIBRATED for fmt in params.convert.formats)
    data = load_dataset(params.data, params.seed) if needs_data else None
    representative = (representative_data(data.x_train, params.convert.representative_samples, params.seed)
                      if data is not None else None)
    written = []
    for path, model in models:
        pruned = (read_record(path) or {}).get("stage") == "prune"
        if data is not None:
            check_fits_data(model, data, path)
        for fmt in params.convert.formats:
            out = place(tflite_path(model_stem(path), fmt), path, params.name)
            convert_file(model, path, fmt, out, params, data, representative, pruned=pruned)
            written.append(out)
    return written


def convert_file(model, path: Path, fmt: str, out: Path, params: Params, data: Dataset | None,
                 representative: np.ndarray | None, **extra) -> Path:
    """Convert ``model`` (loaded from ``path``) to ``out`` unless ``out`` is current; ``extra`` goes
    into the record. ``data`` and ``representative`` are needed for full-integer int8 only."""
    used: dict = {"format": fmt}
    inputs = {"model": file_hash(path)}
    if fmt in CALIBRATED:  # only these read data (the calibration images)
        used.update(representative_samples=params.convert.representative_samples, data=params.section("data"))
        inputs["dataset"] = data.fingerprint
    planned = make_record("convert", used, params.seed, inputs, keras_model=str(path), model=model_stem(path),
                          format=fmt, **extra)

    def work(_state: Path):
        blob = to_tflite(model, fmt, representative if fmt in CALIBRATED else None)
        print(f"convert: {path} -> {out} ({len(blob):,} bytes)", flush=True)
        return blob, None

    make(out, planned, work)
    return out
