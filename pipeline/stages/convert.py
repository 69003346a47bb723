"""Stage 3: Keras models -> TFLite in float32, float16, dynamic-range int8 and full-integer int8 (and
int16x8 or int8 with named layers in float, if asked); a quantization-aware model -> int8 only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..compression.qat import quantized_layers
from ..core.artifacts import (
    chain,
    derived,
    make_record,
    model_stem,
    read_record,
    require,
    tflite_path,
    write_text,
)
from ..core.contract import logits_by_output
from ..core.keras_io import check_fits_data
from ..core.model_files import load_any, path_hash
from ..core.params import Params
from ..data import Dataset, load_dataset
from ..export.micro import MICRO_FORMATS, c_pair, c_paths
from ..export.sidecar import write_sidecar
from ..export.tflite import AEQ_RECIPES, CALIBRATED, Exporter, representative_data
from .base import fed, make, refuse_foreign, require_model_file


def sources(params: Params, model_path: Path | None) -> list[Path]:
    if model_path is not None:
        return [model_path]
    own = []
    for stage, path in chain(params).items():
        own.append(require_model_file(path) if stage == "train" and params.model.file else
                   require(path, f"mobiledeploy {stage}"))
    for path in own:  # what the config ships must be what these params make
        refuse_foreign(path, params)
    return own


def convert(params: Params, model_path: Path | None = None) -> list[Path]:
    """Convert the config's models, stage by stage (or a user's ``model_path``), to every format in
    params; a quantization-aware model to int8."""
    paths = sources(params, model_path)
    data = load_dataset(params.data, params.seed)
    models = []
    for path in paths:  # fail on a bad file, or one without an input contract, before any work
        model = load_any(path)
        check_fits_data(model, data, path)
        models.append((path, model, fed(params, model.model if model.kind != "saved_model" else None, data, path)))
    written = []
    for path, model, data in models:
        formats = params.convert.formats
        if model.keras is not None and quantized_layers(model.keras):  # fake quantization: int8 it is
            formats = ["int8"]
        print(f"convert: {path}: input {data.contract.describe()}", flush=True)
        representative = (representative_data(data, params.convert, params.seed)
                          if any(fmt in CALIBRATED for fmt in formats) else None)
        logits = logits_by_output(model.predict(data.contract.apply(data.x_train[:32])))  # for the sidecar
        pruned = (read_record(path) or {}).get("stage") == "prune"
        with Exporter(model) as exporter:  # exported once for all its formats
            for fmt in formats:
                out = derived(lambda stem: tflite_path(stem, fmt), path, params)  # noqa: B023 (called at once)
                convert_file(exporter, path, fmt, out, params, data, representative, pruned=pruned)
                write_sidecar(out, data.contract, data.input_shape, data.class_names, data.tasks, logits)
                written.append(out)
                if fmt in MICRO_FORMATS:
                    write_c_pair(out)
    return written


def convert_file(exporter: Exporter, path: Path, fmt: str, out: Path, params: Params, data: Dataset,
                 representative: np.ndarray | None, **extra) -> Path:
    """Convert the model of ``exporter`` (from ``path``, fed by ``data.contract``) to ``out`` unless ``out``
    is current; ``extra`` goes into the record. ``representative``: for full-integer int8."""
    used: dict = {"format": fmt, "input": params.section("input")}
    inputs = {"model": path_hash(path)}
    if fmt in CALIBRATED:  # only these read data (the calibration images)
        c = params.convert
        used.update(representative_samples=c.representative_samples, calibration_source=c.calibration_source,
                    calibration_stratified=c.calibration_stratified, data=params.section("data"))
        inputs["dataset"] = data.fingerprint
    if fmt in AEQ_RECIPES:
        used.update(backend="ai-edge-quantizer", recipe=AEQ_RECIPES[fmt])
    float_layers = tuple(params.convert.float_layers) if fmt == "int8_mixed" else ()
    if float_layers:
        used["float_layers"] = list(float_layers)
    planned = make_record("convert", used, params.seed, inputs, keras_model=str(path), model=model_stem(path),
                          format=fmt, input=data.contract.to_dict(), **extra)

    def work(_state: Path):
        blob = exporter.convert(fmt, representative if fmt in CALIBRATED else None, float_layers)
        print(f"convert: {path} -> {out} ({len(blob):,} bytes)", flush=True)
        return blob, None

    make(out, planned, work)
    return out


def write_c_pair(tflite: Path) -> None:
    """The C source and header that embed ``tflite`` for LiteRT Micro, beside it, unless they already
    hold exactly that."""
    for target, text in zip(c_paths(tflite), c_pair(tflite)):
        if not (target.is_file() and target.read_text() == text):
            write_text(target, text)
            print(f"convert: {tflite} -> {target} (LiteRT Micro)", flush=True)
