"""Which layer quantization hurts: every op's output in a quantized ``.tflite`` against the same op's
output in the float32 file of the same model, on the same images, both run in LiteRT.

An op of the quantized file is matched to the float file's op of the same type that computes the same
Keras layers (the layer names its output tensor is named after; a QAT model's ``quant_`` wrappers are
the layers they wrap). Its *error* is the root mean square of (dequantized output - float output) over
that of the float output: the error accumulated up to that op. *Added* is that error less the largest
error among the op's inputs: what the op itself adds, the figure that names the worst layers. Like
``litert.evaluate``, the interpreters run in a child process (a malformed file cannot take the caller
down)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.artifacts import read_record
from ..core.runner import JobError, child_tempdir, run_child
from ..core.tables import markdown_table
from .litert import _dequantize, _quantize, first_line, to_input

CONVERSION_OPS = ("QUANTIZE", "DEQUANTIZE")  # ops the converter adds between quantized and float ops


def layers_of(tensor_name: str) -> tuple[str, ...]:
    """The Keras layers a TFLite tensor is named after, in the order they compute it. The converter names
    a tensor ``model/layer/Op`` (``model/layer/BiasAdd/ReadVariableOp`` for a layer's inner ops), and a
    fused op lists its parts, last computed first (``m/relu/Relu;m/bn/FusedBatchNormV3;m/conv/Conv2D``)."""
    found = []
    for part in tensor_name.split(";"):
        segments = part.split("/")
        if len(segments) >= 3:
            found.append(segments[1].removeprefix("quant_"))  # a QAT model's wrapper: the layer it wraps
    return tuple(dict.fromkeys(reversed(found)))


def _run(path: str, x: np.ndarray) -> list[dict]:
    """Every op of the file at ``path`` on inputs ``x`` (one batch), with its output dequantized."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # without the default delegate: XNNPACK would compute its partitions' inner tensors out of sight
    interp = Interpreter(model_path=path, experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    (inp,) = interp.get_input_details()
    interp.resize_tensor_input(inp["index"], [len(x), *x.shape[1:]])
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], _quantize(x, inp))
    interp.invoke()
    details = {d["index"]: d for d in interp.get_tensor_details()}
    ops = [{"index": -1, "op": "INPUT", "name": inp["name"], "layers": ("input",), "inputs": [],
            "output": inp["index"], "value": x.astype(np.float32)}]
    outputs = {d["index"] for d in interp.get_output_details()}
    for op in interp._get_ops_details():  # noqa: SLF001 (LiteRT's only view of the graph's ops)
        out = op["outputs"][0]
        detail = details[out]
        if detail["dtype"] not in (np.float32, np.int8, np.int16, np.uint8):
            continue
        ops.append({"index": op["index"], "op": op["op_name"], "name": detail["name"],
                    "layers": layers_of(detail["name"]) or (("output",) if out in outputs else ()), "inputs": [int(i) for i in op["inputs"] if i >= 0],
                    "output": out, "value": _dequantize(interp.get_tensor(out), detail)})
    return ops


def compare(float_ops: list[dict], quant_ops: list[dict]) -> list[dict]:
    """One row per op of the quantized file that has a float counterpart (see the module's docstring).
    A QUANTIZE that takes a float op's output back to integers (selective quantization) is a row of its
    own, against the float file's value of that tensor: the error it adds is that op's rounding."""
    pool: dict[tuple, list[dict]] = {}
    for op in float_ops:
        pool.setdefault((op["op"], op["layers"]), []).append(op)
    error_of: dict[int, float] = {}  # quantized file's tensor index -> its error
    reference_of: dict[int, np.ndarray] = {}  # quantized file's tensor index -> the float file's value of it
    rows = []
    for op in quant_ops:
        arriving = max((error_of[i] for i in op["inputs"] if i in error_of), default=0.0)
        if op["op"] in CONVERSION_OPS:
            (source,) = op["inputs"][:1] or [None]
            if source in reference_of:  # a (de)quantize carries its input's float value on
                reference_of[op["output"]] = reference_of[source]
            if op["op"] == "DEQUANTIZE" or source not in reference_of:
                if source in error_of:
                    error_of[op["output"]] = error_of[source]
                continue
            reference, label = reference_of[source], f"quantize {rows[-1]['layer'] if rows else 'input'}"
        else:
            twins = pool.get((op["op"], op["layers"]))
            if not twins:
                continue
            reference, label = twins.pop(0)["value"], " + ".join(op["layers"]) or op["name"]
        if reference.shape != op["value"].shape:
            continue
        signal = float(np.sqrt(np.mean(np.square(reference))))
        noise = float(np.sqrt(np.mean(np.square(op["value"] - reference))))
        error = noise / signal if signal > 0 else (0.0 if noise == 0 else float("inf"))
        error_of[op["output"]] = error
        reference_of[op["output"]] = reference
        rows.append({"op_index": op["index"], "op": op["op"], "layer": label, "error": round(error, 6),
                     "added": round(error - arriving, 6)})
    return rows


