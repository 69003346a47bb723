"""Loading and saving Keras models safely, with the record beside them."""

from __future__ import annotations

import json
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

from .artifacts import save_with_record
from .errors import PipelineError, short

MAX_CONFIG_BYTES = 64 << 20  # a model's architecture JSON; its weights are separate and may be larger
# Layers that Keras builds from a TensorFlow function named in the file; these are the namespaces of
# pure tensor maths. Anything else (tf.py_function, tf.numpy_function, tf.io, tf.print...) is refused.
TF_OP_NAMESPACES = ("__operators__", "math", "nn", "image", "linalg", "signal", "bitwise", "dtypes")
TF_OP_FUNCTIONS = {"reshape", "concat", "stack", "squeeze", "expand_dims", "transpose", "cast", "gather",
                   "split", "pad", "tile", "identity", "clip_by_value", "where", "shape", "ones_like",
                   "zeros_like", "broadcast_to", "reduce_mean", "reduce_sum", "reduce_max", "rank", "slice"}
# class names of Keras 2 built-ins that are not attributes of the public layer/initializer modules
KERAS_MODULES = ("keras", "tf_keras", "tensorflow_model_optimization")  # where built-in classes live
KERAS_CLASSES = {"Functional", "Sequential", "Model", "TFOpLambda", "SlicingOpLambda", "Policy",
                 "PruneLowMagnitude",
                 "__keras_tensor__", "DTypePolicy", "FloatDTypePolicy"}  # Keras 3's names for tensors and dtypes


def _model_config(path: Path) -> Any:
    """The architecture JSON of a ``.keras`` zip or a Keras ``.h5`` file, read without Keras."""
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                info = archive.getinfo("config.json")
                if info.file_size > MAX_CONFIG_BYTES:
                    raise PipelineError(f"{path}: its config.json is {info.file_size:,} bytes; not a model this "
                                        "pipeline loads")
                text = archive.read(info)
        else:
            import h5py

            with h5py.File(path, "r") as f:
                text = f.attrs.get("model_config")
                if not isinstance(text, (str, bytes)):
                    raise PipelineError(f"{path}: an HDF5 file without a model_config (weights only?); give a "
                                        "whole model saved by model.save")
                if len(text) > MAX_CONFIG_BYTES:
                    raise PipelineError(f"{path}: its model_config is {len(text):,} bytes; not a model this "
                                        "pipeline loads")
        return json.loads(text)
    except PipelineError:
        raise
    except KeyError:
        raise PipelineError(f"{path}: not a Keras model file (no config.json in the archive)") from None
    except (OSError, ValueError, TypeError, RuntimeError, NotImplementedError, EOFError, zlib.error,
            zipfile.BadZipFile, RecursionError) as exc:
        raise PipelineError(f"{path}: not a Keras model file ({exc.__class__.__name__})") from None


def _is_builtin(class_name: str) -> bool:
    from .framework import keras, tfmot

    if class_name in KERAS_CLASSES:
        return True
    # TF-MOT's quantize wrappers, configs and quantizers: what a quantization-aware model is made of
    if any(class_name in objects for objects in tfmot.quantization.keras.quantize_scope().custom_objects):
        return True
    modules = (keras.layers, keras.initializers, keras.regularizers, keras.constraints)
    return any(isinstance(getattr(module, class_name, None), type) for module in modules)


def unsafe_parts(config: Any) -> list[str]:
    """What in a model's config would run code of the file's author on load, or is not a Keras
    built-in: Lambda layers (they carry Python bytecode), serialised functions, custom classes, and
    TensorFlow-op layers outside pure tensor maths. Empty for a model safe to load."""
    found: list[str] = []
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        # compile_config (optimizer, loss) is never deserialised: models are loaded with compile=False
        stack.extend(value for key, value in node.items() if key != "compile_config")
        name = node.get("class_name")
        config = node.get("config") if isinstance(node.get("config"), dict) else {}
        layer = f" (layer {config['name']!r})" if isinstance(config.get("name"), str) else ""
        if "function_type" in node:
            found.append(f"a serialised Python function ({node.get('function_type')})")
        if not isinstance(name, str):
            continue
        registered = node.get("registered_name") or ""
        module = node.get("module")
        if module is not None and not (isinstance(module, str) and module.split(".")[0] in KERAS_MODULES):
            found.append(f"class {name!r} from module {short(module)}{layer} (Keras would import it)")
        elif registered and registered != name:
            found.append(f"class {name!r} registered as {short(registered)}{layer}")
        elif name == "Lambda":
            found.append(f"a Lambda layer{layer}: its Python code would run on load")
        elif ">" in name or ">" in registered or not _is_builtin(name):
            found.append(f"custom class {(registered or name)!r}{layer}")
        elif name in ("TFOpLambda", "SlicingOpLambda"):
            function = str(config.get("function", ""))
            head, dot, _ = function.partition(".")
            if not (head in TF_OP_NAMESPACES if dot else function in TF_OP_FUNCTIONS):
                found.append(f"a TensorFlow op layer{layer} calling tf.{function}")
    return found


