"""Keras models to TFLite bytes: float32, float16, dynamic-range int8 and full-integer int8."""

from __future__ import annotations

import numpy as np

from ..core.errors import PipelineError


def representative_data(x_train: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` training images (never test images) chosen with a seed, as float32."""
    idx = np.random.default_rng(seed).choice(len(x_train), size=min(count, len(x_train)), replace=False)
    return x_train[np.sort(idx)].astype(np.float32)


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
    """Convert one Keras model to one TFLite format (``representative``: calibration images, for the
    formats in :data:`CALIBRATED`)."""
    from ..core.framework import (  # TensorFlow only when converting
        native_output_silenced,
        tf,
    )

    if fmt not in CONVERTERS:
        raise ValueError(f"unknown format {fmt!r}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    CONVERTERS[fmt](converter, tf, representative)
    try:
        with native_output_silenced():
            return converter.convert()
    except Exception as exc:  # the converter's errors are long MLIR dumps; keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise PipelineError(f"TFLite conversion to {fmt} failed for {model.name}: {first[:300]}") from None
