"""distill: a teacher's softened outputs train the student in training and every fine-tuning, per task,
whatever input contract the teacher has; a teacher that cannot teach is refused in one line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import ROOT, SMOKE, fails_cleanly, new_project, run_cli, tiny_dataset
from test_multitask import TASKS, multi_data

from pipeline import architectures
from pipeline.compression.channels.search import finetune
from pipeline.core.artifacts import file_hash
from pipeline.core.contract import InputContract
from pipeline.core.errors import PipelineError
from pipeline.core.framework import keras, tf
from pipeline.core.params import DistillParams, ParamsError, StructuredParams, TrainParams, load_params
from pipeline.training.distill import TeacherFile, load_teacher, soft_loss
from pipeline.training.fit import by_output, fit_target, predict_labels, seed_everything, split_dataset


def trained_teacher(tmp_path, data, name="teacher", epochs=8):
    seed_everything(0)
    model = architectures.build("tiny", data.input_shape, data.num_classes, tasks=data.tasks)
    target = fit_target(model, data, TrainParams(), 3e-3)
    target.fit(split_dataset(data, "train", 32, 0), epochs=epochs, verbose=0)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    return path, model


def test_soft_loss_is_temperature_squared_kl_of_the_softened_outputs():
    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(2, 5, 4)).astype(np.float32)
    for t in (1.0, 4.0):
        p = np.exp(teacher / t) / np.exp(teacher / t).sum(-1, keepdims=True)
        q = np.exp(student / t) / np.exp(student / t).sum(-1, keepdims=True)
        expected = t * t * (p * np.log(p / q)).sum(-1)
        np.testing.assert_allclose(soft_loss(teacher, student, t).numpy(), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(soft_loss(teacher, teacher, 2.0).numpy(), 0.0, atol=1e-6)


@pytest.mark.parametrize("multi", [False, True], ids=["one task", "two tasks"])
def test_the_loss_mixes_labels_and_the_teacher_per_task(tmp_path, multi):
    data = multi_data() if multi else tiny_dataset()
    path, teacher_model = trained_teacher(tmp_path, data, epochs=1)
    student = architectures.build("tiny", data.input_shape, data.num_classes, tasks=data.tasks)
    p = DistillParams(teacher=str(path), temperature=3.0, weight=0.3)
    trainer = fit_target(student, data, TrainParams(), 1e-3, load_teacher(path, p, data))
    x = data.x_train[:16].astype(np.float32)
    labels = data.labels(data.y_train[:16])
    out = trainer(x)
    loss, _, distilled = trainer._objective(tf.constant(x), labels, out)

    theirs, ours = by_output(teacher_model, teacher_model(x)), by_output(student, student(x))
    expected, soft = 0.0, []
    for task in data.tasks or [student.output_names[0]]:
        y = labels[task] if multi else labels
        # the tiny model gives probabilities: their logarithms are its logits
        t_logit, s_logit = (np.log(np.maximum(np.asarray(o[task if multi else next(iter(o))]), 1e-7))
                            for o in (theirs, ours))
        ce = -s_logit[np.arange(16), y]
        kd = soft_loss(t_logit, s_logit, 3.0).numpy()
        soft.append(kd.mean())
        expected += np.mean(0.7 * ce + 0.3 * kd)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    np.testing.assert_allclose(float(distilled), np.mean(soft), rtol=1e-4)
    # the teacher is frozen and not the trainer's: best-epoch weights and resume state hold the student's alone
    assert len(trainer.trainable_weights) == len(student.trainable_weights)
    assert {id(v) for v in trainer.weights}.isdisjoint(id(v) for v in trainer.teacher.model.weights)


def test_a_student_taught_by_the_teacher_alone_follows_it_over_its_labels(tmp_path):
    """Weight 1: the labels do not count. With labels scrambled, the fine-tuned student predicts what
    the teacher predicts, not its labels (the structured rounds' fine-tuning, distilled)."""
    data = tiny_dataset(n=480)
    path, teacher_model = trained_teacher(tmp_path, data)
    rng = np.random.default_rng(1)
    scrambled = dataclasses.replace(data, y_train=rng.permutation(data.y_train), y_val=rng.permutation(data.y_val))
    student = architectures.build("tiny", data.input_shape, data.num_classes)
    s = StructuredParams(finetune_epochs=10, batch_size=32, learning_rate=3e-3)
    finetune(student, scrambled, s, TrainParams(), 0, TeacherFile(path, DistillParams(teacher=str(path), weight=1.0,
                                                                                     temperature=2.0)))
    agreement = np.mean(predict_labels(student, data.x_test) == predict_labels(teacher_model, data.x_test))
    assert agreement >= 0.9
    assert np.mean(predict_labels(student, data.x_test) == data.y_test) >= 0.85  # the teacher's own accuracy


def test_a_teacher_with_another_input_contract_gets_its_own_input(tmp_path):
    data = tiny_dataset()
    inputs = keras.Input(data.input_shape)  # no Rescaling: it wants pixel / 255
    teacher = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    path = tmp_path / "unit.keras"
    teacher.save(path)
    with pytest.raises(PipelineError, match=r"does not start with a Rescaling.*--set distill.teacher_pixels=unit"):
        load_teacher(path, DistillParams(teacher=str(path)), data)
    symmetric = data.with_contract(InputContract((1 / 127.5,), (-1.0,), "test"))  # the student's own contract
    loaded = load_teacher(path, DistillParams(teacher=str(path), teacher_pixels="unit"), symmetric)
    pixels = data.x_train[:8].astype(np.float32)
    got = loaded.logits_for(tf.constant(symmetric.contract.apply(pixels)), ("out",))["out"]
    np.testing.assert_allclose(got.numpy(), teacher(pixels / 255.0).numpy(), rtol=1e-4, atol=1e-5)
    assert loaded.logits == {teacher.output_names[0]: True}  # logits, used as they are


def test_a_teacher_that_does_not_fit_is_refused(tmp_path):
    data = tiny_dataset()
    other = architectures.build("tiny", data.input_shape, 4)
    other.save(tmp_path / "four.keras")
    with pytest.raises(PipelineError, match=r"^distill teacher .*four.keras: output .* predicts 4 classes, the data "
                                            r"has 3$"):
        load_teacher(tmp_path / "four.keras", DistillParams(), data)
    single = architectures.build("tiny", (12, 12, 1), 3)
    single.save(tmp_path / "one.keras")
    with pytest.raises(PipelineError, match=r"model outputs \(.*\) are not the data's tasks"):
        load_teacher(tmp_path / "one.keras", DistillParams(), multi_data())
    broken = architectures.build("tiny", data.input_shape, 3)
    broken.layers[-1].set_weights([np.full_like(w, np.nan) for w in broken.layers[-1].get_weights()])
    broken.save(tmp_path / "nan.keras")
    with pytest.raises(PipelineError, match=r"nan.keras gives non-finite outputs \(NaN or inf\) on training images"):
        load_teacher(tmp_path / "nan.keras", DistillParams(), data)
    for override, message in (("distill.weight=0", "distill.weight"), ("distill.temperature=0", "distill.temperature"),
                              ("distill.teacher_pixels=unit", "distill.teacher_pixels: describes a teacher model "
                                                              "file's input; distill.teacher names none")):
        with pytest.raises(ParamsError, match=message):
            load_params(ROOT / "params.yaml", [override])


@pytest.mark.e2e
@pytest.mark.long
def test_training_pruning_and_recipe_compare_distil_from_a_config_or_the_parent(tmp_path):
    project = new_project(tmp_path)
    small = ("--set", "data.limit_train=600", "--set", "train.epochs=2")
    (project / "configs" / "teach.yaml").write_text("extends: smoke.yaml\nname: teach\ntrain:\n  epochs: 1\n"
                                                    "data:\n  limit_train: 600\n")
    fails_cleanly(run_cli("train", *SMOKE, *small, "--set", "distill.teacher=models/none.keras", cwd=project,
                          check=False), "distill.teacher models/none.keras not found")
    (project / "configs" / "self.yaml").write_text("extends: smoke.yaml\nname: smoke\n")
    fails_cleanly(run_cli("train", *SMOKE, *small, "--set", "distill.teacher=configs/self.yaml", cwd=project,
                          check=False), "has this config's own name (smoke): a model cannot teach itself")
    assert not (project / "models").exists() or not any((project / "models").iterdir())

    out = run_cli("train", *SMOKE, *small, "--set", "distill.teacher=configs/teach.yaml", cwd=project).stdout
    teacher = project / "models" / "teach.keras"
    assert "training it first" in out and teacher.is_file()
    assert "distilled from models/teach.keras (temperature 4, weight 0.5)" in out
    record = json.loads((project / "models" / "smoke.keras.json").read_text())
    assert record["params"]["distill"]["teacher_sha256"] == file_hash(teacher)
    assert "distillation" in record["metrics"]["history"]
    again = run_cli("train", *SMOKE, *small, "--set", "distill.teacher=configs/teach.yaml", cwd=project).stdout
    assert again.count("is up to date") == 2  # the teacher, then the student
    fails_cleanly(run_cli("train", *SMOKE, *small, "--set", "distill.teacher=models/smoke.keras", cwd=project,
                          check=False), "is the model this stage writes: a model cannot teach itself")
    fails_cleanly(run_cli("train", *SMOKE, *small, "--set", "distill.teacher=models", cwd=project, check=False),
                  "distill.teacher models is a folder, not a model file")
    fails_cleanly(run_cli("train", *SMOKE, *small, "--set", "distill.teacher=/dev/null", cwd=project, check=False),
                  "distill.teacher /dev/null is not a regular file")

    out = run_cli("prune", *SMOKE, *small, "--set", "distill.from_parent=true", cwd=project).stdout
    assert "distilled from models/smoke.keras" in out
    pruned = json.loads((project / "models" / "smoke.pruned.keras.json").read_text())
    assert pruned["params"]["distill"] == {"teacher": "parent", "temperature": 4.0, "weight": 0.5}
    assert "distillation" in pruned["metrics"]["history"]

    fails_cleanly(run_cli("recipe-compare", *SMOKE, cwd=project, check=False),
                  "these params set no augment (e.g. --set augment.shift=2) and no distill.teacher")
    compare = run_cli("recipe-compare", *SMOKE, "--set", "data.limit_train=300", "--set", "train.epochs=1",
                      "--set", "augment.shift=2", "--set", "distill.teacher=configs/teach.yaml", cwd=project)
    assert "warning" not in compare.stderr  # augment and distill are read by the study (and by every stage)
    result = json.loads((project / "tflite_out" / "recipes" / "recipes.json").read_text())
    assert [r["variant"] for r in result["variants"]] == ["plain", "augment", "distill", "both"]
    for variant, augmented, taught in (("plain", 0, False), ("augment", 2, False), ("distill", 0, True),
                                       ("both", 2, True)):
        name = "smoke" if variant == "both" else f"smoke_{variant}"  # both: the config itself
        used = json.loads((project / "models" / f"{name}.keras.json").read_text())["params"]
        assert used["augment"]["shift"] == augmented, variant
        assert bool(used["distill"]) == taught, variant
    assert "| both |" in (project / "tflite_out" / "recipes" / "recipes.md").read_text()


def test_make_retrains_a_student_when_its_teacher_changes():
    """The Makefile's training rule depends on the teacher's config and model (or its file)."""
    from click.testing import CliRunner

    from pipeline.cli import cli

    tiny = CliRunner().invoke(cli, ["paths", "--params", "configs/tiny.yaml"]).output  # (run from the project root)
    assert "TEACHER := params.yaml configs/teacher.yaml models/fmnist_teacher.keras\n" in tiny
    plain = CliRunner().invoke(cli, ["paths", "--set", "distill.teacher=mine.keras"]).output
    assert "TEACHER := mine.keras\n" in plain
