"""What users get wrong, fed to the stages on purpose: each gets one clear line, exit 1, no damage."""

import json
import string

import pytest
from conftest import ROOT, SMOKE, fails_cleanly, run_cli, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import architectures
from pipeline.core.artifacts import file_hash
from pipeline.core.errors import PipelineError
from pipeline.core.framework import keras, tf
from pipeline.core.keras_io import load_model, save_model
from pipeline.core.params import ParamsError, load_params
from pipeline.export.tflite import to_tflite

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
    tried, loaded = [], []

    # derandomized: the same 300 cases every run, so the table below is reproducible
    @settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(KEYS), VALUES)
    def one(key, value):
        tried.append(1)
        text = f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"
        try:
            params = load_params(ROOT / "params.yaml", [text])
        except ParamsError as exc:
            assert str(exc).startswith(("params: ", "--set ")) and "\n" not in str(exc) and len(str(exc)) <= 500
        else:
            params.check_all()  # a valid value: it loads, and is counted as such, not as refused
            loaded.append(1)

    one()
    record_property("cases", len(tried))
    record_property("loaded", len(loaded))


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


@keras.utils.register_keras_serializable(package="only_in_this_test")
class Halves(keras.initializers.Initializer):
    def __call__(self, shape, dtype=None):
        return tf.fill(shape, 0.5)


def model_around(layer):
    inputs = keras.Input((28, 28, 1))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(layer(inputs))))


@pytest.mark.bad_input("model files")
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_lambda_layer_is_refused_before_its_code_can_run(tmp_path, suffix):
    marker = tmp_path / "code-ran"
    touch = eval(f"lambda x: __import__('pathlib').Path({str(marker)!r}).touch() or x")  # noqa: S307
    model = model_around(keras.layers.Lambda(touch, name="touch"))
    model.save(tmp_path / f"m{suffix}")
    marker.unlink()  # building the model called the lambda once
    with pytest.raises(PipelineError, match=f"m\\{suffix}: refused, not loaded: it holds a Lambda layer \\(layer 'touch'\\)"):
        load_model(tmp_path / f"m{suffix}")
    assert not marker.exists()


@pytest.mark.bad_input("model files")
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("layer, message", [
    (lambda: Doubler(name="doubler"), r"class '(only_in_this_test>)?Doubler'"),
    (lambda: keras.layers.Dense(3, kernel_initializer=Halves(), name="d"), r"class '(only_in_this_test>)?Halves'"),
], ids=["custom layer", "custom initializer"])
def test_custom_classes_are_refused_even_when_registered(tmp_path, suffix, layer, message):
    model_around(layer()).save(tmp_path / f"m{suffix}")
    with pytest.raises(PipelineError, match=message):
        load_model(tmp_path / f"m{suffix}")


@pytest.mark.bad_input("model files")
def test_a_tensorflow_op_outside_tensor_maths_is_refused(tmp_path):
    inputs = keras.Input((4,))
    outputs = tf.strings.as_string(inputs)  # becomes a TFOpLambda layer calling tf.strings.as_string
    keras.Model(inputs, outputs).save(tmp_path / "m.keras")
    with pytest.raises(PipelineError, match="calling tf.strings.as_string"):
        load_model(tmp_path / "m.keras")


def test_tensor_maths_in_a_functional_model_loads(tmp_path):
    inputs = keras.Input((4,))
    keras.Model(inputs, tf.nn.relu(inputs * 2.0 + 1.0)[:, :2]).save(tmp_path / "m.keras")
    assert load_model(tmp_path / "m.keras").output_shape == (None, 2)


@pytest.mark.bad_input("model files")
def test_validate_refuses_an_unsafe_parent_named_by_a_record(copy_of_smoke, monkeypatch):
    marker = copy_of_smoke / "code-ran"
    touch = eval(f"lambda x: __import__('pathlib').Path({str(marker)!r}).touch() or x")  # noqa: S307
    model_around(keras.layers.Lambda(touch, name="touch")).save(copy_of_smoke / "evil.h5")
    marker.unlink()
    record = copy_of_smoke / "tflite_out" / "smoke.int8.tflite.json"
    made = json.loads(record.read_text())
    made["keras_model"], made["inputs"]["model"] = "evil.h5", file_hash(copy_of_smoke / "evil.h5")  # made from it
    record.write_text(json.dumps(made))
    from pipeline.stages.validate import validate

    monkeypatch.chdir(copy_of_smoke)
    with pytest.raises(PipelineError, match="evil.h5: refused, not loaded"):
        validate(load_params(*SMOKE[1:]))
    assert not marker.exists()


def rewrite_config(source, target, change):
    """A copy of the .keras file ``source`` whose config.json went through ``change``."""
    import json
    import zipfile

    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                change(config)
                data = json.dumps(config).encode()
            zout.writestr(item, data)
    return target


@pytest.mark.bad_input("model files")
def test_a_config_naming_a_module_outside_keras_is_refused_before_anything_is_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "planted.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model_around(keras.layers.Flatten()).save(tmp_path / "m.keras")
    evil = rewrite_config(tmp_path / "m.keras", tmp_path / "evil.keras", lambda c: c.update(module="planted"))
    with pytest.raises(PipelineError, match="from module 'planted'"):
        load_model(evil)
    assert not marker.exists()
    renamed = rewrite_config(tmp_path / "m.keras", tmp_path / "r.keras", lambda c: c.update(registered_name="x>Functional"))
    with pytest.raises(PipelineError, match="registered as"):
        load_model(renamed)


@pytest.mark.bad_input("model files")
def test_a_damaged_archive_is_not_a_keras_model(tmp_path):
    model_around(keras.layers.Flatten()).save(tmp_path / "m.keras")
    blob = bytearray((tmp_path / "m.keras").read_bytes())
    start = blob.index(b"config.json") + len("config.json")
    blob[start:start + 40] = bytes(40)  # the compressed config, zeroed
    (tmp_path / "bad.keras").write_bytes(bytes(blob))
    with pytest.raises(PipelineError, match="bad.keras: "):
        load_model(tmp_path / "bad.keras")


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
