"""Keras models to TFLite bytes: float32, float16, dynamic-range int8 and full-integer int8."""

from __future__ import annotations

import numpy as np

from ..core.errors import PipelineError
from ..core.framework import native_output_silenced, tf


def representative_data(x_train: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` training images (never test images) chosen with a seed, as float32."""
    idx = np.random.default_rng(seed).choice(len(x_train), size=min(count, len(x_train)), replace=False)
    return x_train[np.sort(idx)].astype(np.float32)


def to_tflite(model, fmt: str, representative: np.ndarray | None = None) -> bytes:
    """Convert one Keras model to one TFLite format."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if fmt == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif fmt == "int8":
        if representative is None:
            raise ValueError("full-integer int8 needs representative data")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([sample[None]] for sample in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif fmt != "float32":
        raise ValueError(f"unknown format {fmt!r}")
    try:
        with native_output_silenced():
            return converter.convert()
    except Exception as exc:  # the converter's errors are long MLIR dumps; keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise PipelineError(f"TFLite conversion to {fmt} failed for {model.name}: {first[:300]}") from None
