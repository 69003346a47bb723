"""Keras CNN builders, registered by name with their hyperparameters.

``build(name, input_shape, num_classes, width=None, dropout=0.3, options={})`` returns an uncompiled
``tf_keras`` functional model whose input is raw pixel values (0..255, float32) and whose output is
class probabilities. Normalisation lives inside the model, so a deployed ``.tflite`` takes pixels as
they are. A registered variant is a builder plus default hyperparameters; ``width`` and ``options``
override them. This module imports TensorFlow only when a model is built.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ..core.errors import PipelineError


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    builder: Callable
    doc: str
    hyperparameters: dict[str, Any]  # defaults, width included; each may be overridden
    check: Callable[[dict[str, Any]], str | None]  # -> a message if a combination is invalid


_REGISTRY: dict[str, Architecture] = {}


def register(name: str, builder: Callable, doc: str, check: Callable = lambda hp: None, **hyperparameters) -> None:
    _REGISTRY[name] = Architecture(name, builder, doc, hyperparameters, check)


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> Architecture:
    if name not in _REGISTRY:
        raise PipelineError(f"unknown architecture {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name]


def describe() -> dict[str, Architecture]:
    return {name: _REGISTRY[name] for name in names()}


def resolve(name: str, width: int | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The hyperparameters a build would use; raises PipelineError naming a bad option."""
    arch = get(name)
    options = dict(options or {})
    unknown = sorted(set(options) - set(arch.hyperparameters) - {"width"})
    if unknown:
        known = ", ".join(k for k in sorted(arch.hyperparameters) if k != "width")
        raise PipelineError(f"architecture {name}: unknown option {unknown[0]!r}; its options: {known}")
    hp = {**arch.hyperparameters, **options}
    if width is not None:
        hp["width"] = width
    problem = arch.check(hp)
    if problem:
        raise PipelineError(f"architecture {name}: {problem}")
    return hp


def build(name: str, input_shape: tuple[int, int, int], num_classes: int, *, width: int | None = None,
          dropout: float = 0.3, options: dict[str, Any] | None = None, tasks: tuple[str, ...] = ()):
    """The model; with ``tasks``, one head per task and a dict output keyed by task name."""
    hp = resolve(name, width, options)
    return get(name).builder(input_shape, num_classes, name=name, dropout=dropout, tasks=tuple(tasks), **hp)


from . import cnn  # noqa: E402,F401  (registers the CNN family)
