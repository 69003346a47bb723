import math

import numpy as np
import pytest
from conftest import tiny_dataset

from pipeline import architectures
from pipeline.architectures import blocks
from pipeline.compression.magnitude import prune_model
from pipeline.core.errors import PipelineError
from pipeline.core.framework import keras
from pipeline.core.keras_io import load_model, save_model
from pipeline.core.params import ConvertParams, PruneParams
from pipeline.export import litert
from pipeline.export.costs import model_costs, totals
from pipeline.export.tflite import representative_data, to_tflite
from pipeline.training.fit import predict_labels, seed_everything

BLOCKS = {
    "conv": lambda x, s: blocks.conv_block(x, 6, 3, "b", s),
    "separable": lambda x, s: blocks.separable_block(x, 6, "b", s),
    "bottleneck": lambda x, s: blocks.bottleneck_block(x, 8, "b", s, ratio=4),
    "inverted": lambda x, s: blocks.inverted_residual_block(x, 4, "b", s, expansion=3),
}


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(PipelineError, match="known: .*plain_cnn.*small_cnn.*tiny"):
        architectures.build("vgg", (28, 28, 1), 10)


def test_unknown_or_invalid_options_are_refused_by_name():
    with pytest.raises(PipelineError, match="unknown option 'pool'; its options: .*pooling"):
        architectures.resolve("plain_cnn", options={"pool": "max"})
    with pytest.raises(PipelineError, match="pooling must be one of max, avg, strided, none"):
        architectures.resolve("plain_cnn", options={"pooling": "min"})
    with pytest.raises(PipelineError, match=r"one of them per stage \(2\)"):
        architectures.resolve("plain_cnn", options={"pooling": ["max"]})


@pytest.mark.parametrize("kind", sorted(BLOCKS))
@pytest.mark.parametrize("size", [(15, 17), (28, 28)])
@pytest.mark.parametrize("stride", [1, 2])
def test_blocks_keep_or_halve_odd_and_even_maps(kind, size, stride):
    inputs = keras.Input((*size, 4))
    out = BLOCKS[kind](inputs, stride)
    h, w = size
    assert tuple(out.shape[1:3]) == (math.ceil(h / stride), math.ceil(w / stride))


def test_inverted_residual_adds_the_shortcut_only_when_shapes_match():
    inputs = keras.Input((8, 8, 4))
    same = keras.Model(inputs, blocks.inverted_residual_block(inputs, 4, "a", 1))
    assert any(layer.name == "a_add" for layer in same.layers)
    for stride, filters in ((2, 4), (1, 6)):
        other = keras.Model(inputs, blocks.inverted_residual_block(inputs, filters, "b", stride))
        assert not any(type(layer).__name__ == "Add" for layer in other.layers)
    # linear bottleneck: the projection is not followed by an activation
    assert type(same.get_layer("a_add").input[1].node.layer).__name__ == "BatchNormalization"


def test_pooling_is_chosen_per_stage_and_halves_the_map_where_asked():
    model = architectures.build("plain_cnn", (28, 28, 1), 10, width=4,
                                options={"stages": [1, 1, 1, 1], "pooling": ["max", "none", "avg", "strided"]})
    last = {i: [layer for layer in model.layers if layer.name.startswith(f"stage{i}_")][-1] for i in range(1, 5)}
    assert [last[i].output_shape[1] for i in range(1, 5)] == [14, 14, 7, 4]
    assert last[1].name == "stage1_maxpool" and last[3].name == "stage3_avgpool"
    assert model.get_layer("stage4_2_conv").strides == (2, 2) and model.get_layer("stage4_1_conv").strides == (1, 1)


def test_the_default_model_keeps_its_layout():
    model = architectures.build("small_cnn", (28, 28, 1), 10)
    sizes = [model.get_layer(n).output_shape[1] for n in ("stage1_relu", "stage1_maxpool", "stage2_maxpool")]
    assert sizes == [28, 14, 7]
    assert totals(model_costs(model)) ["params"] == 260_522


def test_tiny_macs_match_hand_arithmetic():
    costs = {c.name: c for c in model_costs(architectures.build("tiny", (12, 12, 1), 10))}
    assert costs["stage1_conv"].macs == 12 * 12 * 8 * (3 * 3 * 1)   # 1,152 outputs x 9 MACs
    assert costs["stage1_maxpool"].output_shape[1:] == (6, 6, 8)
    assert costs["stage2_conv"].macs == 6 * 6 * 8 * (3 * 3 * 8)     # 288 outputs x 72 MACs
    assert costs["bottleneck_conv"].macs == 3 * 3 * 4 * 8           # 1x1: 36 outputs x 8 MACs
    assert costs["predictions"].macs == 10 * (3 * 3 * 4)
    assert totals(list(costs.values()))["macs"] == 10_368 + 20_736 + 288 + 360