def load_model(path: Path):
    """Load a ``.keras`` or ``.h5`` model without compiling it and without running code from the file.

    Before Keras sees the file, its architecture is read as plain JSON and refused if anything in it
    is not a Keras built-in (:func:`unsafe_parts`); Keras' own ``safe_mode`` then guards ``.keras``
    files a second time. ``.h5`` files have no safe mode in Keras, so the first check is what keeps
    a Lambda layer's bytecode from running. Anything that is not a loadable Keras model becomes a
    PipelineError naming the file.
    """
    from .model_files import needs_tf_keras

    if not path.exists():
        raise PipelineError(f"{path} not found")
    needs_tf_keras(path)
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise PipelineError(f"{path}: not a Keras model file (a .keras file is a zip archive)")
    if path.suffix not in (".keras", ".h5"):
        raise PipelineError(f"{path}: unsupported model file; expected .keras or .h5")
    unsafe = sorted(set(unsafe_parts(_model_config(path))), key=lambda part: "Lambda" not in part)
    if unsafe:
        more = f" and {len(unsafe) - 1} more" if len(unsafe) > 1 else ""
        raise PipelineError(f"{path}: refused, not loaded: it holds {unsafe[0]}{more}; only Keras built-in "
                            "layers are loaded (rebuild the model without it)")
    from .framework import keras, tfmot

    try:
        with tfmot.sparsity.keras.prune_scope(), tfmot.quantization.keras.quantize_scope():
            model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for bad files; all mean "cannot load"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise PipelineError(f"{path}: cannot load Keras model: {first[:300]}") from None
    return flatten_nested(model)


NESTED = ("Functional", "Sequential", "Model")


def _replay(model, inputs: list, owners: dict[str, Any]) -> list:
    """Call the layers of the graph ``model`` on ``inputs`` (tensors standing for ``model.inputs``), in
    its own order, descending into every nested model, so that no model appears as a layer. ``owners``:
    layer name -> the layer holding it; a nested layer whose name another layer holds is renamed
    ``<nested model>_<name>``. Returns the outputs, flat."""
    from .framework import tf

    if not getattr(model, "_is_graph_network", False):
        raise PipelineError(f"nested model {model.name!r} is a subclassed model; only functional and sequential "
                            "models can be flattened (rebuild it with the functional API)")
    usage = model._tensor_usage_count
    tensors = {str(id(x)): [y] * usage[str(id(x))] for x, y in zip(model.inputs, inputs)}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input or any(i not in tensors for i in node.flat_input_ids):
                continue
            args, kwargs = node.map_arguments(tensors)
            layer = node.layer
            if type(layer).__name__ in NESTED:
                outputs = _replay(layer, tf.nest.flatten((args, kwargs)), owners)
            else:
                while owners.setdefault(layer.name, layer) is not layer:
                    layer._name = f"{model.name}_{layer.name}"
                outputs = layer(*args, **kwargs)
            for output_id, y in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
                tensors[output_id] = [y] * usage[output_id]
    return [tensors[str(id(x))].pop() for x in model.outputs]


def flatten_nested(model):
    """``model`` with every nested model (a keras.applications backbone inside a functional model)
    inlined into one graph of plain layers, sharing their weights: the same outputs, and summary,
    pruning, shrinking and sensitivity all see every layer. ``model`` itself if it nests none."""
    from .framework import keras, tf

    if not any(type(layer).__name__ in NESTED for layer in model.layers):
        return model
    if len(model.inputs) != 1:
        raise PipelineError(f"{model.name}: a model with {len(model.inputs)} inputs; an image classifier has one")
    inputs = keras.Input(model.input_shape[1:], dtype=model.inputs[0].dtype, name=model.input_names[0])
    owners = {layer.name: layer for layer in model.layers if type(layer).__name__ not in NESTED}
    outputs = tf.nest.pack_sequence_as(model._nested_outputs, _replay(model, [inputs], owners))
    return keras.Model(inputs, outputs, name=model.name)


def save_model(model, path: Path, record: dict[str, Any]) -> None:
    def save(tmp: Path) -> None:
        with warnings.catch_warnings():  # HDF5 is chosen on purpose (artifacts.aware_path): no "legacy" warning
            warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy", category=UserWarning)
            model.save(tmp)

    save_with_record(path, save, record)


def check_fits_data(model, data, path: Path) -> None:
    """Refuse a model (a tf_keras model, or a :class:`~pipeline.core.model_files.LoadedModel`) whose input
    shape, outputs (one per task) or number of classes do not match the dataset."""
    expected = tuple(model.input_shape[1:] if not hasattr(model, "classes") else model.input_shape)
    if expected != data.input_shape:
        raise PipelineError(f"{path}: model input shape {expected} does not match the data's {data.input_shape}")
    names = list(model.output_names)
    classes = getattr(model, "classes", None) or {n: o.shape[-1] for n, o in zip(names, model.outputs)}
    if data.tasks and sorted(names) != sorted(data.tasks):
        raise PipelineError(f"{path}: model outputs ({', '.join(names)}) are not the data's tasks "
                            f"({', '.join(data.tasks)})")
    if not data.tasks and len(names) != 1:
        raise PipelineError(f"{path}: model has {len(names)} outputs ({', '.join(names)}); the data has one task")
    for name in names:
        if classes[name] != data.num_classes:
            raise PipelineError(f"{path}: output {name} predicts {classes[name]} classes, the data has "
                                f"{data.num_classes}")
