"""Keras CNN builders, registered by name.

``build(name, input_shape, num_classes, width=..., dropout=...)`` returns an uncompiled ``tf_keras``
functional model whose input is raw pixel values (0..255, float32) and whose output is class
probabilities. Normalisation lives inside the model, so a deployed ``.tflite`` takes pixels as they are.
This module imports TensorFlow only when a model is built.
"""

from __future__ import annotations

from typing import Callable

from ..errors import PipelineError

_REGISTRY: dict[str, Callable] = {}
_DOCS: dict[str, str] = {}


def register(name: str, doc: str):
    def wrap(fn: Callable) -> Callable:
        _REGISTRY[name] = fn
        _DOCS[name] = doc
        return fn
    return wrap


def names() -> list[str]:
    return sorted(_REGISTRY)


def describe() -> dict[str, str]:
    return {name: _DOCS[name] for name in names()}


def build(name: str, input_shape: tuple[int, int, int], num_classes: int, *, width: int = 32,
          dropout: float = 0.3):
    if name not in _REGISTRY:
        raise PipelineError(f"unknown architecture {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name](input_shape, num_classes, width=width, dropout=dropout)


from . import cnn  # noqa: E402,F401  (registers the CNN family)
