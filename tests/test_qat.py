"""qat: TF-MOT quantization-aware training on every kind of architecture (its leading Rescaling
left in float), pqat keeping the pruned zeros into the int8 file, and quant-compare. (The qat stage,
its file, its validation and its refusals: the compression chain of test_structured.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SMOKE, fails_cleanly, run_cli, tiny_dataset
from test_architectures import BY_LAYER_KINDS

from pipeline import architectures
from pipeline.compression.qat import kept_in_float, qat_model, quantize_aware, quantized_layers
from pipeline.core.errors import PipelineError
from pipeline.core.framework import keras
from pipeline.core.params import ParamsError, QuantizeParams, load_params
from pipeline.export.flatbuffer import weight_stats
from pipeline.export.tflite import to_tflite
from pipeline.stages.qat import kernel_sparsity

WEIGHTED = ("Conv2D", "Dense", "DepthwiseConv2D", "SeparableConv2D")


def check_quantize_aware(model, aware: str) -> None:
    """``model`` fake-quantized: its Rescaling untouched, every weighted layer wrapped, outputs near the float's."""
    (scaling,) = kept_in_float(model)
    qat = quantize_aware(model, aware)
    kept = qat.get_layer(scaling)
    assert type(kept).__name__ == "Rescaling"
    assert kept.get_config()["scale"] == model.get_layer(scaling).get_config()["scale"]
    wrapped = {wrapper.layer.name: wrapper for wrapper in quantized_layers(qat)}
    weighted = [layer for layer in model.layers if type(layer).__name__ in WEIGHTED]
    assert {layer.name for layer in weighted} <= set(wrapped) and scaling not in wrapped
    for layer in weighted:  # the trained weights carried over
        theirs = {w.name.split("/")[-1]: w.numpy() for w in wrapped[layer.name].trainable_weights}
        for weight in layer.trainable_weights:
            np.testing.assert_array_equal(theirs[weight.name.split("/")[-1]], weight.numpy())
    x = np.random.default_rng(0).uniform(0, 255, (8, *model.input_shape[1:])).astype(np.float32)
    ours, theirs = model(x, training=False), qat(x, training=False)
    for name in (ours if isinstance(ours, dict) else {"out": ours}):
        a = ours[name] if isinstance(ours, dict) else ours
        b = theirs[name] if isinstance(theirs, dict) else theirs
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=0.06)  # fake quantization's noise only


@pytest.mark.parametrize("name", BY_LAYER_KINDS)
def test_every_kind_of_architecture_takes_qat_pqat_and_pcqat_with_its_rescaling_in_float(name):
    model = architectures.build(name, (28, 28, 1), 10, width=8)
    # cqat is TF-MOT's pcqat scheme with its sparsity flag off: the same registry, so the same layers
    # supported and wrapped (it is trained and converted in test_cluster)
    for aware in ("qat", "pqat", "pcqat"):
        check_quantize_aware(model, aware)


def test_a_multi_task_model_takes_qat_with_one_head_per_task():
    check_quantize_aware(architectures.build("plain_cnn", (28, 28, 1), 10, width=8, tasks=("a", "b")), "qat")


