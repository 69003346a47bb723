"""The user's own model, as users bring it: input and output contracts, the app sidecar, any .tflite."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import fails_cleanly, new_project, run_cli, snapshot, tiny_dataset

from pipeline.core.contract import RAW, InputContract, declared, gives_probabilities, resolve
from pipeline.core.errors import PipelineError
from pipeline.core.framework import keras
from pipeline.core.params import ConvertParams, InputParams, load_params
from pipeline.export.tflite import representative_data
from pipeline.training.fit import fit_target, output_logits

# a quick user's config: Fashion-MNIST subset, two formats, short timing
QUICK = ("--set", "data.limit_train=3000", "--set", "data.limit_test=1000", "--set", "convert.formats=[float32, int8]",
         "--set", "convert.representative_samples=200", "--set", "validate.threads=[1]",
         "--set", "validate.latency_runs=20", "--set", "validate.warmup_runs=1")


def unit_input_model(x: np.ndarray, y: np.ndarray, logits: bool = False):
    """A user's CNN trained on pixels / 255 (the Keras tutorials' convention), with no Rescaling layer."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(x.shape[1:])
    h = keras.layers.MaxPooling2D()(keras.layers.Conv2D(16, 3, activation="relu")(inputs))
    h = keras.layers.MaxPooling2D()(keras.layers.Conv2D(16, 3, activation="relu")(h))
    out = keras.layers.Dense(10, activation=None if logits else "softmax")(keras.layers.Flatten()(h))
    model = keras.Model(inputs, out)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=logits), metrics=["accuracy"])
    model.fit(x.astype(np.float32) / 255, y, epochs=3, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def user_project(tmp_path_factory):
    """A project with a user's [0, 1]-input model trained on this config's own training split."""
    from pipeline.data import load_dataset

    project = new_project(tmp_path_factory.mktemp("user"))
    params = load_params(project / "params.yaml", list(QUICK[1::2]))
    data = load_dataset(params.data, params.seed)
    model = unit_input_model(data.x_train, data.y_train)
    model.save(project / "mine.keras")
    keras_accuracy = float(np.mean(np.argmax(model.predict(data.x_test / 255, verbose=0), -1) == data.y_test))
    return project, keras_accuracy


@pytest.mark.e2e
def test_a_unit_input_model_is_refused_until_declared_then_reported_as_keras_measures_it(user_project):
    project, keras_accuracy = user_project
    before = snapshot(project)
    fails_cleanly(run_cli("convert", "--model", "mine.keras", *QUICK, cwd=project, check=False),
                  "does not start with a Rescaling or Normalization layer", "input.pixels=unit")
    assert snapshot(project) == before
    declare = ("--set", "input.pixels=unit")
    run_cli("convert", "--model", "mine.keras", *QUICK, *declare, cwd=project)
    run_cli("validate", "--model", "mine.keras", *QUICK, *declare, cwd=project)
    report = json.loads((project / "tflite_out/user/mine.report.json").read_text())
    found = {e["format"]: e for e in report["artefacts"]}
    assert abs(found["float32"]["accuracy"] - keras_accuracy) <= 0.001, (found["float32"]["accuracy"], keras_accuracy)
    assert found["float32"]["keras_accuracy"] == pytest.approx(keras_accuracy, abs=1e-4)
    assert abs(found["int8"]["accuracy"] - found["float32"]["accuracy"]) <= 0.01
    assert keras_accuracy > 0.6  # a real model, not chance: the comparison above means something
    # the sidecar tells an app developer what the pipeline applied
    side = json.loads((project / "tflite_out/user/mine.int8.app.json").read_text())
    assert side["preprocessing"]["scale"] == [pytest.approx(1 / 255)] and side["input"]["dtype"] == "int8"
    assert side["input"]["quantization"]["scale"] > 0 and side["outputs"][0]["labels"][0] == "T-shirt/top"
    assert side["outputs"][0]["gives"] == "probabilities"


@pytest.mark.e2e
def test_validate_tflite_reports_on_a_file_of_any_name_and_chance_level_is_warned(user_project, tmp_path):
    project, _ = user_project
    run_cli("convert", "--model", "mine.keras", *QUICK, "--set", "input.pixels=unit", cwd=project)
    odd = tmp_path / "from another toolchain.bin"
    shutil.copy(project / "tflite_out/user/mine.float32.tflite", odd)
    fails_cleanly(run_cli("validate", "--tflite", str(odd), *QUICK, cwd=project, check=False),
                  "neither a record nor a sidecar", "input.pixels=unit")
    out = tmp_path / "odd.report.json"
    run_cli("validate", "--tflite", str(odd), "--report", str(out), *QUICK, "--set", "input.pixels=unit", cwd=project)
    assert json.loads(out.read_text())["artefacts"][0]["accuracy"] > 0.6
    # the same file fed (nearly) blank images: near chance, and the warning names the input scaling first
    proc = run_cli("validate", "--tflite", str(odd), "--report", str(out), *QUICK, "--set", "input.pixels=scale_offset",
                   "--set", "input.scale=[1e-9]", cwd=project)
    assert "near chance" in proc.stderr and "input scaling" in proc.stderr, proc.stdout
    fails_cleanly(run_cli("validate", "--tflite", str(tmp_path / "nope.tflite"), *QUICK, cwd=project, check=False),
                  "not found")


def test_declared_conventions_and_what_they_refuse():
    assert declared(InputParams(pixels="unit"), 1).apply(np.array([[255]], np.uint8))[0, 0] == pytest.approx(1.0)
    assert declared(InputParams(pixels="symmetric"), 3).apply(np.zeros((1, 3), np.uint8))[0, 0] == pytest.approx(-1)
    mean_std = declared(InputParams(pixels="mean_std", mean=[100.0, 50.0, 0.0], std=[2.0]), 3)
    np.testing.assert_allclose(mean_std.apply(np.full((1, 3), 100, np.uint8))[0], [0, 25, 50])
    assert declared(InputParams(), 1) is None
    with pytest.raises(PipelineError, match="gives 3 scale values; the images have 1 channel"):
        declared(InputParams(pixels="scale_offset", scale=[1.0, 2.0, 3.0]), 1)
    for bad, match in ((["input.pixels=mean_std", "input.mean=[1]"], "input.std: input.pixels mean_std needs"),
                       (["input.pixels=unit", "input.scale=[2]"], "input.scale: is not read with input.pixels unit"),
                       (["input.pixels=scale_offset", "input.scale=[0]"], "a zero scale"),
                       (["input.pixels=mean_std", "input.mean=[0]", "input.std=[0]"], "input.std: must be in"),
                       (["input.pixels=guess"], "input.pixels: expected one of")):
        with pytest.raises(PipelineError, match=match):
            load_params("params.yaml", bad)


def test_a_leading_rescaling_or_normalization_is_recognised_even_in_a_nested_model():
    inputs = keras.Input((8, 8, 1))
    inner = keras.Sequential([keras.layers.Normalization(mean=0.5, variance=1.0), keras.layers.Flatten()])
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inner(inputs)))
    found = resolve(InputParams(), model, "m.keras", 1)
    assert found.is_identity and "Normalization" in found.origin
    plain = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(PipelineError, match="m.keras does not start with a Rescaling"):
        resolve(InputParams(), plain, "m.keras", 1)
    assert resolve(InputParams(pixels="raw"), plain, "m.keras", 1) == InputContract(origin="input.pixels: raw")
    with pytest.raises(PipelineError, match="its input contract holds impossible numbers"):
        InputContract.from_dict({"scale": [float("nan")], "offset": [0]}, "x.json")


