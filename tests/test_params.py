import dataclasses
import shutil
from pathlib import Path

import pytest

from pipeline.core.params import ParamsError, load_params

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
    ("prune.end_epoch=0", r"prune\.end_epoch: must be in \[1, 1_000\]"),
    ("prune.begin_epoch=5", r"prune\.end_epoch: must be after begin_epoch \(5\)"),
    ("train.epochs=0", r"train\.epochs: must be in \[1, 1_000\], got 0"),
    ("model.architecture=resnet999", r"unknown architecture 'resnet999'; known: .*small_cnn"),
    ("convert.formats=[int4]", r"unknown format 'int4'"),
    ("validate.latency_runs=10", r"validate\.latency_runs: must be in \[20, "),  # the suite's floor (conftest)
    ("data.source=csv", r"data\.source: expected one of 'fashion_mnist', 'multifashion', 'folder'"),
    ("prune.initial_sparsity=0.9", r"prune\.initial_sparsity: must not exceed final_sparsity"),
    ("prune.end_epoch=99", r"prune\.end_epoch: must not exceed prune\.epochs"),
    ("data.test_fraction=0.95", r"must leave some training data"),
    ("name=../x", r"name: must be 1 to 64 ASCII letters"),
    ("model.options={pool: max}", r"model: architecture small_cnn: unknown option 'pool'; its options: .*pooling"),
    ("model.options.pooling=min", r"pooling must be one of max, avg, strided, none"),
    ("model.options=[1]", r"model\.options: expected a mapping"),
    ("model.options.depth=0", r"depth \(blocks per stage\) must be an integer in \[1, 16\]"),
    ("zoo.variants=[vgg]", r"zoo\.variants: unknown architecture 'vgg'"),
    ("zoo.variants=[tiny, tiny]", r"zoo\.variants: names a variant twice"),
    ("data.tasks=[top_left]", r"data\.tasks: only a multi-task source"),
    ("prune.sparsity_m_by_n=[1, 4]", r"prune\.sparsity_m_by_n: must be null or \[2, 4\]"),
    ("prune.policy=gpu", r"prune\.policy: expected one of 'xnnpack' or null"),
    ("structured.fraction=1.0", r"structured\.fraction: must be in \(0, 1\)"),
    ("structured.criterion=random", r"structured\.criterion: expected one of 'l1', 'l2'"),
    ("structured.target_ratio=0", r"structured\.target_ratio: must be in \(0, 1\]"),
    ("structured.layer_fractions={stage2_conv: 1.5}", r"structured\.layer_fractions\.stage2_conv: must be in \[0, 1\)"),
    ("train.task_weights={top_left: 2}", r"train\.task_weights\.top_left: fashion_mnist has a single task"),
    ("train.sharing_coefficient=-1", r"train\.sharing_coefficient: must be in \[0, 100\]"),
    ("train.loss_weighting=learned", r"train\.loss_weighting: expected one of 'fixed', 'uncertainty'"),    # absurd numbers, hostile strings and choices of the wrong type
    ("seed=-1", r"seed: must be in \[0, 2_147_483_647\]"),
    ("seed=99999999999", r"seed: must be in \[0, 2_147_483_647\]"),
    ("train.epochs=1e20", r"train\.epochs: expected int, got 1e\+20"),  # a number (YAML 1.2 reads 1e20 so), not an int
    ("train.epochs=100000000000000000000", r"train\.epochs: must be in \[1, 1_000\]"),
    ("model.width=100000", r"model\.width: must be in \[1, 512\]"),
    ("model.options={depth: 100000}", r"depth \(blocks per stage\) must be an integer in \[1, 16\]"),
    ("validate.threads=[100000]", r"validate\.threads: must be in \[0, 256\]"),
    ("prune.frequency=10000000000000000000000", r"prune\.frequency: must be in \[1, 100_000\]"),
    ("name=" + "服" * 90, r"name: must be 1 to 64 ASCII"),
    ("name=" + "a" * 65, r"name: must be 1 to 64 ASCII"),
    ("train=&a [*a]", r"aliases"),
    ("seed=!!int abc", r"seed: expected int, got '!!int abc'"),
    ("train.learning_rate=" + "9" * 400, r"train\.learning_rate: expected float"),
    ("data.channels=true", r"data\.channels: expected one of 1, 3"),
    ("data.channels=1.0", r"data\.channels: expected one of 1, 3"),
    ("convert.formats=[int8, int8]", r"convert\.formats: names a format twice"),
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
    with pytest.raises(ParamsError, match=r"line 3.*YAML"):
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


LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")) + "train: {epochs: *i}\n"


@pytest.mark.bad_input("params files")
@pytest.mark.parametrize("text, message", [
    (LAUGHS, "line 2, column 8: YAML: aliases"),
    ("train:\n  epochs: 2\ntrain:\n  epochs: 3\n", "line 3, column 1: YAML: duplicate key 'train'"),
    ("train: {epochs: 2, epochs: 3}\n", "duplicate key 'epochs'"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("train: {epochs: !!python/object/apply:os.system [id]}\n", "could not determine a constructor"),
    ("1: 2\n", "keys must be names"),
    ("name: 2001-13-45\n", "a value YAML cannot read (month must be in 1..12)"),
    ("train: {learning_rate: .inf}\n", "train.learning_rate: must be a finite number, got inf"),
    ("train: {learning_rate: .nan}\n", "train.learning_rate: must be a finite number, got nan"),
    ("train: {task_weights: {top_left: .inf}}\ndata: {source: multifashion}\n", "task_weights.top_left: must be finite"),
], ids=["billion laughs", "duplicate section", "duplicate key", "deep nesting", "python tag", "integer key", "bad date",
        "inf", "nan", "inf in a mapping"])
def test_hostile_yaml_is_refused_in_one_short_line(tmp_path, text, message):
    with pytest.raises(ParamsError) as info:
        load_params(write(tmp_path, text))
    assert message in str(info.value) and len(str(info.value)) <= 500 and "\n" not in str(info.value)


def test_a_huge_value_is_quoted_shortened():
    with pytest.raises(ParamsError) as info:
        load_params(ROOT / "params.yaml", ["train.epochs=" + "x" * 100_000])
    assert "train.epochs: expected int, got 'xxx" in str(info.value) and len(str(info.value)) < 200


@pytest.mark.bad_input("params files")
@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "base.yaml").mkdir(), "base.yaml: a directory"),
    (lambda d: (d / "base.yaml").write_bytes(b"\xff\xfe\x00 binary \x80"), "base.yaml: not UTF-8 text"),
    (lambda d: (d / "base.yaml").write_bytes(b"a: 1\n" * 300_000), "base.yaml: larger than 1024 KiB"),
    (lambda d: (d / "base.yaml").symlink_to("/dev/zero"), "base.yaml: not a regular file"),
], ids=["directory", "not UTF-8", "too large", "device"])
def test_extends_reads_only_a_regular_bounded_utf8_yaml_file(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(ParamsError, match=message):
        load_params(write(tmp_path, "extends: base.yaml\n"))


@pytest.mark.bad_input("params files")
def test_extends_to_a_system_file_never_quotes_it(tmp_path):
    secret = tmp_path / "secret.conf"
    secret.write_text("password: hunter2\n")
    with pytest.raises(ParamsError, match="expected a .yaml or .yml file") as info:
        load_params(write(tmp_path, "extends: secret.conf\n"))
    assert "hunter2" not in str(info.value)
    shutil.copy(secret, tmp_path / "secret.yaml")  # even named .yaml, only the key is quoted, not the value
    with pytest.raises(ParamsError, match="password: unknown key") as info:
        load_params(write(tmp_path, "extends: secret.yaml\n"))
    assert "hunter2" not in str(info.value)


def test_every_numeric_key_has_a_documented_range():
    from pipeline.core.params import key_table

    for key, value, accepts in key_table(load_params(ROOT / "params.yaml")):
        if key == "prune.sparsity_m_by_n":  # exactly [2, 4] or null
            continue
        if accepts.startswith(("int", "float")) or "of int" in accepts or "mapping, each" in accepts:
            assert " in [" in accepts or " in (" in accepts, key


@pytest.mark.bad_input("params files")
def test_a_path_with_a_nul_byte_or_a_symlink_loop_is_refused(tmp_path):
    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop.yaml")
    with pytest.raises(ParamsError, match="loop.yaml: not found"):
        load_params(write(tmp_path, "extends: loop.yaml\n"))
    with pytest.raises(ParamsError, match="not found"):
        load_params(write(tmp_path, 'extends: "x\\0.yaml"\n'))


def test_the_code_defaults_are_the_params_file():
    from pipeline.core.params import Params

    # params.yaml documents every default; what a library call gets without a file must be the same
    assert Params() == load_params(ROOT / "params.yaml")
