"""Keras models to TFLite bytes: float32, float16, dynamic-range int8, full-integer int8, int8 with named
layers kept in float (selective quantization) and int16x8 from the TFLite converter; and the float32
file through ai-edge-quantizer's recipes (the ``aeq_*`` formats), the second backend."""

from __future__ import annotations

import gc
import tempfile

import numpy as np

from ..core.errors import PipelineError


def representative_data(data, convert, seed: int) -> np.ndarray:
    """The calibration images of ``convert`` params (ConvertParams): ``representative_samples`` images of
    the training or validation split (never test images), chosen with a seed, either at random or
    stratified (each class, of the first task, in proportion to its share of the split, at least one
    each when there are enough), fed as the model's input (``data.contract``)."""
    x, y = (data.x_train, data.y_train) if convert.calibration_source == "train" else (data.x_val, data.y_val)
    count = min(convert.representative_samples, len(x))
    rng = np.random.default_rng(seed)
    if not convert.calibration_stratified:
        idx = rng.choice(len(x), size=count, replace=False)
    else:
        strata = y if y.ndim == 1 else y[:, 0]
        classes, sizes = np.unique(strata, return_counts=True)
        share = np.floor(count * sizes / len(x)).astype(int)
        if count >= len(classes):
            share = np.maximum(share, 1)
        for i in np.argsort(-sizes):  # what rounding left over, to the largest classes first
            if share.sum() >= count:
                break
            share[i] += min(sizes[i] - share[i], count - share.sum())
        while share.sum() > count:  # one each for many classes may overshoot a tiny count
            share[np.argmax(share)] -= 1
        idx = np.concatenate([rng.choice(np.flatnonzero(strata == c), size=n, replace=False)
                              for c, n in zip(classes, share) if n])
    return data.contract.apply(x[np.sort(idx)])


def _float16(converter, tf, representative) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


def _dynamic_int8(converter, tf, representative) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]


def _int8(converter, tf, representative) -> None:
    if representative is None:
        raise ValueError("full-integer int8 needs representative data")
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([sample[None]] for sample in representative)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8


def _int16x8(converter, tf, representative) -> None:
    """int16 activations, int8 weights (LiteRT's 16x8 quantization), float32 input and output: for models
    that lose too much at int8. Its kernels are LiteRT's reference ones on most ops: slower than int8."""
    if representative is None:
        raise ValueError("int16x8 needs representative data")
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([sample[None]] for sample in representative)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]


def _int8_mixed(converter, tf, representative):
    """Full-integer int8 except the ops of the layers named (``convert.float_layers``), which run in float32
    between a DEQUANTIZE and a QUANTIZE: the converter only calibrates, and the quantizer is then told
    which ops to leave alone."""
    _int8(converter, tf, representative)
    converter._experimental_calibrate_only = True  # noqa: SLF001 (the converter's route to selective int8)

    def finish(calibrated: bytes, float_layers: tuple[str, ...]) -> bytes:
        from tensorflow.lite.python.convert import mlir_quantize

        return mlir_quantize(calibrated, fully_quantize=True, input_data_type=tf.int8, output_data_type=tf.int8,
                             denylisted_nodes=float_op_outputs(calibrated, float_layers))
    return finish


def float_op_outputs(model: bytes, layers: tuple[str, ...]) -> list[str]:
    """The output tensor names of the ops in ``model`` (a calibrated float file) that compute any of the
    Keras ``layers``. A layer no op computes is refused, with the layers the file has."""
    from .flatbuffer import op_output_names
    from .layer_error import layers_of

    names = op_output_names(model)
    # a calibrated file may suffix an op's name ("Conv2D1"); the layer segments are as Keras wrote them
    found = {layer for name in names for layer in layers_of(name)}
    missing = [layer for layer in layers if layer not in found]
    if missing and not found:
        raise PipelineError("convert.float_layers: this model's converted ops are not named after Keras layers (a "
                            "SavedModel or a Keras 3 export), so no layer can be kept in float by name")
    if missing:
        names = sorted(found)
        shown = ", ".join(names[:30]) + (f" and {len(names) - 30} more" if len(names) > 30 else "")
        raise PipelineError(f"convert.float_layers: no layer named {', '.join(repr(m[:60]) for m in missing[:3])} "
                            f"in the model; its layers: {shown}")
    return [name for name in names if set(layers_of(name)) & set(layers)]


# format name -> how it sets up the converter (converter, tf, representative images); it may return a
# function (converted bytes, float layers) -> final bytes. The registry of formats: params'
# convert.formats accepts these names, and a new format is one function and one entry.
CONVERTERS = {"float32": lambda converter, tf, representative: None, "float16": _float16,
              "dynamic_int8": _dynamic_int8, "int8": _int8, "int8_mixed": _int8_mixed, "int16x8": _int16x8}
# the second backend: ai-edge-quantizer's recipes, applied to the float32 file (format name -> recipe)
AEQ_RECIPES = {"aeq_int8": "static_wi8_ai8", "aeq_int16x8": "static_wi8_ai16", "aeq_dynamic_int8": "dynamic_wi8_afp32",
               "aeq_weight_only_int8": "weight_only_wi8_afp32"}
