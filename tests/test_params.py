import dataclasses
from pathlib import Path

import pytest

from pipeline.params import ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="params.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", [ROOT / "params.yaml", *sorted((ROOT / "configs").glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_committed_params_and_configs_load(path):
    params = load_params(path)
    assert params.name


def test_config_overlays_its_base():
    smoke = load_params(ROOT / "configs" / "smoke.yaml")
    base = load_params(ROOT / "params.yaml")
    assert smoke.model.architecture == "tiny"
    assert smoke.train.learning_rate == base.train.learning_rate


@pytest.mark.bad_input("params")
def test_unknown_key_is_rejected_naming_it(tmp_path):
    with pytest.raises(ParamsError, match=r"train\.epoch: unknown key.*epochs"):
        load_params(write(tmp_path, "train:\n  epoch: 3\n"))


@pytest.mark.bad_input("params")
def test_wrong_type_is_rejected(tmp_path):
    with pytest.raises(ParamsError, match=r"train\.epochs: expected int, got 'three'"):
        load_params(write(tmp_path, "train:\n  epochs: three\n"))


@pytest.mark.bad_input("params")
@pytest.mark.parametrize("override, message", [
    ("prune.final_sparsity=1.0", r"prune\.final_sparsity: must be in \[0, 1\)"),
    ("prune.final_sparsity=-0.1", r"prune\.final_sparsity: must be in \[0, 1\)"),
    ("prune.end_epoch=0", r"prune\.end_epoch: must be after begin_epoch"),
    ("train.epochs=0", r"train\.epochs: must be at least 1"),
    ("model.architecture=resnet999", r"unknown architecture 'resnet999'; known: .*small_cnn"),
    ("convert.formats=[int4]", r"unknown format 'int4'"),
    ("validate.latency_runs=10", r"at least 200"),
    ("data.source=csv", r"data\.source: expected one of 'fashion_mnist', 'multifashion', 'folder'"),
    ("prune.initial_sparsity=0.9", r"prune\.initial_sparsity: must not exceed final_sparsity"),
    ("prune.end_epoch=99", r"prune\.end_epoch: must not exceed prune\.epochs"),
    ("data.test_fraction=0.95", r"must leave some training data"),
    ("name=../x", r"name: must be letters"),
    ("model.options={pool: max}", r"model: architecture small_cnn: unknown option 'pool'; its options: .*pooling"),
    ("model.options.pooling=min", r"pooling must be one of max, avg, strided, none"),
    ("model.options=[1]", r"model\.options: expected a mapping"),
    ("model.options.depth=0", r"depth \(blocks per stage\) must be a positive integer"),
    ("zoo.variants=[vgg]", r"zoo\.variants: unknown architecture 'vgg'"),
    ("zoo.variants=[tiny, tiny]", r"zoo\.variants: names a variant twice"),
    ("data.tasks=[top_left]", r"data\.tasks: only a multi-task source"),
    ("prune.sparsity_m_by_n=[1, 4]", r"prune\.sparsity_m_by_n: must be null or \[2, 4\]"),
    ("prune.policy=gpu", r"prune\.policy: expected one of 'xnnpack' or null"),
    ("structured.fraction=1.0", r"structured\.fraction: must be in \(0, 1\)"),
    ("structured.criterion=random", r"structured\.criterion: expected one of 'l1', 'l2'"),
    ("structured.target_ratio=0", r"structured\.target_ratio: must be in \(0, 1\]"),
    ("structured.layer_fractions={stage2_conv: 1.5}", r"structured\.layer_fractions\.stage2_conv: must be a number in \[0, 1\)"),
    ("train.task_weights={top_left: 2}", r"train\.task_weights\.top_left: fashion_mnist has a single task"),
    ("train.sharing_coefficient=-1", r"train\.sharing_coefficient: must be at least 0"),
    ("train.loss_weighting=learned", r"train\.loss_weighting: expected one of 'fixed', 'uncertainty'"),
])
def test_impossible_values_are_rejected_naming_key_and_allowed_values(override, message):
    with pytest.raises(ParamsError, match=message):
        load_params(ROOT / "params.yaml", [override])


@pytest.mark.bad_input("params")
def test_per_layer_fractions_need_the_layer_scope():
    with pytest.raises(ParamsError, match=r"structured\.layer_fractions: needs scope: layer \(scope is global\)"):
        load_params(ROOT / "params.yaml", ["structured.layer_fractions={stage2_conv: 0.5}", "structured.scope=global"])


@pytest.mark.bad_input("params")
def test_yaml_syntax_error_gives_the_line(tmp_path):
    with pytest.raises(ParamsError, match=r"line 3.*YAML syntax error"):
        load_params(write(tmp_path, "train:\n  epochs: 3\n\tbatch_size: 4\n"))


def test_set_override_parses_yaml_values():
    params = load_params(ROOT / "params.yaml", ["train.epochs=3", "data.limit_train=500", "data.dir=/x"])
    assert (params.train.epochs, params.data.limit_train, params.data.dir) == (3, 500, "/x")


def test_params_are_frozen():
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.train.epochs = 1  # type: ignore[misc]


@pytest.mark.bad_input("params")
def test_extends_cycle_is_reported(tmp_path):
    write(tmp_path, "extends: b.yaml\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(ParamsError, match="cycle"):
        load_params(tmp_path / "a.yaml")


@pytest.mark.bad_input("params")
def test_missing_params_file_is_reported(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
