"""cluster: TF-MOT weight clustering leaves each chosen kernel a few shared values (the zeros of a
pruned model kept), CQAT and PCQAT keep them per output channel into the int8 file; every misuse gets
one line. (The whole chain run as stages: tests/test_structured.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_dataset

from pipeline import architectures
from pipeline.compression.clustering import chosen_layers, cluster_model, distinct_values
from pipeline.compression.qat import as_default_scheme, qat_model, quantize_aware
from pipeline.core.errors import PipelineError
from pipeline.core.keras_io import load_model
from pipeline.core.params import ClusterParams, ParamsError, QuantizeParams, load_params
from pipeline.export.flatbuffer import weight_stats
from pipeline.export.tflite import to_tflite

DATA = tiny_dataset()


@pytest.fixture(scope="module")
def model():
    return architectures.build("tiny", DATA.input_shape, DATA.num_classes)


def test_the_layers_to_cluster_are_chosen_by_size_or_by_name_and_misuse_is_refused(model):
    assert chosen_layers(model, ClusterParams(min_weights=500)) == ["stage2_conv"]
    assert chosen_layers(model, ClusterParams(layers=["predictions"], clusters=4)) == ["predictions"]
    with pytest.raises(PipelineError, match="cluster.layers: 'rescale' is not a Conv2D, Dense, DepthwiseConv2D layer"):
        chosen_layers(model, ClusterParams(layers=["rescale"]))
    with pytest.raises(PipelineError, match="no layer of tiny has at least cluster.min_weights"):
        chosen_layers(model, ClusterParams())
    with pytest.raises(PipelineError, match="layer stage1_conv has 72 kernel weights, no more than cluster.clusters"):
        chosen_layers(model, ClusterParams(layers=["stage1_conv"], clusters=100))


def test_clustering_leaves_each_kernel_its_clusters_and_keeps_a_pruned_models_zeros(model):
    pruned = architectures.build("tiny", DATA.input_shape, DATA.num_classes)
    kernel = pruned.get_layer("stage2_conv").kernel
    values = kernel.numpy()
    values[np.abs(values) < np.median(np.abs(values))] = 0
    kernel.assign(values)
    c = ClusterParams(clusters=6, min_weights=500, epochs=1, batch_size=32)
    for parent, keep_zeros in ((model, False), (pruned, True)):
        stripped, names, keep = cluster_model(parent, DATA, c, seed=0, preserve_sparsity=keep_zeros)
        assert names == ["stage2_conv"] and keep.epochs_run == 1
        assert distinct_values(stripped, names)["stage2_conv"] <= 6 + keep_zeros
        zeros = float((stripped.get_layer("stage2_conv").kernel.numpy() == 0).mean())
        assert zeros >= 0.5 if keep_zeros else zeros < 0.2
        assert distinct_values(stripped, ["stage1_conv"])["stage1_conv"] > 6  # left as it was


@pytest.fixture(scope="module")
def clustered(model):
    """``model`` with two kernels clustered to 4 values (each scheme below fine-tunes it; none changes it)."""
    c = ClusterParams(clusters=4, layers=["stage2_conv", "bottleneck_conv"], epochs=1, batch_size=32)
    return cluster_model(model, DATA, c, seed=0, preserve_sparsity=False)[0]


@pytest.mark.parametrize("aware", ["cqat", "pcqat"])
def test_cluster_preserving_qat_keeps_the_clusters_per_channel_in_the_int8_file_and_saves_as_default_qat(
        clustered, aware, tmp_path):
    aware_model, _ = qat_model(clustered, DATA, QuantizeParams(aware=aware, epochs=1, batch_size=32), seed=0)
    blob = to_tflite(aware_model, "int8", DATA.x_train[:20].astype(np.float32))
    per_channel = {t["name"]: t["unique_per_channel"] for t in weight_stats(blob)["tensors"]}
    clustered_tensors = [n for n in per_channel if "stage2_conv" in n or "bottleneck_conv" in n]
    assert len(clustered_tensors) == 2 and all(per_channel[n] <= 4 for n in clustered_tensors), per_channel
    assert max(per_channel[n] for n in per_channel if "stage1_conv" in n) > 4  # an unclustered kernel can tell
    path = tmp_path / "aware.h5"
    aware_model.save(path)
    back = load_model(path)  # the default scheme: tf_keras reloads it
    x = DATA.x_test[:16].astype(np.float32)
    np.testing.assert_array_equal(back(x, training=False).numpy(), aware_model(x, training=False).numpy())


def test_the_default_scheme_copy_gives_the_preserving_models_outputs(model):
    preserving = quantize_aware(model, "pcqat")
    x = DATA.x_test[:16].astype(np.float32)
    np.testing.assert_array_equal(as_default_scheme(preserving, model, "pcqat")(x, training=False).numpy(),
                                  preserving(x, training=False).numpy())


@pytest.mark.e2e
def test_cluster_params_refuse_what_they_cannot_do():
    for override, key in (("cluster.clusters=1", "cluster.clusters"), ("cluster.init=kmeans", "cluster.init"),
                          ("cluster.layers=[a, a]", "cluster.layers"),
                          ("quantize.aware=pcqat", "quantize.aware")):
        with pytest.raises(ParamsError, match=key):
            load_params("params.yaml", [override])
    with pytest.raises(ParamsError, match="pcqat keeps the pruned zeros"):
        load_params("params.yaml", ["cluster.enabled=true", "prune.enabled=false", "quantize.aware=pcqat"])
