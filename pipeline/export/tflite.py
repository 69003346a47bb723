"""Keras models to TFLite bytes: float32, float16, dynamic-range int8 and full-integer int8."""

from __future__ import annotations

import tempfile

import numpy as np

from ..core.errors import PipelineError


def representative_data(data, convert, seed: int) -> np.ndarray:
    """The calibration images of ``convert`` params (ConvertParams): ``representative_samples`` images of
    the training or validation split (never test images), chosen with a seed, either at random or
    stratified (each class, of the first task, in proportion to its share of the split, at least one
    each when there are enough), fed as the model's input (``data.contract``)."""
    x, y = (data.x_train, data.y_train) if convert.calibration_source == "train" else (data.x_val, data.y_val)
    count = min(convert.representative_samples, len(x))
    rng = np.random.default_rng(seed)
    if not convert.calibration_stratified:
        idx = rng.choice(len(x), size=count, replace=False)
    else:
        strata = y if y.ndim == 1 else y[:, 0]
        classes, sizes = np.unique(strata, return_counts=True)
        share = np.floor(count * sizes / len(x)).astype(int)
        if count >= len(classes):
            share = np.maximum(share, 1)
        for i in np.argsort(-sizes):  # what rounding left over, to the largest classes first
            if share.sum() >= count:
                break
            share[i] += min(sizes[i] - share[i], count - share.sum())
        while share.sum() > count:  # one each for many classes may overshoot a tiny count
            share[np.argmax(share)] -= 1
        idx = np.concatenate([rng.choice(np.flatnonzero(strata == c), size=n, replace=False)
                              for c, n in zip(classes, share) if n])
    return data.contract.apply(x[np.sort(idx)])


def _float16(converter, tf, representative) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


def _dynamic_int8(converter, tf, representative) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]


def _int8(converter, tf, representative) -> None:
    if representative is None:
        raise ValueError("full-integer int8 needs representative data")
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([sample[None]] for sample in representative)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8


# format name -> how it sets up the converter (converter, tf, representative images). The registry of
# formats: params' convert.formats accepts these names, and a new format is one function and one entry.
CONVERTERS = {"float32": lambda converter, tf, representative: None, "float16": _float16,
              "dynamic_int8": _dynamic_int8, "int8": _int8}
FORMATS = tuple(CONVERTERS)
# formats that read calibration images (and so the dataset): their records hash it
CALIBRATED = ("int8",)


def to_tflite(model, fmt: str, representative: np.ndarray | None = None) -> bytes:
    """Convert one model to one TFLite format (``representative``: calibration images, for the formats
    in :data:`CALIBRATED`). ``model``: a tf_keras model, or a :class:`~pipeline.core.model_files.LoadedModel`
    (a Keras 3 model goes through a SavedModel export, a SavedModel is converted from its folder)."""
    from ..core.framework import (  # TensorFlow only when converting
        native_output_silenced,
        tf,
    )

    if fmt not in CONVERTERS:
        raise ValueError(f"unknown format {fmt!r}")
    kind = getattr(model, "kind", "tf_keras")
    name = getattr(model, "path", None) or model.name
    with tempfile.TemporaryDirectory(prefix=".export-") as tmp, native_output_silenced():
        try:
            if kind == "saved_model":
                converter = tf.lite.TFLiteConverter.from_saved_model(str(model.path))
            elif kind == "keras3":
                model.model.export(tmp, format="tf_saved_model", verbose=False)
                converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
            else:
                converter = tf.lite.TFLiteConverter.from_keras_model(model.keras if hasattr(model, "kind") else model)
            CONVERTERS[fmt](converter, tf, representative)
            return converter.convert()
        except Exception as exc:  # the converter's errors are long MLIR dumps; keep the first line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise PipelineError(f"TFLite conversion to {fmt} failed for {name}: {first[:300]}") from None