def test_logits_are_told_from_probabilities_and_the_loss_follows():
    data = tiny_dataset()
    assert gives_probabilities(np.array([[0.2, 0.8], [1.0, 0.0]])) and not gives_probabilities(np.array([[2.0, -1]]))
    for logits in (False, True):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input(data.input_shape), keras.layers.Flatten(),
                                  keras.layers.Dense(3, activation=None if logits else "softmax")])
        assert output_logits(model, data) == {model.output_names[0]: logits}
        fit_target(model, data, load_params("params.yaml").train, 1e-3)
        assert model.loss.get_config()["from_logits"] is logits


def test_calibration_comes_from_the_chosen_split_stratified_and_through_the_contract():
    data = tiny_dataset(n=300).with_contract(InputContract((1 / 255,), (0.0,)))
    images = representative_data(data, ConvertParams(representative_samples=30, calibration_source="validation",
                                                     calibration_stratified=True), seed=0)
    assert len(images) == 30 and images.max() <= 1.0 and images.dtype == np.float32
    val = data.contract.apply(data.x_val)
    matches = [int(np.flatnonzero((val == image).all(axis=(1, 2, 3)))[0]) for image in images]
    counts = np.bincount(data.y_val[matches], minlength=3)
    expected = np.bincount(data.y_val, minlength=3) * 30 / len(data.y_val)
    assert np.all(np.abs(counts - expected) <= 1), (counts, expected)
    assert RAW.apply(data.x_train[:1]).max() > 1  # raw pixels stay 0-255


