"""The input contract: how an image's 8-bit pixels become the model's input, declared once.

``input = pixel * scale + offset``, per channel. It is applied identically wherever the pipeline feeds
a model (training, fine-tuning, int8 calibration, validation, the Keras parent's predictions), recorded
with every artefact, and written into the app developer's sidecar beside every ``.tflite``.

The pipeline's own models start with a ``Rescaling`` layer and take raw pixels (identity contract). For a
model brought with ``--model`` or ``model.file``, a leading ``Rescaling`` or ``Normalization`` layer is
recognised the same way; a model without one must have its convention declared in ``input.pixels``:
the pipeline never guesses. This module does not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .errors import PipelineError

# input.pixels -> (scale, offset) for the conventions that need no numbers
NAMED = {"raw": (1.0, 0.0), "unit": (1 / 255, 0.0), "symmetric": (1 / 127.5, -1.0)}
LEADING = ("Rescaling", "Normalization")  # layers that say the model takes pixels and scales them itself
HOW_TO_DECLARE = (
    "declare how pixels 0-255 become its input: --set input.pixels=unit (pixel/255, [0, 1]: the Keras and "
    "TF-MOT tutorials), symmetric (pixel/127.5 - 1, [-1, 1]: keras.applications MobileNet), raw (0-255 as "
    "they are), scale_offset with input.scale and input.offset, or mean_std with input.mean and input.std "
    "(per channel, in pixel units)")


@dataclasses.dataclass(frozen=True)
class InputContract:
    scale: tuple[float, ...] = (1.0,)  # one value for every channel, or one per channel
    offset: tuple[float, ...] = (0.0,)
    origin: str = "raw pixels"  # where it comes from, for messages and the sidecar

    @property
    def is_identity(self) -> bool:
        return all(s == 1.0 for s in self.scale) and all(o == 0.0 for o in self.offset)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """uint8 pixels (N, H, W, C) -> the model's float32 input."""
        x = np.asarray(x, dtype=np.float32)
        if self.is_identity:
            return x
        return x * np.asarray(self.scale, np.float32) + np.asarray(self.offset, np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"scale": list(self.scale), "offset": list(self.offset), "origin": self.origin,
                "formula": "input = pixel * scale + offset, per channel (pixels 0-255)"}

    def describe(self) -> str:
        if self.is_identity:
            return f"raw pixels 0-255 ({self.origin})"
        def one(values: tuple[float, ...]) -> str:
            return f"{values[0]:.6g}" if len(values) == 1 else "[" + ", ".join(f"{v:.6g}" for v in values) + "]"

        return f"pixel * {one(self.scale)} + {one(self.offset)} ({self.origin})"

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> "InputContract":
        """The contract a record or sidecar holds; PipelineError naming ``where`` if it is not one."""
        try:
            scale = tuple(float(v) for v in raw["scale"])
            offset = tuple(float(v) for v in raw["offset"])
            origin = str(raw.get("origin", "recorded"))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise PipelineError(f"{where}: its input contract is not a {{scale, offset}} mapping of numbers") from None
        if not (1 <= len(scale) <= 4 and 1 <= len(offset) <= 4) or not np.all(np.isfinite(scale + offset)):
            raise PipelineError(f"{where}: its input contract holds impossible numbers")
        return cls(scale, offset, origin)


RAW = InputContract()


def declared(p, channels: int) -> InputContract | None:
    """The contract ``input`` params declare (None for ``pixels: auto``). ``p`` is InputParams."""
    if p.pixels == "auto":
        return None
    if p.pixels in NAMED:
        scale, offset = NAMED[p.pixels]
        return InputContract((scale,), (offset,), f"input.pixels: {p.pixels}")
    if p.pixels == "scale_offset":
        scale, offset = tuple(p.scale), tuple(p.offset or [0.0])
    else:  # mean_std: (pixel - mean) / std, broadcast over the channels
        if len(p.mean) not in (1, channels) or len(p.std) not in (1, channels):
            raise PipelineError(f"params: input: mean_std gives {len(p.mean)} mean and {len(p.std)} std values; "
                                f"the images have {channels} channel(s): give one value, or one per channel")
        std, mean = np.asarray(p.std, np.float64), np.asarray(p.mean, np.float64)
        shape = np.broadcast(mean, std).shape
        scale, offset = tuple(map(float, 1 / std)), tuple(map(float, np.broadcast_to(-mean / std, shape)))
    for key, values in (("scale", scale), ("offset", offset)):
        if len(values) not in (1, channels):
            raise PipelineError(f"params: input: {p.pixels} gives {len(values)} {key} values; the images have "
                                f"{channels} channel(s): give one value, or one per channel")
    return InputContract(scale, offset, f"input.pixels: {p.pixels}")


def leading_layer(layers: list) -> Any | None:
    """The first layer after the input that is not a plain pass-through, descending into a nested model."""
    for layer in layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        inner = getattr(layer, "layers", None)
        if kind in ("Functional", "Sequential", "Model") and inner:
            return leading_layer(inner)
        return layer
    return None


def resolve(p, model, where: str, channels: int) -> InputContract:
    """The contract for ``model`` (a Keras model, or None when there is none to look into): the declared
    one if ``input.pixels`` says so; else raw pixels if the model starts with Rescaling or Normalization;
    else PipelineError explaining the choice and how to declare it."""
    found = declared(p, channels)
    if found is not None:
        return found
    first = leading_layer(list(getattr(model, "layers", None) or [])) if model is not None else None
    if first is not None and type(first).__name__ in LEADING:
        return InputContract(origin=f"the model's own {type(first).__name__} layer {first.name!r}")
    what = ("is not a Keras model the pipeline can look into" if model is None else
            "does not start with a Rescaling or Normalization layer")
    raise PipelineError(f"{where} {what}, so the pipeline cannot tell how it expects its pixels; {HOW_TO_DECLARE}")


def gives_probabilities(scores: Any) -> bool:
    """The output contract, read from what an output returns for a batch of images: probabilities are
    non-negative and sum to 1 for every image (a softmax); logits practically never do."""
    scores = np.asarray(scores, np.float64)
    return bool(scores.min() >= -1e-6 and np.allclose(scores.sum(axis=-1), 1.0, atol=1e-3))


def by_output(model, scores) -> dict[str, Any]:
    """A model's outputs keyed by output name, whether it returns a dict, a list or one tensor."""
    if isinstance(scores, dict):
        return dict(scores)
    scores = list(scores) if isinstance(scores, (list, tuple)) else [scores]
    return dict(zip(model.output_names, scores))


def logits_by_output(outputs: dict[str, Any]) -> dict[str, bool]:
    """Output name -> True if that output gives logits (see :func:`gives_probabilities`)."""
    return {name: not gives_probabilities(scores) for name, scores in outputs.items()}
