"""Pruning and conversion on a tiny model and synthetic data, in process."""

import numpy as np
import pytest
from conftest import SMOKE, fails_cleanly, run_cli, snapshot, tiny_dataset

from pipeline import architectures
from pipeline.compression.magnitude import make_schedule, prune_model
from pipeline.core.errors import PipelineError
from pipeline.core.params import ConvertParams, PruneParams
from pipeline.export import litert
from pipeline.export.costs import model_costs, totals
from pipeline.export.tflite import Exporter, representative_data, to_tflite
from pipeline.training.fit import compile_for_training, predict_labels

DATA = tiny_dataset()


@pytest.fixture(scope="module")
def trained():
    model = architectures.build("tiny", DATA.input_shape, DATA.num_classes)
    compile_for_training(model, 3e-3)
    model.fit(DATA.x_train.astype("float32"), DATA.y_train, epochs=15, batch_size=32, verbose=0)
    return model


# frequency 100 on 6 steps an epoch: TF-MOT alone would never update the masks after step 0
@pytest.mark.parametrize("schedule, frequency", [("polynomial_decay", 1), ("constant_sparsity", 1),
                                                 ("polynomial_decay", 100)])
def test_schedule_reaches_its_target_sparsity(trained, schedule, frequency):
    p = PruneParams(schedule=schedule, min_weights=0, final_sparsity=0.6, epochs=2, begin_epoch=0, end_epoch=1,
                    frequency=frequency, batch_size=32, learning_rate=1e-4)
    _, stripped, _ = prune_model(trained, DATA, p, seed=0)
    for cost in model_costs(stripped):
        if cost.prunable > 20:  # tiny layers round to whole weights
            assert cost.zeros / cost.prunable == pytest.approx(0.6, abs=0.05), cost.name
    assert totals(model_costs(stripped))["sparsity"] == pytest.approx(0.6, abs=0.05)


def test_stripped_model_gives_the_pruned_models_outputs(trained):
    p = PruneParams(final_sparsity=0.5, epochs=1, begin_epoch=0, end_epoch=1, frequency=1, batch_size=32, min_weights=0)
    wrapped, stripped, _ = prune_model(trained, DATA, p, seed=0)
    x = DATA.x_test.astype("float32")
    np.testing.assert_allclose(stripped.predict(x, verbose=0), wrapped.predict(x, verbose=0), atol=1e-6)
    assert not any(type(layer).__name__ == "PruneLowMagnitude" for layer in stripped.layers)


def test_pruning_starts_from_every_trained_weight_and_leaves_the_trained_model_alone(trained):
    from pipeline.compression.magnitude import wrap_for_pruning
    from pipeline.core.framework import tfmot

    before = [w.copy() for w in trained.get_weights()]
    later = tfmot.sparsity.keras.ConstantSparsity(0.9, begin_step=10**6)
    wrapped = wrap_for_pruning(trained, later, min_weights=100)  # the small layers stay unwrapped
    x = DATA.x_test.astype("float32")
    assert np.array_equal(wrapped(x, training=False).numpy(), trained(x, training=False).numpy())
    p = PruneParams(final_sparsity=0.6, epochs=1, begin_epoch=0, end_epoch=1, frequency=1, batch_size=32, min_weights=0)
    prune_model(trained, DATA, p, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, trained.get_weights()))


def test_schedule_steps_come_from_the_fine_tuning_epochs():
    schedule = make_schedule(PruneParams(epochs=4, begin_epoch=1, end_epoch=3, frequency=10), steps_per_epoch=50)
    config = schedule.get_config()["config"]
    # the ramp ends on the last mask update, where the polynomial reaches final_sparsity
    assert (config["begin_step"], config["end_step"], config["frequency"]) == (50, 140, 10)
    few = make_schedule(PruneParams(epochs=2, end_epoch=1, frequency=100), steps_per_epoch=17).get_config()["config"]
    assert (few["begin_step"], few["end_step"], few["frequency"]) == (0, 16, 16)


