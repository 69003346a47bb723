import numpy as np
import pytest

from pipeline import architectures
from pipeline.errors import PipelineError
from pipeline.keras_io import load_model, save_model


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(PipelineError, match="known: .*small_cnn.*tiny"):
        architectures.build("vgg", (28, 28, 1), 10)


@pytest.mark.parametrize("name", architectures.names())
@pytest.mark.parametrize("shape", [(28, 28, 1), (15, 17, 3)])
def test_every_architecture_builds_for_odd_and_even_inputs_and_round_trips(name, shape, tmp_path):
    model = architectures.build(name, shape, 7, width=8)
    assert model.output_shape == (None, 7)
    x = np.random.default_rng(0).uniform(0, 255, (4, *shape)).astype(np.float32)
    path = tmp_path / "m.keras"
    save_model(model, path, {"stage": "test"})
    loaded = load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]


def test_pooling_halves_the_feature_map_per_stage():
    model = architectures.build("small_cnn", (28, 28, 1), 10, width=4)
    sizes = [model.get_layer(n).output_shape[1] for n in ("stage1_relu", "stage1_maxpool", "stage2_maxpool")]
    assert sizes == [28, 14, 7]


def test_models_are_keras_2_models_that_tf_keras_and_tfmot_accept():
    from pipeline.tf import tf
    import tf_keras

    model = architectures.build("tiny", (12, 12, 1), 3)
    assert isinstance(model, tf_keras.Model)
    assert tf.keras.Model is tf_keras.Model


def test_keras_3_loaded_before_the_pipeline_is_refused():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    code = "import tensorflow as tf; tf.keras.layers; import pipeline.tf"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0 and "imported with Keras 3" in proc.stderr
