"""Reading a ``.tflite`` file's structure (its flatbuffer) without running it: the input and output
tensors with their names, shapes, types and quantization, as an app developer calls them; and what its
weights are (zeros, distinct values), read from its constant buffers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import PipelineError


def _schema():
    from ai_edge_litert import schema_py_generated  # plain Python over the flatbuffers package

    return schema_py_generated


def _tensor(schema, subgraph, index: int, name: str | None) -> dict:
    tensor = subgraph.Tensors(index)
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    found = {"name": name or tensor.Name().decode(errors="replace"),
             "shape": [int(d) for d in (tensor.ShapeAsNumpy() if tensor.ShapeLength() else [])],
             "dtype": types.get(tensor.Type(), f"type {tensor.Type()}")}
    quant = tensor.Quantization()
    if quant is not None and quant.ScaleLength() == 1:
        found["quantization"] = {"scale": float(quant.Scale(0)), "zero_point": int(quant.ZeroPoint(0))}
    return found


def io_details(path: Path) -> dict[str, list[dict]]:
    """{"inputs": [...], "outputs": [...]} of the main subgraph, each named as the model's signature
    names it (a task name, for a multi-task model) when it has one."""
    schema = _schema()
    try:
        model = schema.Model.GetRootAs(path.read_bytes(), 0)
        subgraph = model.Subgraphs(0)
        names: dict[str, dict[int, str]] = {"inputs": {}, "outputs": {}}
        if model.SignatureDefsLength():
            signature = model.SignatureDefs(0)
            for i in range(signature.InputsLength()):
                names["inputs"][signature.Inputs(i).TensorIndex()] = signature.Inputs(i).Name().decode()
            for i in range(signature.OutputsLength()):
                names["outputs"][signature.Outputs(i).TensorIndex()] = signature.Outputs(i).Name().decode()
        return {"inputs": [_tensor(schema, subgraph, i, names["inputs"].get(i)) for i in subgraph.InputsAsNumpy()],
                "outputs": [_tensor(schema, subgraph, i, names["outputs"].get(i)) for i in subgraph.OutputsAsNumpy()]}
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read it ({exc.strerror or exc.__class__.__name__})") from None
    except Exception as exc:  # a malformed flatbuffer fails in many ways (IndexError, struct.error, ...)
        raise PipelineError(f"{path}: not a readable TFLite flatbuffer ({exc.__class__.__name__})") from None


# tensor types whose constant buffers are weights (int32 constants are biases, shapes and indices)
WEIGHT_TYPES = {"INT8": "int8", "UINT8": "uint8", "INT16": "int16", "FLOAT16": "float16", "FLOAT32": "float32"}


def weight_stats(blob: bytes) -> dict:
    """What the file's weights are, read from its constant buffers: per weight tensor (a constant of at
    least two dimensions and of a weight type: kernels, not biases or shapes) its values, how many are
    zero, how many distinct values it holds and the most in one output channel; and over them all, the
    share of zeros and the largest counts of distinct values. This is the file's own truth: zeros that pruning made and quantization or
    conversion kept, and the few values that clustering leaves."""
    try:
        return _weight_stats(_schema(), blob)
    except Exception as exc:  # a malformed flatbuffer fails in many ways (IndexError, struct.error, ...)
        raise PipelineError(f"its weights cannot be read: not a readable TFLite flatbuffer "
                            f"({exc.__class__.__name__})") from None


def _weight_stats(schema, blob: bytes) -> dict:
    model = schema.Model.GetRootAs(blob, 0)
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    subgraph = model.Subgraphs(0)
    tensors = []
    for i in range(subgraph.TensorsLength()):
        tensor = subgraph.Tensors(i)
        kind = WEIGHT_TYPES.get(types.get(tensor.Type(), ""))
        if kind is None or tensor.ShapeLength() < 2:
            continue
        buffer = model.Buffers(tensor.Buffer())
        if buffer is None or buffer.DataLength() == 0:
            continue
        values = np.frombuffer(buffer.DataAsNumpy().tobytes(), dtype=kind)
        tensors.append({"name": tensor.Name().decode(errors="replace"), "dtype": kind, "values": int(values.size),
                        "zeros": int(np.count_nonzero(values == 0)), "unique": int(np.unique(values).size),
                        "unique_per_channel": _per_channel(values, tensor)})
    total = sum(t["values"] for t in tensors)
    return {"tensors": tensors, "values": total,
            "zero_share": round(sum(t["zeros"] for t in tensors) / total, 4) if total else 0.0,
            "max_unique": max((t["unique"] for t in tensors), default=0),
            "max_unique_per_channel": max((t["unique_per_channel"] for t in tensors), default=0)}


def _per_channel(values: np.ndarray, tensor) -> int:
    """The most distinct values in one output channel: along the quantized dimension of a tensor with a
    scale per channel (int8 kernels; their values repeat within a channel, as clustering leaves them,
    not across channels, whose scales differ), along the first dimension otherwise."""
    shape = tensor.ShapeAsNumpy()
    quantization = tensor.Quantization()
    axis = quantization.QuantizedDimension() if quantization is not None and quantization.ScaleLength() > 1 else 0
    if values.size != int(np.prod(shape)) or not 0 <= axis < len(shape):
        raise ValueError("a weight buffer that does not fit its tensor's shape")
    channels = np.moveaxis(values.reshape(shape), axis, 0).reshape(int(shape[axis]), -1)
    return max(int(np.unique(channel).size) for channel in channels)


def op_output_names(blob: bytes) -> list[str]:
    """The name of each op's first output tensor in the main subgraph, in execution order: the name the
    converter gives a computed tensor lists the Keras layers it comes from."""
    schema = _schema()
    subgraph = schema.Model.GetRootAs(blob, 0).Subgraphs(0)
    return [subgraph.Tensors(int(op.OutputsAsNumpy()[0])).Name().decode(errors="replace")
            for op in (subgraph.Operators(i) for i in range(subgraph.OperatorsLength())) if op.OutputsLength()]


def op_kinds(blob: bytes) -> list[str]:
    """Each op's builtin name (CONV_2D, QUANTIZE, ...) and the type of its first output, in execution order:
    ``CONV_2D:int8``."""
    schema = _schema()
    model = schema.Model.GetRootAs(blob, 0)
    subgraph = model.Subgraphs(0)
    builtins = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    kinds = []
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        out = subgraph.Tensors(int(op.OutputsAsNumpy()[0])) if op.OutputsLength() else None
        kinds.append(f"{builtins.get(builtin, builtin)}:{types.get(out.Type(), '?') if out else '-'}")
    return kinds