def test_a_prune_that_ends_short_of_its_sparsity_fails_naming_both(copy_of_smoke, monkeypatch):
    from pipeline.compression import magnitude

    # the schedule TF-MOT would run without schedule_steps: a frequency longer than the whole ramp
    monkeypatch.setattr(magnitude, "schedule_steps", lambda p, steps: (0, steps * p.end_epoch - 1, 10**4))
    before = snapshot(copy_of_smoke)
    proc = run_cli("prune", *SMOKE, "--set", "prune.frequency=10000", cwd=copy_of_smoke, check=False)
    fails_cleanly(proc, "the pruned layers ended at", "50.0% was asked for")
    assert snapshot(copy_of_smoke) == before


@pytest.fixture(scope="module")
def exporter(trained):
    """The trained model exported once, for each format of the test below."""
    with Exporter(trained) as exporter:
        yield exporter


@pytest.mark.parametrize("fmt, bound", [("float32", 1.0), ("float16", 1.0), ("dynamic_int8", 0.95),
                                        ("int8", 0.95), ("int16x8", 0.95), ("aeq_int8", 0.95),
                                        ("aeq_int16x8", 0.95), ("aeq_dynamic_int8", 0.95),
                                        ("aeq_weight_only_int8", 0.95)])
def test_tflite_agrees_with_keras(trained, exporter, tmp_path, fmt, bound):
    """float formats must agree exactly on top-1; int8 formats on at least 95% of these tiny inputs."""
    blob = exporter.convert(fmt, representative_data(DATA, ConvertParams(representative_samples=50), seed=0))
    path = tmp_path / f"m.{fmt}.tflite"
    path.write_bytes(blob)
    predictions, latencies = litert.evaluate(path, DATA.x_test, 16, [1], warmup=2, runs=200)
    (labels,) = predictions.values()
    assert np.mean(labels == predict_labels(trained, DATA.x_test)) >= bound
    assert latencies[0]["threads"] == 1 and 0 < latencies[0]["p50"] <= latencies[0]["p99"]


def test_full_integer_model_takes_and_gives_int8(trained, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    blob = to_tflite(trained, "int8", representative_data(DATA, ConvertParams(representative_samples=50), seed=0))
    interp = Interpreter(model_content=blob)
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert interp.get_output_details()[0]["dtype"] == np.int8


@pytest.mark.parametrize("fmt, io, activations", [("aeq_int8", np.int8, np.int8), ("aeq_int16x8", np.int16, np.int16),
                                                   ("aeq_dynamic_int8", np.float32, np.float32)])
def test_ai_edge_quantizer_recipes_quantize_what_they_say(trained, fmt, io, activations):
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.export.flatbuffer import weight_stats

    blob = to_tflite(trained, fmt, representative_data(DATA, ConvertParams(representative_samples=50), seed=0))
    interp = Interpreter(model_content=blob)
    assert interp.get_input_details()[0]["dtype"] == io and interp.get_output_details()[0]["dtype"] == io
    conv = [d for d in interp.get_tensor_details() if "conv" in d["name"].lower() and len(d["shape"]) == 4]
    assert any(d["dtype"] == activations for d in conv)
    assert {t["dtype"] for t in weight_stats(blob)["tensors"]} == {"int8"}  # every recipe: int8 weights


@pytest.mark.bad_input("model files")
def test_an_ai_edge_quantizer_format_without_the_package_says_how_to_install_it(trained, monkeypatch):
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name.startswith("ai_edge_quantizer") else real(name, *a, **k))
    with pytest.raises(PipelineError, match=r"format aeq_dynamic_int8 needs ai-edge-quantizer: pip install "):
        to_tflite(trained, "aeq_dynamic_int8")


def test_int16x8_keeps_float_input_and_output_around_int16_activations_and_int8_weights(trained):
    from ai_edge_litert.interpreter import Interpreter

    blob = to_tflite(trained, "int16x8", representative_data(DATA, ConvertParams(representative_samples=50), seed=0))
    interp = Interpreter(model_content=blob)
    assert interp.get_input_details()[0]["dtype"] == np.float32
    assert interp.get_output_details()[0]["dtype"] == np.float32
    kinds = {(d["name"], d["dtype"]) for d in interp.get_tensor_details()}
    assert any(dtype == np.int16 for _, dtype in kinds)  # activations
    assert any(dtype == np.int8 and "conv" in name.lower() for name, dtype in kinds)  # weights