@pytest.mark.e2e
def test_a_keras3_file_and_a_savedmodel_convert_and_validate_and_training_stages_say_what_they_need(user_project):
    from pipeline.core.framework import keras3

    project, _ = user_project
    k = keras3()
    inputs = k.Input((28, 28, 1))
    hidden = k.layers.Conv2D(8, 3, strides=2, activation="relu")(k.layers.Rescaling(1 / 255)(inputs))
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax")(k.layers.Flatten()(hidden)))
    model.save(project / "k3.keras")
    model.export(str(project / "k3_saved"), verbose=False)
    for given, extra in (("k3.keras", ()), ("k3_saved", ("--set", "input.pixels=raw"))):
        run_cli("convert", "--model", given, *QUICK, *extra, cwd=project)
        run_cli("validate", "--model", given, *QUICK, *extra, cwd=project)
        report = json.loads((project / f"tflite_out/user/{given.removesuffix('.keras')}.report.json").read_text())
        found = {e["format"]: e for e in report["artefacts"]}  # an untrained model: int8 may flip near-ties
        assert found["float32"]["keras_agreement"] >= 0.99 and found["int8"]["keras_agreement"] is not None
        fails_cleanly(run_cli("prune", "--model", given, *QUICK, cwd=project, check=False),
                      "this command needs a tf_keras (Keras 2) model", "`convert` and `validate` take this file")
    # a SavedModel sees no Rescaling layer: its input contract must be declared
    fails_cleanly(run_cli("convert", "--model", "k3_saved", *QUICK, cwd=project, check=False),
                  "k3_saved is not a Keras model the pipeline can look into", "input.pixels")


@pytest.mark.bad_input("hostile SavedModel")
def test_a_savedmodel_whose_serving_reads_files_is_refused_before_loading(tmp_path):
    from pipeline.core.framework import tf
    from pipeline.core.model_files import load_any

    class Reader(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
        def serve(self, x):
            secret = tf.strings.length(tf.io.read_file("/etc/hostname"))
            return {"scores": tf.nn.softmax(tf.reshape(x, [-1, 784])[:, :10] * tf.cast(secret, tf.float32))}

    module = Reader()
    tf.saved_model.save(module, str(tmp_path / "reader"), signatures={"serving_default": module.serve})
    with pytest.raises(PipelineError, match="refused, not loaded: its graph holds ReadFile"):
        load_any(tmp_path / "reader")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="a folder without saved_model.pb"):
        load_any(tmp_path / "empty")


