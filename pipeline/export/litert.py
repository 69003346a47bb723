"""Running .tflite files in the LiteRT interpreter, in a child process.

A malformed flatbuffer can crash the interpreter's native code, so ``evaluate`` (and the Micro and
per-layer comparisons) run the work in a child Python process that imports only NumPy and LiteRT; a
crash there becomes a PipelineError here. Inside a :func:`session`, one child runs the jobs one after
another (and a new one after a crash).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..core.errors import PipelineError
from ..core.runner import child_tempdir, dies_with_parent

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


class JobError(Exception):
    """Raised by a job in the child for a file LiteRT cannot run: its message becomes the PipelineError's."""


class _Child:
    """The child process that runs the jobs of a :func:`session`, one after another: it is started at the
    first job, and again after a crash or a timeout ended it. Jobs go in on its stdin, one JSON line each;
    each answer comes back as one JSON line on a pipe of its own (anything native code prints goes to
    stderr, kept in a file for the message of a failure)."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        self.stderr = tempfile.TemporaryFile()
        answers, self.answers = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-m", __name__, str(self.answers)], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=self.stderr, pass_fds=(self.answers,),
                                     preexec_fn=dies_with_parent())
        os.close(self.answers)
        self.answers = answers

    def run(self, module: str, job: dict, path: Path, timeout: float) -> dict:
        if self.proc is None:
            self._start()
        told = self.stderr.seek(0, os.SEEK_END)
        try:
            self.proc.stdin.write((json.dumps({"module": module, "job": job}) + "\n").encode())
            self.proc.stdin.flush()
            line = self._answer(timeout)
        except BrokenPipeError:
            line = b""
        except TimeoutError:
            self.close()
            raise PipelineError(f"{path}: LiteRT did not finish within {timeout:.0f}s") from None
        if not line:  # the child is gone
            code = self.proc.wait()
            self.stderr.seek(told)
            lines = [s for s in self.stderr.read().decode(errors="replace").splitlines() if s.strip()]
            self.close()
            if code < 0:
                raise PipelineError(f"{path}: the LiteRT interpreter crashed ({signal.Signals(-code).name}) "
                                    "on this file; it is not a valid TFLite model")
            raise PipelineError(f"{path}: {lines[-1].strip() if lines else 'LiteRT failed'}")
        answer = json.loads(line)
        if "error" in answer:
            raise PipelineError(f"{path}: {answer['error']}")
        return answer["result"]

    def _answer(self, timeout: float) -> bytes:
        """One line from the answers pipe; b"" if the child closed it (it died)."""
        deadline, got = time.monotonic() + timeout, b""
        while not got.endswith(b"\n"):
            ready, _, _ = select.select([self.answers], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError
            chunk = os.read(self.answers, 1 << 16)
            if not chunk:
                return b""
            got += chunk
        return got

    def close(self) -> None:
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        os.close(self.answers)
        self.stderr.close()
        self.proc = None


_sessions: list[_Child] = []


@contextlib.contextmanager
def session():
    """Inside the block, this process's LiteRT jobs (:func:`run_child`) share one child process instead of
    starting one each (about 0.25 s apiece; a validate runs up to three jobs a file)."""
    child = _Child()
    _sessions.append(child)
    try:
        yield
    finally:
        _sessions.remove(child)
        child.close()


def run_child(module: str, job: dict, path: Path, timeout: float) -> dict:
    """What ``module.work(job)`` returns for the .tflite at ``path``, computed in a child process (the
    session's, or one of its own). A crash of the interpreter's native code, a timeout or a failure
    becomes one PipelineError naming ``path``."""
    if _sessions:
        return _sessions[-1].run(module, job, path, timeout)
    with session():
        return run_child(module, job, path, timeout)


def work(job: dict) -> dict:
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
    return str(exc).strip().splitlines()[0] if str(exc).strip() else "cannot load"


def _serve(answers: int) -> None:
    """The child: run each job read from stdin, and write its answer to the ``answers`` file descriptor.
    stdout is pointed at stderr, so nothing printed can be taken for an answer."""
    out = os.fdopen(answers, "w")
    os.dup2(2, 1)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = {"result": importlib.import_module(request["module"]).work(request["job"])}
        except JobError as exc:
            answer = {"error": str(exc)}
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":  # the module itself, not this __main__ copy: jobs raise its JobError
    importlib.import_module(__spec__.name)._serve(int(sys.argv[1]))
