"""What users get wrong, fed to the stages on purpose: each gets one clear line, exit 1, no damage."""

import string

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ROOT, SMOKE, fails_cleanly, run_cli, snapshot
from pipeline import architectures
from pipeline.convert import to_tflite
from pipeline.keras_io import save_model
from pipeline.params import ParamsError, load_params
from pipeline.tf import keras

KEYS = ["name", "seed", "data.source", "data.val_fraction", "data.image_size", "data.channels", "data.limit_train",
        "model.architecture", "model.width", "model.dropout", "model.options",
        "model.options.pooling", "model.options.depth", "model.options.stages", "zoo.variants",
        "data.tasks", "train.task_weights", "train.task_weights.top_left", "train.loss_weighting",
        "train.sharing_coefficient", "train.epochs", "train.learning_rate",
        "prune.schedule", "prune.final_sparsity", "prune.initial_sparsity", "prune.begin_epoch", "prune.end_epoch",
        "convert.formats", "validate.threads", "check.gates", "train.nonsense", "nosection.key", "train"]
VALUES = st.one_of(st.integers(-5, 300), st.floats(-2, 2, allow_nan=False), st.booleans(), st.none(),
                   st.text(string.ascii_letters + "_[]{}:, .-", max_size=12),
                   st.lists(st.integers(-2, 40), max_size=3))


@pytest.mark.bad_input("params (generated)")
def test_any_override_either_loads_or_is_refused_naming_the_key(record_property):
    tried = []

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(KEYS), VALUES)
    def one(key, value):
        tried.append(1)
        text = f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"
        try:
            params = load_params(ROOT / "params.yaml", [text])
        except ParamsError as exc:
            assert str(exc).startswith(("params: ", "--set ")) and "\n" not in str(exc)
        else:
            params.check_all()

    one()
    record_property("cases", len(tried))


def save_user_model(model, path):
    save_model(model, path, {"stage": "user"})
    (path.with_name(path.name + ".json")).unlink()  # a user's file has no record beside it


@pytest.mark.bad_input("model files")
def test_a_model_for_other_images_is_refused(copy_of_smoke):
    save_user_model(architectures.build("tiny", (12, 12, 3), 10), copy_of_smoke / "other.keras")
    before = snapshot(copy_of_smoke)
    fails_cleanly(run_cli("convert", *SMOKE, "--model", "other.keras", cwd=copy_of_smoke, check=False),
                  "input shape (12, 12, 3) does not match the data's (28, 28, 1)")
    fails_cleanly(run_cli("prune", *SMOKE, "--model", "other.keras", cwd=copy_of_smoke, check=False),
                  "does not match")
    assert snapshot(copy_of_smoke) == before


@keras.utils.register_keras_serializable(package="only_in_this_test")
class Doubler(keras.layers.Layer):
    def call(self, x):
        return 2 * x


@pytest.mark.bad_input("model files")
@pytest.mark.parametrize("layer, message", [
    (lambda: Doubler(name="doubler"), "cannot load Keras model"),
    (lambda: keras.layers.Lambda(lambda x: x * 2, name="lambda"), "cannot load Keras model"),
], ids=["custom layer the loader does not know", "lambda layer (code on load)"])
def test_models_that_cannot_be_loaded_safely_are_refused(copy_of_smoke, layer, message):
    inputs = keras.Input((28, 28, 1))
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(layer()(inputs)))
    save_user_model(keras.Model(inputs, outputs), copy_of_smoke / "custom.keras")
    fails_cleanly(run_cli("convert", *SMOKE, "--model", "custom.keras", cwd=copy_of_smoke, check=False),
                  "custom.keras", message)


@pytest.mark.bad_input(".tflite files")
def test_a_truncated_tflite_fails_validation_cleanly(copy_of_smoke):
    good = (copy_of_smoke / "tflite_out" / "smoke.int8.tflite").read_bytes()
    (copy_of_smoke / "tflite_out" / "smoke.pruned.int8.tflite").write_bytes(good[: len(good) // 2])
    before = snapshot(copy_of_smoke)
    fails_cleanly(run_cli("validate", *SMOKE, cwd=copy_of_smoke, check=False), "smoke.pruned.int8.tflite")
    assert snapshot(copy_of_smoke) == before


@pytest.mark.bad_input(".tflite files")
def test_a_valid_tflite_with_the_wrong_input_shape_fails_validation_cleanly(copy_of_smoke):
    model = architectures.build("tiny", (12, 12, 1), 10)
    (copy_of_smoke / "tflite_out" / "smoke.float32.tflite").write_bytes(to_tflite(model, "float32"))
    fails_cleanly(run_cli("validate", *SMOKE, cwd=copy_of_smoke, check=False), "smoke.float32.tflite",
                  "does not match the data's (28, 28, 1)")