def test_a_nested_backbone_is_flattened_so_every_stage_sees_its_layers(tmp_path):
    from pipeline.compression.channels.graph import ChannelGraph
    from pipeline.core.keras_io import load_model
    from pipeline.export.costs import model_costs, totals

    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None,
                                              pooling="avg")
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(3, activation="softmax")(backbone(keras.layers.Rescaling(1 / 127.5, -1)(inputs)))
    nested = keras.Model(inputs, outputs)
    nested.save(tmp_path / "nested.keras")
    flat = load_model(tmp_path / "nested.keras")
    assert not any(type(layer).__name__ == "Functional" for layer in flat.layers) and len(flat.layers) > 100
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(flat(x).numpy(), nested(x).numpy(), atol=1e-6)
    assert totals(model_costs(flat))["macs"] > 100 * totals(model_costs(nested))["macs"]  # not just the head
    assert len(ChannelGraph(flat).prunable()) > 10


def test_a_nested_model_is_pruned_to_its_target_once_flattened():
    from pipeline.compression.magnitude import prune_model, pruned_layers
    from pipeline.core.keras_io import flatten_nested
    from pipeline.core.params import PruneParams
    from pipeline.export.costs import model_costs

    data = tiny_dataset(n=120)
    keras.utils.set_random_seed(0)
    inner_in = keras.Input(data.input_shape)
    inner = keras.Model(inner_in, keras.layers.Conv2D(16, 3, activation="relu", name="dense")(inner_in), name="body")
    inputs = keras.Input(data.input_shape)
    hidden = keras.layers.Flatten()(inner(keras.layers.Rescaling(1 / 255)(inputs)))
    model = flatten_nested(keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="dense")(hidden)))
    assert {"body_dense", "dense"} <= {layer.name for layer in model.layers}  # the clash of names resolved
    p = PruneParams(final_sparsity=0.5, epochs=1, end_epoch=1, frequency=1, batch_size=32, min_weights=100)
    wrapped, stripped, _ = prune_model(model, data, p, seed=0)
    names = set(pruned_layers(wrapped))
    assert names == {"body_dense", "dense"}
    pruned = [c for c in model_costs(stripped) if c.name in names]
    assert sum(c.zeros for c in pruned) / sum(c.prunable for c in pruned) == pytest.approx(0.5, abs=0.02)


@pytest.mark.e2e
def test_init_then_run_gates_a_ready_made_model_in_its_own_repository(user_project, tmp_path):
    project, _ = user_project
    repo = tmp_path / "app"
    repo.mkdir()
    shutil.copy(project / "mine.keras", repo / "mine.keras")
    run_cli("init", "--model", "mine.keras", "--pixels", "unit", "--name", "app", cwd=repo)
    assert (repo / ".github/workflows/mobiledeploy.yml").is_file() and (repo / "mobiledeploy.mk").is_file()
    fails_cleanly(run_cli("init", cwd=repo, check=False), "mobiledeploy.yaml exists")
    # no latency gates: a ratio of two tiny models' microsecond latencies is noise on a busy machine
    job = ("--params", "mobiledeploy.yaml", *QUICK, "--set", "prune.enabled=false",
           "--set", "check.latency_gates=false")
    fails_cleanly(run_cli("run", *job, cwd=repo, check=False), "gates file gates/app.yaml not found")
    assert sorted(p.name for p in (repo / "tflite_out").glob("*.tflite")) == ["app.float32.tflite", "app.int8.tflite"]
    run_cli("check", "--update", *job, cwd=repo)
    assert "gates in gates/app.yaml pass" in run_cli("run", *job, cwd=repo).stdout
    fails_cleanly(run_cli("train", *job, cwd=repo, check=False), "model.file names a ready-made model")
    fails_cleanly(run_cli("prune", *job, cwd=repo, check=False), "prune.enabled is false")