FORMATS = tuple(CONVERTERS) + tuple(AEQ_RECIPES)
DEFAULT_FORMATS = ("float32", "float16", "dynamic_int8", "int8")  # convert.formats unless params say more
# formats that read calibration images (and so the dataset): their records hash it
CALIBRATED = ("int8", "int8_mixed", "int16x8", "aeq_int8", "aeq_int16x8")


def _ai_edge_quantize(float_model: bytes, fmt: str, representative: np.ndarray | None) -> bytes:
    """The float32 file through ai-edge-quantizer's recipe for ``fmt``, calibrated on ``representative``
    (one image per step, fed to the file's serving signature) when the recipe needs it. Its static int8
    and int16 recipes quantize the input and output too (int8, int16)."""
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError:
        raise PipelineError(f"format {fmt} needs ai-edge-quantizer: pip install 'mobiledeploy[quantizer]' "
                            "(make installs it)") from None
    from ai_edge_litert.interpreter import Interpreter

    q = quantizer.Quantizer(float_model, getattr(recipe, AEQ_RECIPES[fmt])())
    calibration = None
    if q.need_calibration:
        if representative is None:
            raise ValueError(f"{fmt} needs representative data")
        runner = Interpreter(model_content=float_model).get_signature_list()
        (key, signature), = runner.items()
        (name,) = signature["inputs"]
        calibration = q.calibrate({key: [{name: sample[None].astype(np.float32)} for sample in representative]})
    return bytes(q.quantize(calibration, enable_progress_report=False).quantized_model)


class Exporter:
    """Converts one model to any number of TFLite formats, exporting it once. ``model``: a tf_keras model,
    or a :class:`~pipeline.core.model_files.LoadedModel` (a Keras 3 model goes through its own SavedModel
    export, a SavedModel is converted from its folder).

    A tf_keras model is exported as a SavedModel holding only its variables and one inference function
    (``model(x, training=False)``, outputs keyed by the model's output names, the signature Keras itself
    writes): the converter reloads that folder for every format, and a folder of one function loads in a
    fraction of the time of Keras's own, which serializes every layer's functions. Export happens at the
    first conversion, so an exporter whose formats are all up to date costs nothing. The model must not
    change while the exporter is open."""

    def __init__(self, model):
        self.model = model
        self.kind = getattr(model, "kind", "tf_keras")
        self.name = getattr(model, "path", None) or model.name
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._float: bytes | None = None  # the float32 file, which ai-edge-quantizer's recipes start from

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _saved_model(self) -> str:
        from ..core.framework import tf

        if self.kind == "saved_model":
            return str(self.model.path)
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=".export-")
            if self.kind == "keras3":
                self.model.model.export(self._tmp.name, format="tf_saved_model", verbose=False)
            else:
                keras_model = self.model.keras if hasattr(self.model, "kind") else self.model
                module, signatures = _inference_module(keras_model, tf)
                tf.saved_model.save(module, self._tmp.name, signatures=signatures)
        return self._tmp.name

    def convert(self, fmt: str, representative: np.ndarray | None = None, float_layers: tuple[str, ...] = ()
                ) -> bytes:
        """The model in format ``fmt`` (``representative``: calibration images, for :data:`CALIBRATED`;
        ``float_layers``: the Keras layers ``int8_mixed`` keeps in float)."""
        from ..core.framework import native_output_silenced, tf  # TensorFlow only when converting

        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        if fmt in AEQ_RECIPES and self._float is None:
            self._float = self.convert("float32")
        with native_output_silenced():
            try:
                if fmt in AEQ_RECIPES:
                    return _ai_edge_quantize(self._float, fmt, representative)
                converter = tf.lite.TFLiteConverter.from_saved_model(self._saved_model())
                finish = CONVERTERS[fmt](converter, tf, representative)
                # the converter ends with a full garbage collection, which walks every object TensorFlow and
                # Keras hold (about half a second); objects made before the conversion are left out of it
                gc.freeze()
                try:
                    blob = converter.convert()
                finally:
                    gc.unfreeze()
                return finish(blob, tuple(float_layers)) if finish else blob
            except PipelineError:
                raise
            except Exception as exc:  # the converter's errors are long MLIR dumps; keep the first line
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
                raise PipelineError(f"TFLite conversion to {fmt} failed for {self.name}: {first[:300]}") from None


def _inference_module(model, tf):
    """A module tracking ``model``'s variables, and its inference function as the serving signature."""
    specs = [tf.TensorSpec((None, *t.shape[1:]), t.dtype, name=name) for t, name in zip(model.inputs, model.input_names)]

    @tf.function(input_signature=specs)
    def serve(*inputs):
        outputs = model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)
        if isinstance(outputs, dict):  # a model built with named outputs returns them by name
            return dict(outputs)
        return dict(zip(model.output_names, outputs if isinstance(outputs, (list, tuple)) else [outputs]))

    module = tf.Module()
    module.variables_ = list(model.variables)
    module.serve = serve
    return module, {"serving_default": serve}


def to_tflite(model, fmt: str, representative: np.ndarray | None = None) -> bytes:
    """One model in one TFLite format (see :class:`Exporter`, for several formats of one model)."""
    with Exporter(model) as exporter:
        return exporter.convert(fmt, representative)
