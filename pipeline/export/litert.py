"""Running .tflite files in the LiteRT interpreter, in a child process.

A malformed flatbuffer can crash the interpreter's native code, so ``evaluate`` (like the Micro and
per-layer comparisons) runs the work in a child Python process that imports only NumPy and LiteRT
(:func:`pipeline.core.runner.run_child`); a crash there becomes a PipelineError here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..core.errors import PipelineError
from ..core.runner import JobError, child_tempdir, run_child

LATENCY_BLOCKS = 5


def _interpreter(path: str, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=path, num_threads=threads or os.cpu_count())


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return x.astype(np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return y
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * scale


def _signature_names(interp) -> dict[int, str]:
    """Output tensor index -> the name the model's signature gives it (a task name for a multi-task
    model); empty for a file without a signature."""
    try:
        runner = interp.get_signature_runner()
    except ValueError:
        return {}
    return {detail["index"]: name for name, detail in runner.get_output_details().items()}


class NotAClassifier(ValueError):
    """The model's outputs are not one score per class for each image."""


def to_input(x: np.ndarray, scale: list[float], offset: list[float]) -> np.ndarray:
    """Pixels -> the model's float input, by the input contract (pipeline.core.contract)."""
    return x.astype(np.float32) * np.asarray(scale, np.float32) + np.asarray(offset, np.float32)


def predict(path: str, x: np.ndarray, batch_size: int, scale: list[float], offset: list[float]
            ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Class predictions for every output of the model, batched, on pixels ``x`` turned into its input by
    ``scale`` and ``offset``: (output name -> labels, output name -> number of classes). Raises
    NotAClassifier for an output that is not (batch, classes)."""
    interp = _interpreter(path, 0)
    (inp,) = interp.get_input_details()
    if tuple(inp["shape"][1:]) != x.shape[1:]:
        raise ValueError(f"model input shape {tuple(int(d) for d in inp['shape'][1:])} does not match the "
                         f"data's {x.shape[1:]}")
    batch = min(batch_size, len(x))
    interp.resize_tensor_input(inp["index"], [batch, *x.shape[1:]])
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    outputs = interp.get_output_details()
    names = _signature_names(interp)
    for o in outputs:
        if len(o["shape"]) != 2:
            per_image = tuple(int(d) for d in o["shape"][1:])
            raise NotAClassifier(f"output {names.get(o['index'], o['name'])!r} gives {per_image} values per image; "
                                 "a classifier gives one score per class")
    widths = {names.get(o["index"], o["name"]): int(o["shape"][1]) for o in outputs}
    labels: dict[str, list[np.ndarray]] = {names.get(o["index"], o["name"]): [] for o in outputs}
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)]) if len(chunk) < batch \
            else chunk
        interp.set_tensor(inp["index"], _quantize(to_input(padded, scale, offset), inp))
        interp.invoke()
        for o in outputs:
            scores = _dequantize(interp.get_tensor(o["index"]), o)[: len(chunk)]
            labels[names.get(o["index"], o["name"])].append(np.argmax(scores, axis=-1))
    return {name: np.concatenate(parts) for name, parts in labels.items()}, widths


def latency(path: str, image: np.ndarray, threads: int, warmup: int, runs: int) -> dict[str, float]:
    """Single-image latency after warm-up: percentiles over ``runs`` timed invocations, in ms
    (``image``: one model input)."""
    interp = _interpreter(path, threads)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    interp.set_tensor(inp["index"], _quantize(image[None], inp))
    for _ in range(warmup):
        interp.invoke()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter_ns()
        interp.invoke()
        times[i] = (time.perf_counter_ns() - start) / 1e6
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    # the run-to-run spread: how far apart the medians of consecutive blocks of runs are, relative to
    # the median; a latency gate's margin is derived from it (a steadier machine gets a tighter gate)
    blocks = [np.median(b) for b in np.array_split(times, LATENCY_BLOCKS)]
    spread = (max(blocks) - min(blocks)) / p50 if p50 > 0 else 0.0
    return {"threads": threads or os.cpu_count(), "p50": round(float(p50), 4), "p90": round(float(p90), 4),
            "p99": round(float(p99), 4), "runs": runs, "spread": round(float(spread), 4)}


def evaluate(path: Path, x: np.ndarray, batch_size: int, threads: list[int], warmup: int, runs: int,
             timeout: float = 1800, num_classes: int | None = None, contract=None
             ) -> tuple[dict[str, np.ndarray], list[dict[str, float]]]:
    """Predictions and latencies for one .tflite, computed in a child process, on pixels ``x`` turned
    into the model's input by ``contract`` (raw pixels when None). With ``num_classes``, a file whose
    outputs predict another number of classes is refused."""
    with child_tempdir() as tmp:
        np.save(Path(tmp) / "x.npy", x)
        job = {"model": str(path), "x": str(Path(tmp) / "x.npy"), "out": str(Path(tmp) / "labels.npz"),
               "batch_size": batch_size, "threads": threads, "warmup": warmup, "runs": runs,
               "scale": list(contract.scale) if contract else [1.0],
               "offset": list(contract.offset) if contract else [0.0]}
        result = run_child(__name__, job, path, timeout)
        with np.load(job["out"]) as labels:
            predictions = {name: labels[name] for name in labels.files}
        for name, width in result["classes"].items():
            if num_classes is not None and width != num_classes:
                raise PipelineError(f"{path}: output {name!r} predicts {width} classes, the data has {num_classes}")
        return predictions, result["latencies"]


def work(job: dict) -> dict:
    """The child's part of :func:`evaluate` (:func:`pipeline.core.runner.run_child`)."""
    x = np.load(job["x"])
    try:
        predictions, classes = predict(job["model"], x, job["batch_size"], job["scale"], job["offset"])
        image = to_input(x[0], job["scale"], job["offset"])
        latencies = [latency(job["model"], image, t, job["warmup"], job["runs"]) for t in job["threads"]]
    except NotAClassifier as exc:
        raise JobError(f"not a classifier: {exc}") from None
    except ValueError as exc:  # LiteRT reports unloadable models and shape mismatches as ValueError
        raise JobError(f"cannot run in LiteRT: {first_line(exc)}") from None
    np.savez(job["out"], **predictions)
    return {"latencies": latencies, "classes": classes}


def first_line(exc: Exception) -> str:
    """The first line of what LiteRT says about a file it cannot run."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else "cannot load"