def test_a_layer_tf_mot_cannot_quantize_is_refused_naming_it():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.LayerNormalization(name="odd_norm")(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    for aware in ("qat", "pqat"):
        with pytest.raises(PipelineError, match=r"cannot quantize layer odd_norm \(LayerNormalization\)"):
            quantize_aware(model, aware)


def test_pqat_keeps_the_pruned_zeros_into_the_int8_file():
    data = tiny_dataset()
    model = architectures.build("tiny", data.input_shape, data.num_classes)
    for layer in model.layers:  # half of every kernel zeroed, as magnitude pruning leaves it
        if type(layer).__name__ in WEIGHTED:
            kernel = layer.kernel.numpy()
            kernel[np.abs(kernel) < np.median(np.abs(kernel))] = 0
            layer.kernel.assign(kernel)
    before = kernel_sparsity([layer for layer in model.layers if type(layer).__name__ in WEIGHTED])
    assert before >= 0.49
    found = {}
    for aware in ("qat", "pqat"):
        qat, keep = qat_model(model, data, QuantizeParams(aware=aware, epochs=2, learning_rate=3e-3), seed=0)
        assert keep.epochs_run == 2
        found[aware] = kernel_sparsity(quantized_layers(qat)), weight_stats(
            to_tflite(qat, "int8", data.x_train[:20].astype(np.float32)))["zero_share"]
    assert found["pqat"][0] >= before and found["pqat"][1] >= before - 0.01, found  # measured from the file
    assert found["qat"][0] < 0.1, found  # plain QAT lets the zeros move: the check can tell


def test_quantize_params_refuse_what_they_cannot_do():
    with pytest.raises(ParamsError, match="quantize.aware"):
        load_params("params.yaml", ["quantize.aware=cluster"])
    with pytest.raises(ParamsError, match="quantize.epochs"):
        load_params("params.yaml", ["quantize.epochs=0"])
    from pipeline.cli import cli

    paths = CliRunner().invoke(cli, ["paths", "--set", "quantize.aware=qat"]).output
    assert "QAT := models/fmnist_cnn.qat.h5" in paths and "tflite_out/fmnist_cnn.qat.int8.tflite" in paths
    assert "QAT := \n" in CliRunner().invoke(cli, ["paths"]).output


@pytest.mark.long
def test_quant_compare_measures_every_quantization_in_one_table(copy_of_smoke):
    """The smoke config's models through every quantization; the preserving schemes keep what they say,
    measured in the files."""
    run_cli("quant-compare", *SMOKE, "--set", "cluster.min_weights=100", "--set", "quantize.epochs=1",
            "--set", "cluster.epochs=1", cwd=copy_of_smoke)
    out = copy_of_smoke / "tflite_out" / "quant_compare"
    result = json.loads((out / "quant_compare.json").read_text())
    rows = {r["row"]: r for r in result["rows"]}
    assert [r["format"] for r in result["rows"]] == ["float32", "int8", "int16x8", "aeq_int8", "aeq_int16x8",
                                                     "aeq_dynamic_int8", "aeq_weight_only_int8"] + ["int8"] * 5
    assert all((out / r["file"]).is_file() and 0.5 < r["accuracy"] <= 1 for r in result["rows"])
    assert rows["prune → PTQ int8"]["zero_share"] >= 0.45  # smoke prunes to 50%
    assert rows["PQAT int8"]["zero_share"] >= rows["prune → PTQ int8"]["zero_share"] - 0.005
    assert rows["PCQAT int8"]["max_unique_per_channel"] <= 17  # 16 clusters and the zeros
    assert rows["float32 (baseline)"]["gzip_bytes"] > rows["PCQAT int8"]["gzip_bytes"]
    text = (out / "quant_compare.md").read_text()
    assert "| PCQAT int8 | `int8` |" in text and "QAT int8 against PTQ int8" in text


def test_quant_compare_needs_the_pruned_model(copy_of_smoke):
    proc = run_cli("quant-compare", *SMOKE, "--set", "prune.enabled=false", cwd=copy_of_smoke, check=False)
    fails_cleanly(proc, "quant-compare compares pruned rows too: it needs prune.enabled")


def test_quant_compare_shows_each_tasks_accuracy_of_a_multi_task_model():
    from pipeline.studies.quant_compare import markdown

    def row(name, top_left, bottom_right):
        return {"row": name, "format": "int8", "accuracy": (top_left + bottom_right) / 2, "bytes": 100,
                "gzip_bytes": 50, "p50_ms": 0.1, "zero_share": 0.0, "max_unique_per_channel": 200,
                "tasks": {"top_left": top_left, "bottom_right": bottom_right}}

    result = {"config": "mf", "trained": "a", "pruned": "b", "quantize_epochs": 1, "latency_runs": 3,
              "cluster": {"clusters": 16, "epochs": 1}, "wall_seconds": 1.0,
              "rows": [row("float32 (baseline)", 0.9, 0.8), row("PTQ int8", 0.89, 0.79), row("QAT int8", 0.9, 0.81),
                       row("PQAT int8", 0.9, 0.8), row("prune → PTQ int8", 0.9, 0.8)]}
    text = markdown(result)
    assert "| quantization | format | accuracy (mean) | top_left | bottom_right | vs float32 |" in text
    assert "| QAT int8 | `int8` | 85.50 | 90.00 | 81.00 | +0.50 |" in text