def layer_errors(float_file: Path, quant_file: Path, x: np.ndarray, contract, timeout: float = 600) -> list[dict]:
    """The per-op comparison of ``quant_file`` with ``float_file`` on pixels ``x`` turned into the model's
    input by ``contract`` (an :class:`~pipeline.core.contract.InputContract`)."""
    with child_tempdir() as tmp:
        np.save(Path(tmp) / "x.npy", to_input(x, list(contract.scale), list(contract.offset)))
        job = {"float": str(float_file), "quant": str(quant_file), "x": str(Path(tmp) / "x.npy")}
        return run_child(__name__, job, quant_file, timeout)["rows"]


def worst(rows: list[dict], count: int = 3) -> list[dict]:
    """The ``count`` rows that add the most error, worst first."""
    return sorted(rows, key=lambda r: -r["added"])[:count]


def reference_for(entry: dict, floats: dict[str, Path]) -> Path | None:
    """The float32 file to compare a report entry's file with: the one converted from the same Keras model
    or, for a model fine-tuned from another (QAT, clustering), from the nearest model it descends from.
    ``floats``: Keras model -> its float32 file."""
    model, seen = entry.get("keras_model"), set()
    while isinstance(model, str) and model not in seen:
        if model in floats:
            return floats[model]
        seen.add(model)
        model = (read_record(Path(model)) or {}).get("parent")
    return None


def layer_report(entries: list[dict], contracts: dict[Path, object], x: np.ndarray) -> dict:
    """For every file of ``entries`` (report entries) that is not float32 and has a float32 reference among
    them: its per-op rows on pixels ``x`` and the worst three ops. Files -> {reference, rows, worst}."""
    floats = {e["keras_model"]: Path(e["file"]) for e in entries if e["format"] == "float32" and e["keras_model"]}
    found = {}
    for entry in entries:
        reference = reference_for(entry, floats) if entry["format"] != "float32" else None
        if reference is None:
            continue
        path = Path(entry["file"])
        rows = layer_errors(reference, path, x, contracts[path])
        found[path.name] = {"reference": reference.name, "rows": rows, "worst": worst(rows)}
    return found


def layer_markdown(report: dict, images: int) -> str:
    """The per-layer tables: one per file, worst ops first named, then every op in execution order."""
    lines = [f"# Per-layer quantization error\n\nEach op's output in the quantized file against the same op in its "
             f"float32 sibling, on the first {images} test images, both run in LiteRT. *Error*: RMS(difference) / "
             f"RMS(float output), accumulated from the input to that op. *Added*: that error less the largest "
             f"arriving at the op (negative where the op averages error away). Keep a layer in float with "
             f"format `int8_mixed` and `convert.float_layers`.\n"]
    for name, found in report.items():
        worst_ops = ", ".join(f"`{r['layer']}` (+{r['added']:.2%})" for r in found["worst"] if r["added"] > 0)
        lines.append(f"## {name}\n\nAgainst {found['reference']}. Adds the most: {worst_ops or 'none'}.\n")
        lines.append(markdown_table(["#", "op", "layer", "error", "added"],
                                    [[r["op_index"], r["op"], r["layer"], f"{r['error']:.2%}", f"{r['added']:+.2%}"]
                                     for r in found["rows"]], align="rrlrr"))
    return "\n".join(lines)


def work(job: dict) -> dict:
    """The child's part (:func:`pipeline.core.runner.run_child`)."""
    x = np.load(job["x"])
    try:
        return {"rows": compare(_run(job["float"], x), _run(job["quant"], x))}
    except ValueError as exc:  # LiteRT reports unloadable models and shape mismatches as ValueError
        raise JobError(f"cannot run in LiteRT: {first_line(exc)}") from None
