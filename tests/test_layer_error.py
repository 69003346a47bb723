"""Per-layer quantization error and selective quantization (format int8_mixed)."""

import json

import numpy as np
import pytest
from conftest import ROOT, tiny_dataset

from pipeline.core.contract import InputContract
from pipeline.core.errors import PipelineError
from pipeline.core.params import ConvertParams, ParamsError, load_params
from pipeline.export import litert
from pipeline.export.flatbuffer import op_kinds
from pipeline.export.layer_error import layer_errors, layers_of
from pipeline.export.tflite import Exporter, representative_data

DATA = tiny_dataset()
SCALED = InputContract((1 / 255,), (0.0,), "scaled to [0, 1]")  # how the model below was trained


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small model with two convolutions, trained briefly, in float32, int8 and int8 with its second
    convolution kept in float."""
    from pipeline.core.framework import tf

    k = tf.keras
    model = k.Sequential([k.Input(DATA.input_shape), k.layers.Conv2D(6, 3, activation="relu", name="c1"),
                          k.layers.Conv2D(6, 3, activation="relu", name="c2"), k.layers.GlobalAveragePooling2D(name="gap"),
                          k.layers.Dense(DATA.num_classes, activation="softmax", name="head")], name="m")
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(DATA.x_train.astype("float32") / 255, DATA.y_train, epochs=20, batch_size=32, verbose=0)
    representative = representative_data(DATA, ConvertParams(representative_samples=60), seed=0) / 255
    folder = tmp_path_factory.mktemp("layers")
    found = {}
    with Exporter(model) as exporter:
        for fmt, layers in (("float32", ()), ("int8", ()), ("int8_mixed", ("c2",))):
            found[fmt] = folder / f"m.{fmt}.tflite"
            found[fmt].write_bytes(exporter.convert(fmt, representative, layers))
        with pytest.raises(PipelineError, match=r"convert\.float_layers: no layer named 'c9' in the model; "
                                                r"its layers: c1, c2, gap, head$"):
            exporter.convert("int8_mixed", representative, ("c9",))
    return found


def test_layers_are_read_from_the_converters_tensor_names():
    assert layers_of("m/relu/Relu;m/bn/FusedBatchNormV3;m/conv/Conv2D") == ("conv", "bn", "relu")
    assert layers_of("m/c1/Relu;m/c1/BiasAdd;m/c1/Conv2D;m/c1/BiasAdd/ReadVariableOp2") == ("c1",)
    assert layers_of("m/quant_c1/Conv2D") == ("c1",)  # a QAT wrapper names the layer it wraps
    assert layers_of("StatefulPartitionedCall:0") == () and layers_of("tfl.quantize") == ()


def test_int8_mixed_runs_the_named_layer_in_float_and_the_rest_in_int8(files):
    assert all(kind.endswith(":int8") for kind in op_kinds(files["int8"].read_bytes()))
    kinds = op_kinds(files["int8_mixed"].read_bytes())
    assert kinds[:4] == ["CONV_2D:int8", "DEQUANTIZE:float32", "CONV_2D:float32", "QUANTIZE:int8"]
    assert sum(kind.endswith(":float32") for kind in kinds) == 2
    labels = {fmt: next(iter(litert.evaluate(path, DATA.x_test, 64, [], 0, 0, contract=SCALED)[0].values()))
              for fmt, path in files.items()}
    agreement = {fmt: np.mean(labels[fmt] == labels["float32"]) for fmt in ("int8", "int8_mixed")}
    assert agreement["int8_mixed"] >= agreement["int8"] - 0.03 and agreement["int8_mixed"] >= 0.9, agreement


def test_each_op_of_a_quantized_file_is_compared_with_its_float_twin(files):
    x = DATA.x_test[:40]
    same = layer_errors(files["float32"], files["float32"], x, SCALED)
    assert [r["layer"] for r in same] == ["input", "c1", "c2", "gap", "head", "output"]
    assert all(r["error"] == 0 and r["added"] == 0 for r in same)
    quantized = layer_errors(files["float32"], files["int8"], x, SCALED)
    assert [r["layer"] for r in quantized] == [r["layer"] for r in same]
    assert all(0 < r["error"] < 0.2 for r in quantized[1:]), quantized
    assert quantized[1]["added"] == quantized[1]["error"]  # the first op adds all the error it has
    mixed = layer_errors(files["float32"], files["int8_mixed"], x, SCALED)
    by_layer = {r["layer"]: r for r in mixed}
    assert by_layer["c2"]["op"] == "CONV_2D"  # matched across the DEQUANTIZE before it
    # kept in float, c2 adds less than its int8 twin does; the rounding back to int8 is a row of its own
    assert by_layer["c2"]["added"] < {r["layer"]: r for r in quantized}["c2"]["added"]
    assert by_layer["quantize c2"]["op"] == "QUANTIZE" and by_layer["quantize c2"]["added"] > 0
    assert [r["layer"] for r in mixed] == ["input", "c1", "c2", "quantize c2", "gap", "head", "output"]


@pytest.mark.bad_input(".tflite files")
def test_a_corrupt_file_fails_in_one_line(files, tmp_path):
    bad = tmp_path / "bad.int8.tflite"
    bad.write_bytes(files["int8"].read_bytes()[:500])
    with pytest.raises(PipelineError, match=r"bad\.int8\.tflite: ") as info:
        layer_errors(files["float32"], bad, DATA.x_test[:4], SCALED)
    assert "\n" not in str(info.value)


@pytest.mark.bad_input("params")
@pytest.mark.parametrize("overrides, message", [
    (["convert.formats=[int8_mixed]"], r"convert\.float_layers: format int8_mixed needs the Keras layers"),
    (["convert.float_layers=[c1]"], r"convert\.float_layers: only format int8_mixed keeps layers in float"),
    (["convert.formats=[int8_mixed]", "convert.float_layers=[c1, c1]"], r"convert\.float_layers: names a layer twice"),
    (["convert.formats=[int8_mixed]", "convert.float_layers=['']"], r"convert\.float_layers: must list Keras layer"),
    (["convert.formats=[int8_mixed]", "convert.float_layers=[3]"], r"convert\.float_layers: expected a list of str"),
    (["validate.layer_error_images=-1"], r"validate\.layer_error_images: must be in \[0, 10_000\]"),
])
def test_selective_quantization_params_refuse_misuse(overrides, message):
    with pytest.raises(ParamsError, match=message):
        load_params(ROOT / "params.yaml", overrides)


def test_validate_writes_the_per_layer_tables_of_each_quantized_file(smoke_project):
    out = smoke_project / "tflite_out"
    found = json.loads((out / "smoke.layers.json").read_text())
    assert found["images"] == 100
    assert {name: f["reference"] for name, f in found["files"].items()} == {
        "smoke.float16.tflite": "smoke.float32.tflite", "smoke.dynamic_int8.tflite": "smoke.float32.tflite",
        "smoke.int8.tflite": "smoke.float32.tflite", "smoke.pruned.float16.tflite": "smoke.pruned.float32.tflite",
        "smoke.pruned.dynamic_int8.tflite": "smoke.pruned.float32.tflite",
        "smoke.pruned.int8.tflite": "smoke.pruned.float32.tflite"}
    int8 = found["files"]["smoke.int8.tflite"]
    assert int8["rows"][-1]["error"] > 0 and int8["worst"][0]["added"] == max(r["added"] for r in int8["rows"])
    text = (out / "smoke.layers.md").read_text()
    assert "## smoke.int8.tflite" in text and f"`{int8['worst'][0]['layer']}`" in text
    assert (out / "smoke.layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