def test_the_zeros_and_distinct_values_of_a_file_are_read_from_its_weight_tensors(trained):
    from pipeline.export.flatbuffer import weight_stats

    p = PruneParams(final_sparsity=0.6, epochs=2, begin_epoch=0, end_epoch=1, frequency=1, batch_size=32,
                    min_weights=0)
    _, stripped, _ = prune_model(trained, DATA, p, seed=0)
    representative = representative_data(DATA, ConvertParams(representative_samples=50), seed=0)
    kernels = sum(w.size for layer in stripped.layers for w in layer.get_weights()[:1] if w.ndim >= 2)
    for model, fmt, zeros in ((trained, "int8", (0.0, 0.02)), (stripped, "int8", (0.55, 0.65)),
                              (stripped, "float32", (0.55, 0.65)), (stripped, "float16", (0.55, 0.65))):
        found = weight_stats(to_tflite(model, fmt, representative))
        assert found["values"] == kernels, fmt  # every kernel, and nothing else (biases, shapes)
        assert zeros[0] <= found["zero_share"] <= zeros[1], (fmt, found["zero_share"])
        assert {t["dtype"] for t in found["tensors"]} == {{"int8": "int8", "float32": "float32",
                                                           "float16": "float16"}[fmt]}
        assert found["max_unique"] <= (256 if fmt == "int8" else kernels)
    with pytest.raises(PipelineError, match=r"^its weights cannot be read: not a readable TFLite flatbuffer"):
        weight_stats(b"not a flatbuffer")


def test_layers_below_min_weights_stay_dense(trained):
    p = PruneParams(final_sparsity=0.6, epochs=1, begin_epoch=0, end_epoch=1, frequency=1, batch_size=32,
                    min_weights=500)
    _, stripped, _ = prune_model(trained, DATA, p, seed=0)
    for cost in model_costs(stripped):
        if cost.prunable:
            expected = 0.6 if cost.prunable >= 500 else 0.0
            assert cost.zeros / cost.prunable == pytest.approx(expected, abs=0.05), cost.name


def test_two_by_four_sparsity_leaves_two_zeros_in_every_block_of_four_input_channels(trained):
    p = PruneParams(final_sparsity=0.5, epochs=2, begin_epoch=0, end_epoch=1, frequency=1, batch_size=32,
                    sparsity_m_by_n=[2, 4], min_weights=0)
    _, stripped, _ = prune_model(trained, DATA, p, seed=0)
    kernel = stripped.get_layer("stage2_conv").get_weights()[0]  # (3, 3, 8 in, 8 out)
    blocks = np.moveaxis(kernel, 2, -1).reshape(-1, 4)
    assert (blocks == 0).sum(axis=1).min() >= 2


def test_the_xnnpack_policy_refuses_a_model_it_cannot_run_sparse_saying_why(trained):
    p = PruneParams(final_sparsity=0.5, epochs=1, begin_epoch=0, end_epoch=1, policy="xnnpack")
    with pytest.raises(PipelineError, match="does not fit XNNPACK sparse inference: .*Conv2D 3x3.*stride 2x2"):
        prune_model(trained, DATA, p, seed=0)


def test_int16x8_is_converted_validated_and_gated_like_the_other_formats(copy_of_smoke):
    import json

    formats = ("--set", "convert.formats=[int8, int16x8]")
    run_cli("convert", *SMOKE, *formats, cwd=copy_of_smoke)
    assert (copy_of_smoke / "tflite_out" / "smoke.int16x8.tflite").is_file()
    run_cli("validate", *SMOKE, *formats, cwd=copy_of_smoke)
    report = json.loads((copy_of_smoke / "tflite_out" / "smoke.report.json").read_text())
    entries = {e["file"].rsplit("/", 1)[-1]: e for e in report["artefacts"]}
    assert entries["smoke.int16x8.tflite"]["accuracy"] >= entries["smoke.int8.tflite"]["accuracy"] - 0.02
    run_cli("check", *SMOKE, *formats, "--update", cwd=copy_of_smoke)
    assert "smoke.int16x8.tflite" in (copy_of_smoke / "gates" / "smoke.yaml").read_text()
