"""The app developer's sidecar beside every ``.tflite`` (``<model>.<format>.app.json``): what an Android
or iOS developer needs to call the file correctly, read from the file itself and from the input and
output contracts it was converted with. ``validate --tflite`` also reads the input contract from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.artifacts import file_hash, read_json, write_json
from ..core.contract import InputContract
from ..core.errors import PipelineError
from .flatbuffer import io_details

SUFFIX = ".app.json"


def sidecar_path(tflite: Path) -> Path:
    return tflite.with_name(tflite.name.removesuffix(".tflite") + SUFFIX)


def _quantization_steps(detail: dict, role: str) -> str | None:
    quant = detail.get("quantization")
    if not quant or detail["dtype"] == "float32":
        return None
    scale, zero = quant["scale"], quant["zero_point"]
    if role == "input":
        return f"then quantize: q = clamp(round(input / {scale:.9g}) + {zero}, {detail['dtype']} range)"
    return f"dequantize: score = (q - {zero}) * {scale:.9g}"


def sidecar(tflite: Path, contract: InputContract, image: tuple[int, int, int], class_names: list[str],
            tasks: tuple[str, ...], logits: dict[str, bool]) -> dict[str, Any]:
    """The sidecar of ``tflite`` (converted from a model taking ``image`` = (height, width, channels)
    inputs made from pixels by ``contract``, whose outputs give logits or probabilities per ``logits``)."""
    details = io_details(tflite)
    (inp,) = details["inputs"]
    height, width, channels = image
    outputs = []
    for i, out in enumerate(details["outputs"]):
        task = out["name"] if out["name"] in tasks else (tasks[i] if len(tasks) > i else None)
        gives_logits = logits.get(out["name"], logits.get(task, next(iter(logits.values()), False)))
        outputs.append({**out, "task": task, "labels": class_names,
                        "gives": "logits (apply softmax for probabilities)" if gives_logits else "probabilities",
                        "dequantize": _quantization_steps(out, "output"),
                        "top_1": "the index of the largest score is the label"})
    steps = [f"decode the image as 8-bit {'grey' if channels == 1 else 'RGB'} (0-255), {channels} channel(s)",
             f"resize to {height}x{width} (the pipeline resizes with bilinear filtering)",
             f"input = pixel * scale + offset, per channel, with scale {list(contract.scale)} and offset "
             f"{list(contract.offset)}" + (" (the raw pixel values, as float)" if contract.is_identity else ""),
             f"lay out as {inp['shape']} ({'batch, height, width, channels' if len(inp['shape']) == 4 else 'as given'})"]
    if quantized := _quantization_steps(inp, "input"):
        steps.append(quantized)
    return {"file": tflite.name, "sha256": file_hash(tflite), "input": inp,
            "preprocessing": {**contract.to_dict(), "image": {"height": height, "width": width, "channels": channels,
                                                              "color": "grey" if channels == 1 else "RGB",
                                                              "layout": "NHWC"},
                              "steps": steps},
            "outputs": outputs}


def write_sidecar(tflite: Path, *args) -> Path:
    """Write (or leave, if it already says the same) the sidecar of ``tflite``; see :func:`sidecar`."""
    out = sidecar_path(tflite)
    content = sidecar(tflite, *args)
    try:
        current = json.loads(out.read_text()) if out.is_file() else None
    except (OSError, ValueError):
        current = None
    if current != content:
        write_json(out, content)
    return out


def read_contract(tflite: Path) -> InputContract | None:
    """The input contract the sidecar beside ``tflite`` states (None without a sidecar); a sidecar
    that is not one, or describes another file, is refused with one line."""
    path = sidecar_path(tflite)
    if not path.is_file():
        return None
    found = read_json(path)
    if not isinstance(found, dict) or found.get("sha256") != file_hash(tflite):
        raise PipelineError(f"{path}: not the sidecar of {tflite.name} (its sha256 differs); remove it, or put back "
                            "the file it describes")
    return InputContract.from_dict(found.get("preprocessing"), str(path))