def test_separable_variant_needs_at_least_2x_fewer_macs_than_the_plain_one():
    macs = {name: totals(model_costs(architectures.build(name, (28, 28, 1), 10)))["macs"]
            for name in ("plain_cnn", "mobile_cnn")}
    assert macs["plain_cnn"] >= 2 * macs["mobile_cnn"]


def layer_kinds(model) -> frozenset[str]:
    return frozenset(type(layer).__name__ for layer in model.layers)


# The tests that prune, quantize or convert each architecture take one architecture per set of layer
# kinds: TF-MOT and the converter act on each kind of layer, and plain_cnn and tiny are made of the
# kinds of small_cnn, the default, in other widths and depths (tiny also goes through every stage as
# the smoke config's model). The test below fails when an architecture brings a new set.
BY_LAYER_KINDS = ["small_cnn", "bottleneck_cnn", "inverted_cnn", "mobile_cnn", "plain_cnn_avg", "plain_cnn_strided"]


def test_every_architecture_builds_for_even_inputs_and_its_layer_kinds_are_tested():
    kinds = {}
    for name in architectures.names():
        model = architectures.build(name, (28, 28, 1), 7, width=4)
        assert model.output_shape == (None, 7), name
        kinds[name] = layer_kinds(model)
    assert len({kinds[name] for name in BY_LAYER_KINDS}) == len(BY_LAYER_KINDS)  # none of them twice
    assert set(kinds.values()) == {kinds[name] for name in BY_LAYER_KINDS}


@pytest.mark.parametrize("name", architectures.names())
def test_every_architecture_builds_for_an_odd_input_and_round_trips(name, tmp_path):
    shape = (15, 17, 3)
    model = architectures.build(name, shape, 7, width=8)
    assert model.output_shape == (None, 7)
    x = np.random.default_rng(0).uniform(0, 255, (4, *shape)).astype(np.float32)
    outputs = lambda m: m(x, training=False).numpy()  # noqa: E731  (eager: no predict function to trace)
    expected = outputs(model)
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(outputs(clone), expected, atol=1e-6)
    path = tmp_path / "m.keras"
    save_model(model, path, {"stage": "test"})
    model.save(tmp_path / "m.h5")  # the legacy format passes the same safety check
    for loaded in (load_model(path), load_model(tmp_path / "m.h5")):
        np.testing.assert_allclose(outputs(loaded), expected, atol=1e-6)
        assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]


DATA = tiny_dataset(n=180)


@pytest.mark.e2e
@pytest.mark.parametrize("name", BY_LAYER_KINDS)
def test_every_kind_of_architecture_prunes_and_converts_to_full_integer(name, tmp_path):
    seed_everything(0)  # the same weights whatever ran before: agreement on a barely trained model is fragile
    model = architectures.build(name, DATA.input_shape, DATA.num_classes, width=8)
    # trained while pruned (one TF-MOT fine-tuning from the initial weights, not a training and then one):
    # the sparsity ramps up in the first epoch, the other two recover at it
    p = PruneParams(final_sparsity=0.5, epochs=3, begin_epoch=0, end_epoch=1, frequency=1, batch_size=32,
                    min_weights=0, learning_rate=3e-3)
    _, stripped, _ = prune_model(model, DATA, p, seed=0)
    pruned = [c for c in model_costs(stripped) if c.kind in ("Conv2D", "Dense") and c.prunable > 20]
    assert pruned and all(c.zeros / c.prunable == pytest.approx(0.5, abs=0.06) for c in pruned)
    # TF-MOT wraps depthwise convolutions but prunes none of their weights (docs/architectures.md)
    assert all(c.zeros == 0 for c in model_costs(stripped) if c.kind == "DepthwiseConv2D")
    path = tmp_path / "m.int8.tflite"
    calibration = representative_data(DATA, ConvertParams(representative_samples=30), seed=0)
    path.write_bytes(to_tflite(stripped, "int8", calibration))
    predictions, _ = litert.evaluate(path, DATA.x_test, 16, [1], warmup=1, runs=200)
    (labels,) = predictions.values()
    assert np.mean(labels == predict_labels(stripped, DATA.x_test)) >= 0.8


def test_models_are_keras_2_models_that_tf_keras_and_tfmot_accept():
    import tf_keras

    from pipeline.core.framework import tf

    model = architectures.build("tiny", (12, 12, 1), 3)
    assert isinstance(model, tf_keras.Model)
    assert tf.keras.Model is tf_keras.Model


@pytest.mark.e2e
def test_keras_3_loaded_before_the_pipeline_is_refused():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    code = "import tensorflow as tf; tf.keras.layers; import pipeline.core.framework"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0 and "imported with Keras 3" in proc.stderr
