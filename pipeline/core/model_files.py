"""Model files as users bring them to ``convert`` and ``validate``: a tf_keras ``.keras``/``.h5`` file,
a Keras 3 ``.keras`` file, or a TensorFlow SavedModel directory. Each is loaded under a guard that
runs none of its author's Python code (:func:`pipeline.core.keras_io.unsafe_parts` for Keras files,
Keras 3's ``safe_mode``; for a SavedModel, a scan of its graph for operations that read or write
files or call back into Python). The stages that train (``train``, ``prune``, ``shrink``) need a
tf_keras model, since TF-MOT works with Keras 2 only; they say so for the other kinds."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PipelineError, short

# Operations refused in what a SavedModel's serving signature runs (checked before TensorFlow loads
# it): they touch files, the network or the Python interpreter instead of computing on tensors. The
# saver's own functions (SaveV2, RestoreV2), which every SavedModel holds, are not run by serving.
UNSAFE_OPS = {"ReadFile", "WriteFile", "MatchingFiles", "PyFunc", "PyFuncStateless", "EagerPyFunc", "SaveV2", "Save",
              "SaveSlices", "MergeV2Checkpoints", "DeleteFile", "ImmutableConst", "LoadAndRemapMatrix",
              "PrintV2", "Print", "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "WholeFileReader",
              "WholeFileReaderV2", "FixedLengthRecordDataset", "TFRecordDataset", "TextLineDataset",
              "_Recv", "_Send", "Recv", "Send", "CollectiveReduce", "CollectiveReduceV2", "DatasetToTFRecord",
              "RestoreV2", "Restore", "RestoreSlice", "SummaryWriter", "WriteSummary", "WriteImageSummary",
              "WriteScalarSummary", "CreateSummaryFileWriter", "ShardedFilename"}
MAX_GRAPH_BYTES = 512 << 20


def keras_major(path: Path) -> int | None:
    """The major Keras version a ``.keras`` zip says it was saved by (None if it does not say)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if "metadata.json" not in archive.namelist():
                return None
            info = archive.getinfo("metadata.json")
            if info.file_size > 1 << 16:
                return None
            version = json.loads(archive.read(info)).get("keras_version", "")
    except (OSError, ValueError, zipfile.BadZipFile, AttributeError):
        return None
    head = str(version).split(".")[0]
    return int(head) if head.isdigit() else None


def kind_of(path: Path) -> str:
    """"saved_model", "keras3" or "tf_keras" for what ``path`` holds (tf_keras for anything else, whose
    loader then says what is wrong with it)."""
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise PipelineError(f"{path}: a folder without saved_model.pb; give a SavedModel folder, or a "
                                ".keras or .h5 file")
        return "saved_model"
    if path.suffix == ".keras" and path.is_file() and zipfile.is_zipfile(path) and (keras_major(path) or 2) >= 3:
        return "keras3"
    return "tf_keras"


def needs_tf_keras(path: Path) -> None:
    """One line if a command that needs a tf_keras model is given another kind, saying how to get one."""
    kind = kind_of(path)
    if kind == "tf_keras":
        return
    what = "a TensorFlow SavedModel" if kind == "saved_model" else "a Keras 3 file"
    raise PipelineError(f"{path} is {what}; this command needs a tf_keras (Keras 2) model: TF-MOT, which prunes, "
                        "works with Keras 2 only. `convert` and `validate` take this file as it is. To prune it, "
                        "build the same architecture with `import tf_keras as keras`, copy the weights layer by "
                        "layer (layer.set_weights(other.get_weights())) and save that model as .keras")


def path_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative paths and contents, in sorted order)."""
    from .artifacts import file_hash

    if path.is_file():
        return file_hash(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(file_hash(file).encode())
    return "sha256:" + digest.hexdigest()


def _serving_ops(graph) -> set[str]:
    """The operations the ``serving_default`` signature of a MetaGraphDef runs: the graph's nodes it
    depends on and, through them, every function they call (recursively)."""
    nodes = {node.name: node for node in graph.graph_def.node}
    functions = {f.signature.name: f for f in graph.graph_def.library.function}
    signature = graph.signature_def["serving_default"]
    todo = [t.name.split(":")[0] for t in signature.outputs.values()]
    seen_nodes, seen_functions, ops = set(), set(), set()

    def called(node) -> list[str]:
        return [name for attr in node.attr.values()
                for name in ([attr.func.name] if attr.HasField("func") else [f.name for f in attr.list.func])]

    def visit_function(name: str) -> None:
        if name in seen_functions or name not in functions:
            return
        seen_functions.add(name)
        for node in functions[name].node_def:
            ops.add(node.op)
            for inner in called(node):
                visit_function(inner)

    while todo:
        name = todo.pop()
        if name in seen_nodes or name not in nodes:
            continue
        seen_nodes.add(name)
        node = nodes[name]
        ops.add(node.op)
        todo.extend(i.lstrip("^").split(":")[0] for i in node.input)
        for function in called(node):
            visit_function(function)
    return ops


def unsafe_ops(path: Path) -> list[str]:
    """The operations :data:`UNSAFE_OPS` refuses among those the SavedModel's serving signature runs."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = path / "saved_model.pb"
    if pb.stat().st_size > MAX_GRAPH_BYTES:
        raise PipelineError(f"{pb}: larger than {MAX_GRAPH_BYTES >> 20} MiB; not a model this pipeline loads")
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(pb.read_bytes())
    except Exception:  # protobuf's DecodeError and friends
        raise PipelineError(f"{pb}: not a SavedModel (its saved_model.pb does not parse)") from None
    graphs = [g for g in saved.meta_graphs if "serving_default" in g.signature_def]
    if not graphs:
        raise PipelineError(f"{path}: the SavedModel has no serving_default signature to call")
    return sorted(_serving_ops(graphs[0]) & UNSAFE_OPS)


