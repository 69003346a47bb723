"""Reading a ``.tflite`` file's structure (its flatbuffer) without running it: the input and output
tensors with their names, shapes, types and quantization, as an app developer calls them."""

from __future__ import annotations

from pathlib import Path

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
