"""LiteRT Micro (microcontrollers): a ``.tflite`` as a C source and header pair that embeds it as an
aligned byte array, the check that the array runs in the Micro interpreter (``tflite-micro``) with the
outputs LiteRT gives, and the tensor arena a file of any format needs there.

Micro runs its own reference kernels, so its outputs are compared with LiteRT's reference kernels
(``BUILTIN_REF``), image by image, bit for bit, and with LiteRT's default (optimised) kernels by label.
They are not always bit-identical: an op whose int8 kernel Micro implements its own way (a softmax
from its own table) can end one step away, and that is counted, not hidden. The arena is the smallest size (to 16 bytes) in which Micro allocates and runs
the model: the figure a firmware's ``tensor_arena`` needs. Like ``litert.evaluate``, the interpreters
run in a child process."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..core.errors import PipelineError
from ..core.runner import JobError, child_tempdir, run_child
from .flatbuffer import io_details
from .litert import _quantize, to_input

ALIGNMENT = 16  # bytes: what Micro asks of a model's buffer (its flatbuffer's 64-bit fields, SIMD loads)
ARENA_LIMIT = 1 << 28  # 256 MiB: no microcontroller has more; a model that needs more is refused
MICRO_FORMATS = ("int8", "aeq_int8")  # the formats written as C: full-integer, what microcontrollers run


def symbol_for(path: Path) -> str:
    """The C identifier of a file's array: its name, every other character an underscore."""
    name = re.sub(r"\W", "_", path.name.removesuffix(".tflite"), flags=re.ASCII)
    return f"g_{name}_model"


def _describe(tensors: list[dict]) -> list[str]:
    lines = []
    for t in tensors:
        q = t.get("quantization")
        zero = q["zero_point"] if q else 0
        lines.append(f"//   {t['name']}: {t['dtype']} {t['shape']}"
                     + (f", real = (q {'-' if zero >= 0 else '+'} {abs(zero)}) * {q['scale']:.9g}" if q else ""))
    return lines


def c_paths(tflite: Path) -> tuple[Path, Path]:
    """Where the C pair of a ``.tflite`` goes: beside it, ``<name>.cc`` and ``<name>.h``."""
    stem = tflite.name.removesuffix(".tflite")
    return tflite.with_name(f"{stem}.cc"), tflite.with_name(f"{stem}.h")


def c_pair(tflite: Path) -> tuple[str, str]:
    """(C++ source, header) embedding the file at ``tflite``: the array ``g_<name>_model`` aligned to
    :data:`ALIGNMENT` bytes and its length ``g_<name>_model_len``, the model's inputs and outputs (type,
    shape, quantization) in a comment."""
    blob = tflite.read_bytes()
    symbol = symbol_for(tflite)
    details = io_details(tflite)
    comment = [f"// {tflite.name} ({len(blob):,} bytes) for LiteRT Micro, written by mobiledeploy.",
               "// Inputs:", *_describe(details["inputs"]), "// Outputs:", *_describe(details["outputs"])]
    guard = f"{symbol.upper()}_H_"
    header = "\n".join([*comment, f"#ifndef {guard}", f"#define {guard}", "",
                        f"extern const unsigned char {symbol}[];", f"extern const unsigned int {symbol}_len;", "",
                        f"#endif  // {guard}", ""])
    rows = [", ".join(f"0x{b:02x}" for b in blob[i:i + 12]) for i in range(0, len(blob), 12)]
    source = "\n".join([*comment, f'#include "{c_paths(tflite)[1].name}"', "",
                        f"alignas({ALIGNMENT}) const unsigned char {symbol}[] = {{",
                        *(f"  {row}," for row in rows), "};", f"const unsigned int {symbol}_len = {len(blob)};", ""])
    return source, header


def array_bytes(source: str) -> bytes:
    """The bytes a C source written by :func:`c_pair` embeds, read back from its text, and checked
    against the length it declares."""
    match = re.search(r"\[\] = \{([^}]*)\};\s*const unsigned int \w+_len = (\d+);", source)
    if match is None:
        raise PipelineError("not a model array written by mobiledeploy (no array and length found)")
    blob = bytes(int(h, 16) for h in re.findall(r"0x([0-9a-fA-F]{2})", match.group(1)))
    if len(blob) != int(match.group(2)):
        raise PipelineError(f"its array holds {len(blob):,} bytes, its length constant says {int(match.group(2)):,}")
    return blob


