"""No silent no-ops, no NaN models, no crash after the work: each case fails in one line, before the
expensive part, or ends in a correct result."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import (
    ROOT,
    SMOKE,
    fails_cleanly,
    new_project,
    run_cli,
    snapshot,
    tiny_dataset,
)

from pipeline import architectures
from pipeline.compression.channels.graph import ChannelGraph
from pipeline.compression.channels.ranking import rank, refuse_ties
from pipeline.compression.channels.search import iterate, sensitivity
from pipeline.compression.channels.surgery import (
    choose,
    layer_fractions,
    remove_channels,
)
from pipeline.core.artifacts import check_writable, write_json
from pipeline.core.errors import PipelineError
from pipeline.core.framework import keras
from pipeline.core.params import ParamsError, StructuredParams, TrainParams, load_params
from pipeline.core.provenance import stale_link
from pipeline.export.measure import measure
from pipeline.export.tflite import to_tflite
from pipeline.studies.zoo import markdown as zoo_markdown
from pipeline.training.multitask import sharing_penalty, tower_groups
from pipeline.training.resume import Diverged

DATA = tiny_dataset(n=120, size=12)
TASKS = ("top_left", "bottom_right")


def built(name, width=8, **kw):
    keras.utils.set_random_seed(0)
    return architectures.build(name, (12, 12, 1), 3, width=width, **kw)


# --- divergence ----------------------------------------------------------------------------------


def test_a_nan_loss_stops_the_fit_with_what_to_lower():
    callback = Diverged("training", "Lower train.learning_rate.")
    callback.on_epoch_end(0, {"loss": 2.3})
    with pytest.raises(PipelineError, match=r"training diverged: the loss became inf in epoch 2; "
                                            r"nothing was written\. Lower train\.learning_rate"):
        callback.on_epoch_end(1, {"loss": float("inf")})


@pytest.mark.e2e
def test_a_fine_tuning_that_diverges_writes_no_model(tmp_path):
    """(The issue's 1e38 task weights and sharing coefficients are refused by the params' ranges now;
    a model whose weights are already NaN still makes the loss NaN from the first step.)"""
    project = new_project(tmp_path)
    model = architectures.build("tiny", (28, 28, 1), 10)
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    model.save(project / "nan.keras")
    proc = run_cli("prune", *SMOKE, "--set", "data.limit_train=600", "--model", "nan.keras", cwd=project, check=False)
    fails_cleanly(proc, "pruning's fine-tuning diverged: the loss became nan in epoch 1; nothing was written. "
                        "Lower prune.learning_rate")
    assert not (project / "models" / "user").exists() or not list((project / "models" / "user").iterdir())


# --- before the work: folders, names, configs -----------------------------------------------------


@pytest.mark.bad_input("the disk")
def test_a_file_where_an_output_folder_goes_is_refused_before_any_work(tmp_path):
    (tmp_path / "tflite_out").mkdir()
    (tmp_path / "tflite_out" / "prune_compare").write_text("not a folder")
    with pytest.raises(PipelineError, match="cannot write .*: .*prune_compare is a file, not a folder"):
        check_writable(tmp_path / "tflite_out" / "prune_compare" / "prune_compare.json")


@pytest.mark.bad_input("the disk")
def test_a_name_too_long_for_the_file_system_with_its_record_is_refused_before_any_work(tmp_path):
    check_writable(tmp_path / ("m" * 200 + ".keras"))  # fits, with its record and temporary names
    with pytest.raises(PipelineError, match=r"the name is 246 bytes; with its record and temporary files it must "
                                            r"be at most 24\d"):
        check_writable(tmp_path / ("m" * 240 + ".keras"))
    with pytest.raises(PipelineError, match="bytes"):  # 90 CJK characters are 270 bytes
        check_writable(tmp_path / ("模" * 80 + ".keras"))


def test_prune_compare_into_a_file_fails_before_any_fine_tuning(copy_of_smoke):
    (copy_of_smoke / "tflite_out" / "prune_compare").write_text("not a folder")
    fails_cleanly(run_cli("prune-compare", *SMOKE, cwd=copy_of_smoke, check=False), "is a file, not a folder")


@pytest.mark.bad_input("params files")
def test_a_config_that_extends_another_without_a_name_of_its_own_is_refused(tmp_path):
    (tmp_path / "mine.yaml").write_text(f"extends: {ROOT / 'configs' / 'smoke.yaml'}\ntrain: {{epochs: 2}}\n")
    with pytest.raises(ParamsError, match=r"sets no name of its own, so its artefacts would overwrite those of "
                                          r"'smoke'"):
        load_params(tmp_path / "mine.yaml")
    assert load_params(tmp_path / "mine.yaml", ["name=mine"]).name == "mine"


# --- every stage checks that its input belongs to it ----------------------------------------------


@pytest.mark.bad_input("stale artefacts")
def test_a_stage_refuses_a_model_made_with_other_params_naming_the_key(copy_of_smoke):
    before = snapshot(copy_of_smoke / "models")
    fails_cleanly(run_cli("prune", *SMOKE, "--set", "train.epochs=3", cwd=copy_of_smoke, check=False),
                  "models/smoke.keras was made with train.epochs=4", "these params say 3", "make train")
    fails_cleanly(run_cli("convert", *SMOKE, "--set", "model.width=16", cwd=copy_of_smoke, check=False),
                  "was made with model.width")
    assert snapshot(copy_of_smoke / "models") == before


def test_a_model_made_from_an_earlier_parent_is_found_stale(tmp_path):
    parent, child = tmp_path / "a.keras", tmp_path / "a.pruned.keras"
    parent.write_bytes(b"the parent, re-made since")
    child.write_bytes(b"child")
    write_json(tmp_path / "a.pruned.keras.json", {"stage": "prune", "parent": str(parent),
                                                  "inputs": {"model": "sha256:" + "0" * 64}})
    write_json(tmp_path / "a.keras.json", {"stage": "train", "params": {}})
    assert stale_link(child) == (child, parent)
    write_json(tmp_path / "a.pruned.keras.json", {"stage": "prune", "parent": str(parent), "inputs": [1]})
    assert stale_link(child) is None  # a record edited into nonsense claims nothing


@pytest.mark.bad_input("model files")
def test_a_model_for_another_task_is_not_scored_against_this_tasks_labels(tmp_path):
    model = built("tiny", tasks=("top_left",))
    path = tmp_path / "m.float32.tflite"
    path.write_bytes(to_tflite(model, "float32"))
    other = tiny_dataset(n=120, size=12)
    wrong = type(other)(*[getattr(other, f) for f in ("x_train", "y_train", "x_val", "y_val", "x_test")],
                        other.y_test[:, None], other.class_names, "synthetic", other.fingerprint, ("bottom_right",))
    with pytest.raises(PipelineError, match="outputs top_left do not match the data's tasks bottom_right"):
        measure(path, wrong, load_params(ROOT / "params.yaml").validate, threads=[])


# --- structured pruning: no silent no-ops -----------------------------------------------------------


def test_a_first_round_that_can_remove_nothing_is_an_error_not_round_zero():
    model = built("tiny")  # 8, 8 and 4 channels: blocks of 16 leave every layer whole
    s = StructuredParams(channel_multiple=16, target="macs")
    with pytest.raises(PipelineError, match=r"nothing to remove: .*channel_multiple=16.*lower channel_multiple"):
        iterate(model, DATA, s, TrainParams(), 0, latency=lambda m: 0.0)


def test_apoz_on_layers_no_relu_follows_is_refused_naming_them():
    model = built("inverted_cnn", width=8)
    scores = rank(model, "apoz", DATA.x_val)
    with pytest.raises(PipelineError, match=r"apoz cannot rank the channels of .*project.*no ReLU follows them"):
        refuse_ties(model, scores, "apoz")
    refuse_ties(model, rank(model, "l1"), "l1")  # the weights do rank them


def test_conflicting_fractions_on_tied_residual_layers_are_refused():
    model = built("bottleneck_cnn")
    tied = next(s for s in ChannelGraph(model).prunable() if len(s.producers) > 1)
    first, second = tied.producers[:2]
    assert layer_fractions(model, 0.25, {first: 0.5, second: 0.5})[tied.id] == 0.5
    with pytest.raises(PipelineError, match=f"{first} \\(0.1\\) and {second} \\(0.5\\) write the same channels"):
        layer_fractions(model, 0.25, {first: 0.1, second: 0.5})


def test_sensitivity_does_not_label_a_cut_of_nothing_as_ten_percent():
    model = built("tiny")
    _, rows = sensitivity(model, DATA, "l1", ratios=(0.1, 0.5))
    small = [r for r in rows if r["ratio"] == 0.1 and r["channels"] < 10]
    assert small and all(r["removed"] == 0 and r["val_accuracy"] is None for r in small)
    assert all(r["removed"] > 0 and r["val_accuracy"] is not None for r in rows if r["ratio"] == 0.5)


def test_the_smoke_configs_structured_settings_cut_its_tiny_model():
    s = load_params(ROOT / "configs" / "smoke.yaml").structured
    model = built("tiny")
    keep = choose(rank(model, s.criterion), s.fraction, s.scope, s.channel_multiple)
    assert any(len(k) < space.channels for space, k in zip(ChannelGraph(model).prunable(), keep.values()))


# --- soft sharing survives structured pruning ---------------------------------------------------------


def test_soft_sharing_towers_lose_the_same_channels_and_the_penalty_still_works():
    model = built("tiny", width=8, options={"sharing": "soft"}, tasks=TASKS)
    graph = ChannelGraph(model)
    tied = [s for s in graph.prunable() if any(p.startswith("top_left_") for p in s.producers)]
    assert tied and all(sorted(p.split("_", 2)[-1] for p in s.producers if not p.startswith("top_left")) ==
                        sorted(p.split("_", 2)[-1] for p in s.producers if p.startswith("top_left")) for s in tied)
    narrow = remove_channels(model, choose(rank(model, "l1"), 0.4, scope="global"))
    for group in tower_groups(narrow, TASKS):
        assert len({tuple(w.shape) for w in group}) == 1  # equal widths, tower by tower
    for penalty in ("l2", "trace"):
        assert np.isfinite(float(sharing_penalty(tower_groups(narrow, TASKS), penalty)))


def test_one_tower_has_nothing_to_be_tied_to():
    model = built("tiny", width=8, options={"sharing": "soft"}, tasks=("top_left",))
    assert tower_groups(model, ("top_left",)) == []


# --- studies: every kind of model their tables can get ----------------------------------------------


def test_the_zoo_table_shows_each_task_of_a_multi_task_zoo():
    task = {"float_accuracy": 0.9, "int8_accuracy": 0.89, "train_accuracy": 0.95, "val_accuracy": 0.91, "gap": 0.04}
    row = {"variant": "tiny", "block": "conv", "pooling": "max", "params": 10, "macs": 2e6, "int8_bytes": 5,
           "p50_ms": 0.01, "train_seconds": 3,
           "tasks": {"top_left": task, "bottom_right": {**task, "int8_accuracy": 0.5}},
           **task}
    table = zoo_markdown({"epochs": 1, "latency_runs": 20, "tasks": list(TASKS), "variants": [row]})
    assert "| 89.00 / 50.00 |" in table and "(top_left / bottom_right)" in table


# --- --set keys a command does not read -----------------------------------------------------------------


def test_a_set_the_study_overrides_is_refused_and_one_it_does_not_read_is_warned(tmp_path):
    project = new_project(tmp_path)
    fails_cleanly(run_cli("zoo", *SMOKE, "--set", "model.width=8", cwd=project, check=False),
                  "zoo: --set model.width has no effect: the study sets it per variant")
    proc = run_cli("summary", *SMOKE, "--untrained", "--set", "prune.epochs=3", cwd=project)
    assert "warning: summary does not read prune.epochs; that --set has no effect here" in proc.stderr
    assert json.dumps(proc.stderr).count("warning") == 1
