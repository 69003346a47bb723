"""Structured pruning: channel ranking on hand-made models, removal through every kind of dependency
(batch norm, depthwise, flatten -> dense, residual additions, task heads), and the whole compression
chain (structured, magnitude, clustering, PCQAT) run as stages."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SMOKE, fails_cleanly, new_project, run_cli, tiny_dataset

from pipeline import architectures
from pipeline.compression.channels.graph import ChannelGraph
from pipeline.compression.channels.ranking import rank
from pipeline.compression.channels.surgery import choose, remove_channels
from pipeline.compression.qat import quantized_layers
from pipeline.core.errors import PipelineError
from pipeline.core.framework import keras
from pipeline.core.keras_io import load_model
from pipeline.export.costs import model_costs, totals

DATA = tiny_dataset(n=120, size=12)


def built(name, width=8, **kw):
    keras.utils.set_random_seed(0)
    return architectures.build(name, (12, 12, 1), 3, width=width, **kw)


def space_of(model, layer):
    graph = ChannelGraph(model)
    return graph.space(layer)


def kill(model, bn_names, channel):
    """Make ``channel`` exactly zero after these batch norms (scale and shift zero)."""
    for name in bn_names:
        gamma, beta, mean, var = model.get_layer(name).get_weights()
        gamma[channel], beta[channel] = 0, 0
        model.get_layer(name).set_weights([gamma, beta, mean, var])


def test_a_filter_of_zeros_ranks_last_by_weight_norm():
    model = built("plain_cnn")
    kernel = model.get_layer("stage1_2_conv").get_weights()[0]
    kernel[..., 5] = 0
    model.get_layer("stage1_2_conv").set_weights([kernel])
    for criterion in ("l1", "l2"):
        scores = rank(model, criterion)[space_of(model, "stage1_2_conv")]
        assert np.argmin(scores) == 5 and scores[5] == 0


def test_a_channel_that_is_always_zero_has_apoz_one_and_no_mean_activation():
    model = built("plain_cnn")
    kill(model, ["stage1_1_bn"], 3)
    x = DATA.x_val
    sid = space_of(model, "stage1_1_conv")
    assert rank(model, "apoz", x)[sid][3] == 0.0  # score = 1 - APoZ
    assert rank(model, "mean_activation", x)[sid][3] == 0.0
    taylor = rank(model, "taylor", x, DATA.y_val)[sid]
    assert taylor[3] == 0.0 and taylor.max() > 0


@pytest.mark.parametrize("name", ["plain_cnn", "small_cnn", "mobile_cnn", "bottleneck_cnn", "inverted_cnn"])
def test_removing_dead_channels_leaves_the_outputs_unchanged(name):
    model = built(name)
    graph = ChannelGraph(model)
    keep = {}
    for space in graph.prunable():
        # every batch norm writing these channels (after each producer) gets the dead channel
        bns = [n for n, sid in graph.space_of.items() if graph.find(sid) == space.id
               and type(graph.layers[n]).__name__ == "BatchNormalization"]
        producers_bn = [n for n in bns if graph.inputs_of[n][0] in space.producers]
        kill(model, producers_bn, 0)
        keep[space.id] = np.arange(1, space.channels)
    x = DATA.x_test.astype("float32")
    expected = model.predict(x, verbose=0)
    narrow = remove_channels(model, keep)
    np.testing.assert_allclose(narrow.predict(x, verbose=0), expected, atol=1e-5)
    assert totals(model_costs(narrow))["params"] < totals(model_costs(model))["params"]


def test_a_residual_addition_ties_its_inputs_channels():
    model = built("bottleneck_cnn")
    graph = ChannelGraph(model)
    tied = graph.space("stage2_1_add")
    assert graph.space("stage2_1_expand_conv") == graph.space("stage2_1_proj_conv") == tied
    assert graph.space("stage2_2_expand_conv") == tied  # the next block adds onto the same channels
    assert graph.space("stage2_1_reduce_conv") != tied


def test_removal_shrinks_every_dependent_layer_consistently():
    model = built("mobile_cnn", width=16)
    scores = rank(model, "l1")
    narrow = remove_channels(model, choose(scores, 0.5))
    assert narrow.get_layer("stage1_2_pw").filters == 8 and narrow.get_layer("stage2_1_dw").get_weights()[0].shape[2] == 8
    assert narrow.get_layer("predictions").get_weights()[0].shape[0] == 3 * 3 * narrow.get_layer("bottleneck_conv").filters
    assert narrow.predict(DATA.x_test.astype("float32"), verbose=0).shape == (len(DATA.x_test), 3)
    assert totals(model_costs(narrow))["macs"] < 0.5 * totals(model_costs(model))["macs"]


def test_task_heads_are_never_narrowed():
    model = built("tiny", tasks=("top_left", "bottom_right"))
    graph = ChannelGraph(model)
    assert {s.producers[0] for s in graph.prunable()} == {"stage1_conv", "stage2_conv", "bottleneck_conv"}
    narrow = remove_channels(model, choose(rank(model, "l2"), 0.5))
    assert [o.shape[-1] for o in narrow.outputs] == [3, 3] and sorted(narrow.output_names) == sorted(model.output_names)


def test_global_choice_removes_the_requested_share_and_keeps_one_channel_per_layer():
    scores = {0: np.array([1.0, 2.0, 3.0, 4.0]), 1: np.array([0.01, 0.02])}
    keep = choose(scores, 0.5, scope="global")
    assert sum(len(k) for k in keep.values()) == 3 and len(keep[1]) == 1
    assert list(choose(scores, 0.5)[0]) == [2, 3]
    with pytest.raises(PipelineError, match="in \\[0, 1\\)"):
        choose(scores, 1.0)


def test_per_layer_fractions_override_the_share_of_the_named_layers_only():
    from pipeline.compression.channels.surgery import layer_fractions

    model = built("plain_cnn")
    spaces = {name: space for space in ChannelGraph(model).prunable() for name in space.producers}
    shares = layer_fractions(model, 0.25, {"stage1_1_conv": 0.0, "stage2_1_conv": 0.5})
    keep = choose(rank(model, "l1"), shares)
    for name, space in spaces.items():
        share = {"stage1_1_conv": 0.0, "stage2_1_conv": 0.5}.get(name, 0.25)
        assert len(keep[space.id]) == space.channels - int(share * space.channels), name
    with pytest.raises(PipelineError, match="stage9_conv: not a prunable layer of .*; prunable: stage1_1_conv"):
        layer_fractions(model, 0.25, {"stage9_conv": 0.5})


def test_widths_are_rounded_down_to_whole_channel_blocks():
    from pipeline.compression.channels.surgery import kept_width

    assert [kept_width(64, 0.25, 16), kept_width(48, 0.25, 16), kept_width(32, 0.25, 16)] == [48, 32, 16]
    assert kept_width(16, 0.25, 16) == 16 and kept_width(12, 0.5, 16) == 12  # at one block or below: left alone
    assert kept_width(64, 0.25) == 48 and kept_width(10, 0.25) == 8 and kept_width(2, 0.9) == 1
    keep = choose({0: np.arange(40.0), 1: np.arange(16.0)}, 0.25, multiple=16)
    assert len(keep[0]) == 16 and list(keep[0]) == list(range(24, 40)) and len(keep[1]) == 16
    with pytest.raises(PipelineError, match="need scope: layer"):
        choose({0: np.arange(40.0)}, 0.25, scope="global", multiple=16)


def trained(name="plain_cnn"):
    from pipeline.training.fit import compile_for_training

    model = built(name)
    compile_for_training(model, 3e-3)
    model.fit(DATA.x_train.astype("float32"), DATA.y_train, epochs=10, batch_size=32, verbose=0)
    return model


@pytest.mark.e2e
def test_sensitivity_reports_each_layer_at_each_ratio_without_retraining():
    from pipeline.compression.channels.search import sensitivity

    model = trained()
    base, rows = sensitivity(model, DATA, "l1", ratios=(0.25, 0.75))
    assert len(rows) == 2 * len(ChannelGraph(model).prunable())
    assert all(r["drop"] == pytest.approx(base - r["val_accuracy"], abs=1e-4) for r in rows)
    assert any(r["drop"] > 0 for r in rows if r["ratio"] == 0.75)


def structured_params(**kw):
    from pipeline.core.params import StructuredParams

    return StructuredParams(**{"finetune_epochs": 1, "batch_size": 32, "fraction": 0.2, "channel_multiple": 1,
                               "target": "macs", **kw})


@pytest.mark.e2e
def test_the_accuracy_budget_stops_the_rounds_and_the_kept_model_is_within_it():
    from pipeline.compression.channels.search import iterate, val_accuracy
    from pipeline.core.params import TrainParams

    model = trained()
    s = structured_params(fraction=0.6, max_rounds=4, accuracy_budget=0.0, learning_rate=1e-9, target_ratio=0.01)
    kept, history = iterate(model, DATA, s, TrainParams(), seed=0, latency=lambda m: 0.0)
    assert history[-1]["within_budget"] is False and len(history) <= 5
    assert val_accuracy(kept, DATA) >= history[0]["val_accuracy"] - s.accuracy_budget
    last_good = [h for h in history if h["within_budget"]][-1]
    assert totals(model_costs(kept))["params"] == last_good["params"]


def test_on_a_multi_task_model_one_task_may_not_pay_for_the_other():
    from pipeline.compression.channels.search import within_budget

    start = {"val_tasks": {"a": 0.90, "b": 0.80}}
    assert within_budget(start, {"val_tasks": {"a": 0.895, "b": 0.795}}, 0.01)
    # the mean drops by 0.005 only, but task b loses 2 points
    assert not within_budget(start, {"val_tasks": {"a": 0.91, "b": 0.78}}, 0.01)
    assert within_budget({"val_tasks": {"label": 0.9}}, {"val_tasks": {"label": 0.89}}, 0.0101)


@pytest.mark.e2e
def test_the_rounds_stop_once_the_target_is_reached():
    from pipeline.compression.channels.search import iterate
    from pipeline.core.params import TrainParams

    model = trained()
    s = structured_params(fraction=0.3, max_rounds=5, accuracy_budget=0.99, target="params", target_ratio=0.6)
    kept, history = iterate(model, DATA, s, TrainParams(), seed=0, latency=lambda m: 0.0)
    assert history[-1]["params"] <= 0.6 * history[0]["params"] < history[-2]["params"]
    assert totals(model_costs(kept))["params"] == history[-1]["params"]


@pytest.mark.e2e
@pytest.mark.long
def test_the_whole_chain_runs_as_stages_and_ships_an_int8_file_with_zeros_and_clusters_kept(tmp_path):
    """structured -> magnitude pruning -> clustering -> PCQAT, as a config says and `make all` runs it;
    then the sensitivity scan and prune-compare on the same models."""
    project = new_project(tmp_path)
    # the smoke model on 600 training and 200 test images: this test is about the plumbing
    small = ("--set", "data.limit_train=600", "--set", "data.limit_test=200", "--set", "validate.latency_runs=20",
             "--set", "prune.frequency=1", "--set", "prune.epochs=1", "--set", "prune.end_epoch=1",
             "--set", "model.architecture=tiny", "--set", "structured.max_rounds=1", "--set", "structured.fraction=0.25",
             "--set", "structured.finetune_epochs=1", "--set", "structured.accuracy_budget=0.5",
             "--set", "structured.target_ratio=0.1", "--set", "structured.channel_multiple=1")
    chain = (*small, "--set", "structured.enabled=true", "--set", "cluster.enabled=true", "--set", "cluster.clusters=8",
             "--set", "cluster.min_weights=300", "--set", "cluster.epochs=1", "--set", "quantize.aware=pcqat",
             "--set", "quantize.epochs=1", "--set", "convert.formats=[float32, int8]")
    paths = run_cli("paths", *SMOKE, *chain, cwd=project).stdout
    assert "SHRUNK := models/smoke.shrunk.keras" in paths and "QAT := models/smoke.shrunk.pcqat.h5" in paths
    for stage in ("train", "prune"):  # the smoke model, on that subset, and its magnitude pruning
        run_cli(stage, *SMOKE, *small, cwd=project)
    fails_cleanly(run_cli("prune", *SMOKE, *chain, cwd=project, check=False), "mobiledeploy shrink")
    run_cli("shrink", *SMOKE, *chain, cwd=project)
    history = json.loads((project / "models" / "smoke.shrunk.keras.json").read_text())["metrics"]["history"]
    # one round (several: the tests above)
    assert [h["round"] for h in history] == [0, 1] and history[1]["macs"] < history[0]["macs"]
    assert "| 1 |" in (project / "tflite_out" / "smoke.shrunk.md").read_text()
    run_cli("prune", *SMOKE, *chain, cwd=project)  # TF-MOT on the narrower model
    out = run_cli("cluster", *SMOKE, *chain, cwd=project).stdout
    assert "on models/smoke.shrunk.pruned.keras" in out and "zeros kept" in out
    record = json.loads((project / "models/smoke.shrunk.clustered.keras.json").read_text())
    layers = record["metrics"]["clustered_layers"]
    assert layers and max(layers.values()) <= 9
    out = run_cli("qat", *SMOKE, *chain, cwd=project).stdout
    assert "kept in float: rescale" in out and "models/smoke.shrunk.pcqat.h5" in out
    record = json.loads((project / "models/smoke.shrunk.pcqat.h5.json").read_text())
    assert record["metrics"]["kernel_sparsity"] >= record["metrics"]["parent_kernel_sparsity"] > 0.3
    assert quantized_layers(load_model(project / "models/smoke.shrunk.pcqat.h5"))  # reloads quantization-aware
    assert "up to date" in run_cli("qat", *SMOKE, *chain, cwd=project).stdout
    for stage in ("convert", "validate"):
        run_cli(stage, *SMOKE, *chain, cwd=project)
    assert not list((project / "tflite_out").glob("smoke.shrunk.pcqat.float*.tflite"))  # int8 only
    report = json.loads((project / "tflite_out/smoke.report.json").read_text())
    files = {Path(e["file"]).name: e for e in report["artefacts"]}
    assert {"smoke.float32.tflite", "smoke.shrunk.int8.tflite", "smoke.shrunk.pruned.int8.tflite",
            "smoke.shrunk.clustered.int8.tflite", "smoke.shrunk.pcqat.int8.tflite"} <= set(files)
    entry = files["smoke.shrunk.pcqat.int8.tflite"]
    assert entry["keras_model"].endswith("models/smoke.shrunk.pcqat.h5")
    assert entry["keras_agreement"] >= 0.97, entry
    assert entry["micro"]["same_labels"] >= 9  # its C array, run in LiteRT Micro
    errors = json.loads((project / "tflite_out/smoke.layers.json").read_text())["files"]["smoke.shrunk.pcqat.int8.tflite"]
    assert errors["reference"] == "smoke.shrunk.clustered.float32.tflite"  # the float file of the model it was tuned from
    rows = {r["layer"]: r for r in errors["rows"]}  # the quant_ wrappers matched to the layers they wrap
    assert {"stage1_conv + stage1_bn + stage1_relu", "predictions", "output"} <= set(rows), sorted(rows)
    assert 0 < rows["output"]["error"] < 0.2
    kept = files["smoke.shrunk.clustered.int8.tflite"]["sparsity"]  # the clustered Keras model's zeros
    assert entry["file_weights"]["zero_share"] >= kept - 1e-3 and kept > 0.3, (entry["file_weights"], kept)
    assert entry["macs"] == files["smoke.shrunk.int8.tflite"]["macs"] > 0  # costs counted through the wrappers
    assert entry["macs"] < files["smoke.int8.tflite"]["macs"]
    clustered = [t for t in entry["file_weights"]["tensors"] if any(name in t["name"] for name in layers)]
    assert len(clustered) == len(layers) and all(t["unique_per_channel"] <= 9 for t in clustered), clustered
    assert not (project / "models/smoke.pruned.pcqat.h5").exists()
    shrunk = project / "models" / "smoke.shrunk.keras"
    for stage in ("prune", "convert", "validate"):  # the shrunk model given as a model of one's own
        run_cli(stage, *SMOKE, *small, "--set", "convert.formats=[float32, int8]", "--model", str(shrunk), cwd=project)
    report = json.loads((project / "tflite_out" / "smoke.shrunk.report.json").read_text())
    assert {e["model"] for e in report["artefacts"]} == {"smoke.shrunk"}

    fails_cleanly(run_cli("cluster", *SMOKE, *small, cwd=project, check=False), "cluster.enabled is false")
    fails_cleanly(run_cli("qat", *SMOKE, *small, cwd=project, check=False), "quantize.aware is none")
    fails_cleanly(run_cli("qat", *SMOKE, *small, "--set", "quantize.aware=cqat", cwd=project, check=False),
                  "quantize.aware", "cluster.enabled is false")
    fails_cleanly(run_cli("qat", *SMOKE, *small, "--set", "quantize.aware=pqat", "--set", "prune.enabled=false",
                          cwd=project, check=False), "quantize.aware", "prune.enabled is false")
    fails_cleanly(run_cli("qat", *SMOKE, *small, "--set", "quantize.aware=qat", "--model", "models/smoke.pruned.keras",
                          cwd=project, check=False), "already a pruned model")
    fails_cleanly(run_cli("prune-compare", *SMOKE, *chain, cwd=project, check=False), "structured.enabled=false")
    run_cli("sensitivity", *SMOKE, *small, cwd=project)
    assert "| stage2_conv | 8 |" in (project / "tflite_out" / "smoke.sensitivity.md").read_text()
    run_cli("prune-compare", *SMOKE, *small, cwd=project)
    result = json.loads((project / "tflite_out" / "prune_compare" / "prune_compare.json").read_text())
    labels = [r["model"] for r in result["rows"]]
    assert labels[:4] == ["unpruned", "magnitude (50%)", "structured (l1, 1 round)", "structured + magnitude"]
    assert [label.split("(")[1].rstrip(")") for label in labels[4:]] == ["l1", "l2", "mean_activation", "apoz", "taylor"]
    rows = {r["model"]: r for r in result["rows"]}
    assert rows["structured (l1, 1 round)"]["macs"] < rows["unpruned"]["macs"] == rows["magnitude (50%)"]["macs"]
    assert rows["structured + magnitude"]["sparsity"] > 0.3 and rows["unpruned"]["sparsity"] == 0
    assert all(r["macs"] == rows["structured (l1, 1 round)"]["macs"] for r in result["rows"][4:])  # the same widths