def check(source: Path, tflite: Path, x: np.ndarray, contract, timeout: float = 900) -> dict:
    """Run the model the C ``source`` embeds (which must be the bytes of ``tflite``) in LiteRT Micro on
    pixels ``x``, one image at a time, against LiteRT: {"images"; "identical": images whose every output
    is bit for bit that of LiteRT's reference kernels; "same_labels": images whose top-1 labels are those
    of LiteRT's default kernels (what the app ships with); "max_steps_reference", "max_steps_default":
    the largest difference in any output from each, in quantization steps; "arena_bytes"}."""
    try:
        blob = array_bytes(source.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{source}: cannot read it ({getattr(exc, 'strerror', None) or exc.__class__.__name__})"
                            ) from None
    except PipelineError as exc:
        raise PipelineError(f"{source}: {exc}") from None
    if blob != tflite.read_bytes():
        raise PipelineError(f"{source}: its array is not the bytes of {tflite} (stale: re-run `mobiledeploy convert`)")
    return _run(tflite, x, contract, True, timeout)


def arena(tflite: Path, x: np.ndarray, contract, timeout: float = 900) -> int:
    """The smallest tensor arena (bytes, to 16) in which LiteRT Micro runs ``tflite`` on the first image of
    pixels ``x``: the runtime memory of its tensors under Micro's planner, for a file of any format.
    PipelineError naming the file when Micro cannot run it (an op or type it has no kernel for)."""
    return _run(tflite, x[:1], contract, False, timeout)["arena_bytes"]


def _run(tflite: Path, x: np.ndarray, contract, compare: bool, timeout: float) -> dict:
    with child_tempdir() as tmp:
        np.save(Path(tmp) / "x.npy", to_input(x, list(contract.scale), list(contract.offset)))
        job = {"model": str(tflite), "x": str(Path(tmp) / "x.npy"), "compare": compare}
        return run_child(__name__, job, tflite, timeout)


def _litert_outputs(blob: bytes, images: list[np.ndarray], resolver) -> list[list[np.ndarray]]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=blob, experimental_op_resolver_type=resolver)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    found = []
    for image in images:
        interp.set_tensor(inp["index"], image)
        interp.invoke()
        found.append([interp.get_tensor(o["index"]).copy() for o in interp.get_output_details()])
    return found


def _micro(blob: bytes, arena: int):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(blob, arena_size=arena)


def _runs_in(blob: bytes, arena: int, image: np.ndarray) -> bool:
    try:
        interp = _micro(blob, arena)
        interp.set_input(image, 0)
        interp.invoke()
        return True
    except RuntimeError:  # Micro reports an arena too small as a failed allocation
        return False


@contextlib.contextmanager
def _native_messages():
    """The lines native code writes to stderr inside the block (a list, filled as the block ends)."""
    said: list[str] = []
    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            said += [line.strip() for line in capture.read().decode(errors="replace").splitlines() if line.strip()]


def work(job: dict) -> dict:
    """The child's part (:func:`pipeline.core.runner.run_child`)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    blob = Path(job["model"]).read_bytes()
    said: list[str] = []
    try:
        (inp,) = Interpreter(model_content=blob).get_input_details()
        images = [_quantize(image[None], inp) for image in np.load(job["x"])]
        compare = job["compare"]
        reference = _litert_outputs(blob, images, OpResolverType.BUILTIN_REF) if compare else []
        default = _litert_outputs(blob, images, OpResolverType.AUTO) if compare else []
        with _native_messages() as said:  # Micro gives its reason on stderr, its exception says only "failed"
            interp = _micro(blob, ARENA_LIMIT)
            interp.set_input(images[0], 0)
            interp.invoke()
    except (ValueError, RuntimeError) as exc:
        message = (said or [""])[0] or (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise JobError(f"cannot run in LiteRT Micro: {message[:200]}") from None
    identical, same_labels, steps = 0, 0, {"reference": 0, "default": 0}
    for image, ref, fast in zip(images, reference, default):
        interp.set_input(image, 0)
        interp.invoke()
        outs = [interp.get_output(i) for i in range(len(ref))]
        identical += all(np.array_equal(o, r) for o, r in zip(outs, ref))
        same_labels += all(np.array_equal(o.argmax(-1), f.argmax(-1)) for o, f in zip(outs, fast))
        for kernels, theirs in (("reference", ref), ("default", fast)):
            steps[kernels] = max(steps[kernels], *(int(np.max(np.abs(o.astype(np.int64) - t.astype(np.int64))))
                                                   for o, t in zip(outs, theirs)))
    low, high = 0, ARENA_LIMIT  # the arena: the smallest size that runs, to 16 bytes
    while high - low > ALIGNMENT:
        middle = (low + high) // 2 // ALIGNMENT * ALIGNMENT
        low, high = (low, middle) if _runs_in(blob, middle, images[0]) else (middle, high)
    found = {"images": len(images), "identical": identical, "same_labels": same_labels,
             "max_steps_reference": steps["reference"], "max_steps_default": steps["default"]} if compare else {}
    return {**found, "arena_bytes": high}