@dataclasses.dataclass
class LoadedModel:
    """A model to convert and to compare its ``.tflite`` files with: what the pipeline needs of it,
    whatever its kind."""
    path: Path
    kind: str
    model: Any  # the tf_keras or Keras 3 model, or the SavedModel's serving signature
    input_shape: tuple[int, ...]
    output_names: list[str]
    classes: dict[str, int]  # output name -> number of classes

    @property
    def keras(self):
        """The tf_keras model (what costs and the training stages need), or None for the other kinds."""
        return self.model if self.kind == "tf_keras" else None

    def predict(self, x, batch_size: int = 256, contract=None) -> dict[str, np.ndarray]:
        """Scores per output name for inputs ``x``: floats already through the input contract, or
        pixels (an array or image files) that ``contract`` turns into inputs one batch at a time."""
        parts: dict[str, list] = {name: [] for name in self.output_names}
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size]
            batch = contract.apply(batch) if contract is not None else np.asarray(batch, np.float32)
            if self.kind == "saved_model":
                (name,) = self.model.structured_input_signature[1]
                out = {k: v.numpy() for k, v in self.model(**{name: batch}).items()}
            else:
                result = self.model(batch, training=False)
                out = result if isinstance(result, dict) else dict(zip(self.output_names, result if isinstance(
                    result, (list, tuple)) else [result]))
            for name in self.output_names:
                parts[name].append(np.asarray(out[name]))
        return {name: np.concatenate(p) for name, p in parts.items()}


def _keras3(path: Path) -> LoadedModel:
    from . import keras_io

    unsafe = sorted(set(keras_io.unsafe_parts(keras_io._model_config(path))))
    if unsafe:
        raise PipelineError(f"{path}: refused, not loaded: it holds {unsafe[0]}; only Keras built-in layers are loaded")
    from .framework import keras3

    try:
        model = keras3().saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras 3 raises many types for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise PipelineError(f"{path}: cannot load this Keras 3 model: {first[:300]}") from None
    outputs = model.outputs
    names = list(getattr(model, "output_names", None) or [o.name.split("/")[0] for o in outputs])
    return LoadedModel(path, "keras3", model, tuple(model.input_shape[1:]), names,
                       {n: int(o.shape[-1]) for n, o in zip(names, outputs)})


def _saved_model(path: Path) -> LoadedModel:
    refused = unsafe_ops(path)
    if refused:
        raise PipelineError(f"{path}: refused, not loaded: its graph holds {', '.join(refused[:3])} (operations that "
                            "touch files or run Python, not tensor maths)")
    from .framework import native_output_silenced, tf

    try:
        with native_output_silenced():
            loaded = tf.saved_model.load(str(path))
        signature = loaded.signatures["serving_default"]
    except KeyError:
        raise PipelineError(f"{path}: the SavedModel has no serving_default signature to call") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise PipelineError(f"{path}: cannot load this SavedModel: {first[:300]}") from None
    inputs = signature.structured_input_signature[1]
    if len(inputs) != 1:
        raise PipelineError(f"{path}: its serving signature takes {len(inputs)} inputs ({short(list(inputs))}); an "
                            "image classifier takes one")
    (spec,) = inputs.values()
    outputs = signature.structured_outputs
    signature.keep_alive = loaded  # the signature's variables live as long as the loaded object
    return LoadedModel(path, "saved_model", signature, tuple(spec.shape[1:]), sorted(outputs),
                       {n: int(outputs[n].shape[-1]) for n in sorted(outputs)})


def load_any(path: Path) -> LoadedModel:
    """Load a tf_keras, Keras 3 or SavedModel model from ``path`` under the guards of this module."""
    if not path.exists():
        raise PipelineError(f"{path} not found")
    kind = kind_of(path)
    if kind == "saved_model":
        return _saved_model(path)
    if kind == "keras3":
        return _keras3(path)
    from .keras_io import load_model

    model = load_model(path)
    return LoadedModel(path, "tf_keras", model, tuple(model.input_shape[1:]), list(model.output_names),
                       {n: int(o.shape[-1]) for n, o in zip(model.output_names, model.outputs)})
