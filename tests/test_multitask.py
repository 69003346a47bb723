"""Multi-task learning: MultiFashion construction, soft-sharing penalties, task weighting, and a
multi-output model through prune, convert, validate and per-task gates."""

import json

import numpy as np
import pytest
from conftest import fails_cleanly, new_project, run_cli

from pipeline import architectures
from pipeline.compression.magnitude import prune_model
from pipeline.core.framework import keras, tf
from pipeline.core.params import CheckParams, ConvertParams, PruneParams, TrainParams
from pipeline.data import Dataset, fingerprint
from pipeline.data.multifashion import CANVAS, ITEM, SHIFT, compose, load_multifashion
from pipeline.export import litert
from pipeline.export.tflite import representative_data, to_tflite
from pipeline.stages.check import gates_from_report, violations
from pipeline.training.fit import predict_labels
from pipeline.training.multitask import sharing_penalty, tower_groups, trace_norm
from pipeline.training.trainer import Trainer

TASKS = ("top_left", "bottom_right")


def items(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 256, (n, ITEM, ITEM, 1)).astype(np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def test_multifashion_pairs_two_classes_each_in_its_corner():
    x, y = items()
    images, labels, layout = compose(x, y, seed=3)
    assert images.shape == (120, CANVAS, CANVAS, 1) and labels.shape == (120, 2)
    first, second, offsets = layout[:, 0], layout[:, 1], layout[:, 2:]
    assert np.array_equal(np.sort(first), np.repeat(np.arange(60), 2))  # each source item: two pairings
    assert np.array_equal(labels[:, 0], y[first]) and np.array_equal(labels[:, 1], y[second])
    assert np.all(labels[:, 0] != labels[:, 1])
    assert np.all(offsets[:, :2] >= 0) and np.all(offsets[:, :2] <= SHIFT)  # top-left corner moved by <= 4
    far = CANVAS - ITEM
    assert np.all(offsets[:, 2:] >= far - SHIFT) and np.all(offsets[:, 2:] <= far)
    for k in range(0, 120, 7):  # the canvas is exactly the two items placed there, overlap by maximum
        top, bottom = np.zeros((2, CANVAS, CANVAS), np.uint8)
        r1, c1, r2, c2 = offsets[k]
        top[r1:r1 + ITEM, c1:c1 + ITEM] = x[first[k], ..., 0]
        bottom[r2:r2 + ITEM, c2:c2 + ITEM] = x[second[k], ..., 0]
        assert np.array_equal(images[k, ..., 0], np.maximum(top, bottom))


def test_multifashion_is_deterministic_for_a_seed_and_cached(tmp_path, capsys):
    x, y = items(40)
    xt, yt = items(20, seed=1)
    a = compose(x, y, seed=5)
    assert all(np.array_equal(u, v) for u, v in zip(a, compose(x, y, seed=5)))
    assert not np.array_equal(a[0], compose(x, y, seed=6)[0])
    first = load_multifashion(x, y, xt, yt, seed=5, cache_dir=tmp_path)
    assert "composing" in capsys.readouterr().out
    again = load_multifashion(x, y, xt, yt, seed=5, cache_dir=tmp_path)
    assert "composing" not in capsys.readouterr().out
    assert all(np.array_equal(u, v) for u, v in zip(first, again))
    assert first[0].shape == (80, CANVAS, CANVAS, 1) and first[2].shape == (40, CANVAS, CANVAS, 1)
    (cache,) = tmp_path.iterdir()
    cache.write_bytes(b"damaged")
    rebuilt = load_multifashion(x, y, xt, yt, seed=5, cache_dir=tmp_path)
    assert all(np.array_equal(u, v) for u, v in zip(first, rebuilt))


def soft_model(width=4):
    return architectures.build("tiny", (12, 12, 1), 3, width=width, options={"sharing": "soft"}, tasks=TASKS)


def test_soft_towers_pair_corresponding_layers_and_leave_heads_free():
    model = soft_model()
    groups = tower_groups(model, TASKS)
    assert len(groups) == 3  # stage1, stage2 and bottleneck convs; the two heads are not tied
    assert all(g[0].shape == g[1].shape for g in groups)
    assert all("top_left" in g[0].name and "bottom_right" in g[1].name for g in groups)


def test_l2_penalty_is_zero_for_identical_towers_and_grows_with_their_distance():
    model = soft_model()
    groups = tower_groups(model, TASKS)
    for a, b in groups:
        b.assign(a)
    assert float(sharing_penalty(groups, "l2")) == 0.0
    distances = []
    for step in (0.1, 0.2):
        for a, b in groups:
            b.assign(a + step)
        distances.append(float(sharing_penalty(groups, "l2")))
    size = sum(int(np.prod(a.shape)) for a, _ in groups)
    assert distances[0] == pytest.approx(size * 0.01, rel=1e-4) and distances[1] == pytest.approx(4 * distances[0], rel=1e-4)


def test_trace_norm_is_the_sum_of_singular_values_of_the_stacked_weights():
    rng = np.random.default_rng(0)
    group = [tf.constant(rng.normal(size=(3, 3, 2, 4)), tf.float32) for _ in range(2)]
    stacked = np.stack([np.asarray(w).reshape(-1) for w in group])
    assert float(trace_norm(group)) == pytest.approx(np.linalg.svd(stacked, compute_uv=False).sum(), rel=1e-5)


def multi_data(n=240, seed=0) -> Dataset:
    """Two tasks on 12x12 images: which third is bright (task 1) and which row band is bright (task 2)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, (n, 2)).astype(np.uint8)
    x = rng.integers(0, 60, (n, 12, 12, 1)).astype(np.uint8)
    for i, (a, b) in enumerate(y):
        x[i, :, a * 4:(a + 1) * 4] += 100
        x[i, b * 4:(b + 1) * 4, :] += 90
    parts = np.split(np.arange(n), [int(n * 0.7), int(n * 0.85)])
    arrays = [arr for idx in parts for arr in (x[idx], y[idx])]
    return Dataset(*arrays, class_names=["a", "b", "c"], source="synthetic", fingerprint=fingerprint(x, y), tasks=TASKS)


def fit(trainer, data, epochs):
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3))
    keras.utils.set_random_seed(0)
    trainer.fit(data.x_train.astype("float32"), data.labels(data.y_train), epochs=epochs, batch_size=32, verbose=0)


@pytest.mark.e2e
def test_a_large_soft_sharing_penalty_pulls_the_towers_together():
    data = multi_data()
    distance = {}
    for coefficient in (0.0, 1.0):
        keras.utils.set_random_seed(0)
        model = soft_model()
        fit(Trainer(model, TASKS, penalty="l2", coefficient=coefficient), data, epochs=4)
        distance[coefficient] = float(sharing_penalty(tower_groups(model, TASKS), "l2"))
    assert distance[1.0] < 0.5 * distance[0.0]


def test_uncertainty_weights_are_learned_and_stay_out_of_the_deployed_model(tmp_path):
    data = multi_data()
    keras.utils.set_random_seed(0)
    model = architectures.build("tiny", (12, 12, 1), 3, tasks=TASKS)
    trainer = Trainer(model, TASKS, uncertainty=True)
    fit(trainer, data, epochs=3)
    assert np.all(trainer.log_vars.numpy() != 0)
    assert "log_vars" not in " ".join(w.name for w in model.weights)
    blob = to_tflite(model, "float32")
    assert len(blob) < 4 * model.count_params() + 20_000  # nothing beyond the model's own weights


@pytest.mark.e2e
def test_multi_output_model_prunes_and_converts_keeping_task_names(tmp_path):
    data = multi_data()
    keras.utils.set_random_seed(0)
    model = architectures.build("tiny", (12, 12, 1), 3, tasks=TASKS)
    fit(Trainer(model, TASKS), data, epochs=6)
    p = PruneParams(final_sparsity=0.5, epochs=2, begin_epoch=0, end_epoch=1, frequency=1, batch_size=32,
                    min_weights=0)
    _, stripped, _ = prune_model(model, data, p, seed=0)
    assert sorted(stripped.output_names) == sorted(TASKS)
    path = tmp_path / "m.int8.tflite"
    calibration = representative_data(data, ConvertParams(representative_samples=50), seed=0)
    path.write_bytes(to_tflite(stripped, "int8", calibration))
    predictions, _ = litert.evaluate(path, data.x_test, 16, [1], warmup=1, runs=200)
    assert sorted(predictions) == sorted(TASKS)
    keras_labels = predict_labels(stripped, data.x_test)
    for task in TASKS:
        assert np.mean(predictions[task] == keras_labels[task]) >= 0.9


@pytest.mark.e2e
def test_structured_rounds_on_a_multi_task_model_track_each_task_and_keep_both_heads():
    from pipeline.compression.channels.search import iterate
    from pipeline.core.params import StructuredParams
    from pipeline.stages.shrink import history_markdown

    data = multi_data()
    keras.utils.set_random_seed(0)
    model = architectures.build("tiny", (12, 12, 1), 3, tasks=TASKS)
    fit(Trainer(model, TASKS), data, epochs=6)
    s = StructuredParams(fraction=0.25, max_rounds=2, finetune_epochs=1, batch_size=32, accuracy_budget=1.0,
                         target_ratio=0.01, channel_multiple=1, target="macs")
    kept, history = iterate(model, data, s, TrainParams(), seed=0, latency=lambda m: 0.0)
    assert len(history) == 3 and all(sorted(h["val_tasks"]) == sorted(TASKS) for h in history)
    assert history[2]["macs"] < history[0]["macs"] and sorted(kept.output_names) == sorted(TASKS)
    assert [o.shape[-1] for o in kept.outputs] == [3, 3]
    table = history_markdown("m", s, history)
    assert "| val top_left | val bottom_right |" in table and table.count("| yes |") == 3


def entry(top_left, bottom_right):
    tasks = {"top_left": {"accuracy": top_left, "keras_accuracy": top_left, "keras_agreement": 1.0},
             "bottom_right": {"accuracy": bottom_right, "keras_accuracy": bottom_right, "keras_agreement": 1.0}}
    mean = (top_left + bottom_right) / 2
    return {"artefacts": [{"file": "m.int8.tflite", "accuracy": mean, "keras_accuracy": mean,
                           "keras_agreement": 1.0, "size_bytes": 100, "gzip_bytes": 80, "tasks": tasks}]}


def test_per_task_gates_fail_when_one_task_regresses_even_if_the_mean_improves():
    gates = gates_from_report(entry(0.88, 0.86), CheckParams(accuracy_margin=0.005, drop_margin=0.005))
    assert violations(entry(0.88, 0.86), gates) == []
    found = violations(entry(0.95, 0.84), gates)
    assert [(v.gate, v.value) for v in found] == [("min_accuracy:bottom_right", 0.84)]


MULTI = ("--params", "configs/multifashion.yaml", "--set", "model.architecture=tiny", "--set", "data.limit_train=3000",
         "--set", "data.limit_test=600", "--set", "train.epochs=2", "--set", "train.batch_size=32",
         "--set", "prune.epochs=2", "--set", "prune.batch_size=32", "--set", "prune.min_weights=0",
         "--set", "convert.representative_samples=100",
         "--set", "validate.latency_runs=20")  # the suite's floor (conftest): tiny models time in microseconds


@pytest.mark.e2e
@pytest.mark.long
def test_multifashion_goes_through_every_stage_with_per_task_reports_and_gates(tmp_path):
    project = new_project(tmp_path)
    for stage in ("train", "prune", "convert", "validate"):
        run_cli(stage, *MULTI, cwd=project)
    report = json.loads((project / "tflite_out" / "multifashion.report.json").read_text())
    assert len(report["artefacts"]) == 8
    for e in report["artefacts"]:
        assert sorted(e["tasks"]) == sorted(TASKS)
        assert all(0.2 < t["accuracy"] <= 1 and t["keras_agreement"] >= 0.9 for t in e["tasks"].values())
    assert "| multifashion.int8.tflite | " in (project / "tflite_out" / "multifashion.report.md").read_text()
    run_cli("check", *MULTI, "--update", cwd=project)
    assert "min_accuracy:top_left" in (project / "gates" / "multifashion.yaml").read_text()
    run_cli("check", *MULTI, cwd=project)
    run_cli("samples", *MULTI, "--count", "8", cwd=project)
    run_cli("pictures", *MULTI, "--image", "1", cwd=project)
    for kind in ("samples", "filters", "features"):
        assert (project / "tflite_out" / "pictures" / f"multifashion.{kind}.png").is_file()


@pytest.mark.e2e
@pytest.mark.long
def test_mtl_compare_trains_every_variant_and_sums_the_single_task_models(tmp_path):
    project = new_project(tmp_path)
    run_cli("mtl-compare", *MULTI, "--set", "train.epochs=1", "--set", "data.limit_train=600",
            "--set", "data.limit_test=200", cwd=project)
    result = json.loads((project / "tflite_out" / "mtl" / "mtl.json").read_text())
    names = [r["variant"] for r in result["variants"]]
    assert names == ["single_top_left", "single_bottom_right", "hard", "soft_l2", "soft_trace", "hard_uncertainty"]
    rows = {r["variant"]: r for r in result["variants"]}
    together = result["single_tasks_together"]
    assert together["int8_bytes"] == rows["single_top_left"]["int8_bytes"] + rows["single_bottom_right"]["int8_bytes"]
    assert rows["hard"]["params"] < together["params"] and rows["soft_l2"]["params"] == together["params"]
    assert set(rows["hard"]["tasks"]) == set(TASKS) and set(rows["single_top_left"]["tasks"]) == {"top_left"}


def test_mtl_compare_refuses_a_single_task_dataset(tmp_path):
    project = new_project(tmp_path)
    fails_cleanly(run_cli("mtl-compare", "--params", "configs/smoke.yaml", cwd=project, check=False),
                  "needs a multi-task dataset")


@pytest.mark.bad_input("params")
@pytest.mark.parametrize("override, message", [
    ("train.task_weights={middle: 1}", "train.task_weights.middle: not a task of the data; its tasks: top_left, bottom_right"),
    ("data.tasks=[top_left, top_left]", "data.tasks: must be null or a list of distinct tasks"),
    ("model.options.sharing=partial", "sharing (multi-task data only) must be one of hard, soft"),
])
def test_bad_multi_task_params_are_refused_naming_the_key(tmp_path, override, message):
    project = new_project(tmp_path)
    fails_cleanly(run_cli("train", "--params", "configs/multifashion.yaml", "--set", override, cwd=project,
                          check=False), message)


def test_pruning_fine_tunes_a_soft_sharing_model_with_its_penalty():
    from pipeline.compression.magnitude import make_schedule, wrap_for_pruning
    from pipeline.training.fit import fit_target

    model = soft_model()
    wrapped = wrap_for_pruning(model, make_schedule(PruneParams(), steps_per_epoch=10))
    target = fit_target(wrapped, multi_data(), TrainParams(sharing_coefficient=0.1, sharing_penalty="trace"), 1e-3)
    assert target.penalty_kind == "trace" and len(target.groups) == 3
    tower_kernels = {id(layer.layer.kernel) for layer in wrapped.layers if type(layer).__name__ == "PruneLowMagnitude"
                     and layer.layer.name.startswith(("top_left_", "bottom_right_"))}
    assert {id(k) for group in target.groups for k in group} == tower_kernels  # the kernels being pruned
    hard = fit_target(architectures.build("tiny", (12, 12, 1), 3, tasks=TASKS), multi_data(), TrainParams(
        sharing_coefficient=0.1), 1e-3)
    assert hard.groups == []  # one trunk: nothing to tie


@pytest.mark.parametrize("sharing", ["hard", "soft"])
def test_multi_task_models_pass_the_safe_loader_in_both_formats(sharing, tmp_path):
    from pipeline.core.keras_io import load_model

    model = architectures.build("tiny", (12, 12, 1), 3, width=4, options={"sharing": sharing}, tasks=TASKS)
    for name in ("m.keras", "m.h5"):
        model.save(tmp_path / name)
        assert sorted(load_model(tmp_path / name).output_names) == sorted(TASKS)
