"""Interrupted runs resume; uninterrupted runs repeat bit for bit."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, SMOKE, new_project, run_cli, snapshot

from pipeline.core.keras_io import load_model

TRAIN = ("train", *SMOKE)  # the smoke config's training (4 epochs), which made the smoke project's model


def start_and_signal(project, sig, when="Epoch 3/"):
    """Start a training run and send it ``sig`` as epoch 3 begins (epochs 1-2 are complete)."""
    # the default disposition of SIGINT, whatever the test runner's worker has: Python installs its
    # Ctrl-C handler only over the default
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *TRAIN], cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(when):
            proc.send_signal(sig)
            break
    rest, _ = proc.communicate(timeout=300)
    return proc.returncode, "".join(seen) + rest


@pytest.fixture
def uninterrupted(smoke_project):
    """A run of ``TRAIN`` that nothing interrupted: the smoke project's (shared: only read, or copied)."""
    return smoke_project


TIMINGS = ("train_seconds", "fit_seconds", "train_images_per_second")  # the clock's, not the training's


def history(project):
    metrics = json.loads((project / "models" / "smoke.keras.json").read_text())["metrics"]
    return {key: value for key, value in metrics.items() if key not in TIMINGS}


def test_same_seed_and_params_give_bit_identical_weights(uninterrupted, tmp_path):
    again = new_project(tmp_path)
    run_cli(*TRAIN, cwd=again)
    a = load_model(uninterrupted / "models" / "smoke.keras").get_weights()
    b = load_model(again / "models" / "smoke.keras").get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert history(again) == history(uninterrupted)


def test_a_killed_training_resumes_from_its_last_completed_epoch(uninterrupted, tmp_path):
    project = new_project(tmp_path)
    code, output = start_and_signal(project, signal.SIGKILL)
    assert code == -signal.SIGKILL, output
    assert not (project / "models" / "smoke.keras").exists()
    assert not [p for p in (project / "models").iterdir() if p.name.endswith(".keras")]
    resumed = run_cli(*TRAIN, cwd=project)
    assert "resuming from epoch 3 of 4" in resumed.stdout
    assert "Epoch 1/4" not in resumed.stdout
    metrics, full = history(project), history(uninterrupted)
    assert len(metrics["history"]["loss"]) == 4
    # the first two epochs are the uninterrupted run's; after the restart, shuffling and dropout draw
    # different random numbers, so the result agrees within a tolerance, not bit for bit
    assert metrics["history"]["val_accuracy"][:2] == full["history"]["val_accuracy"][:2]
    assert metrics["val_accuracy"] == pytest.approx(full["val_accuracy"], abs=0.03)
    assert not (project / "models" / ".smoke.keras.resume").exists()


def test_ctrl_c_stops_cleanly_and_keeps_earlier_artefacts(uninterrupted, tmp_path):
    project = new_project(tmp_path)
    (project / "models").mkdir()
    earlier = (uninterrupted / "models" / "smoke.keras").read_bytes()
    (project / "models" / "smoke.keras").write_bytes(earlier)  # an older model, no record: must be retrained
    code, output = start_and_signal(project, signal.SIGINT)
    assert code == 130, output
    assert "interrupted" in output and "Traceback" not in output
    assert (project / "models" / "smoke.keras").read_bytes() == earlier


def test_a_stage_with_unchanged_inputs_and_params_does_not_redo_its_work(uninterrupted, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(uninterrupted, project)
    model = project / "models" / "smoke.keras"
    before = snapshot(project / "models")
    again = run_cli(*TRAIN, "--set", "validate.latency_runs=250", cwd=project)  # a param train does not use
    assert "up to date" in again.stdout and "Epoch 1/" not in again.stdout
    assert snapshot(project / "models") == before
    changed = run_cli(*TRAIN, "--set", "train.epochs=1", cwd=project)  # one the key covers (and quick to redo)
    assert "up to date" not in changed.stdout and snapshot(project / "models") != before
    assert model.is_file()


def test_a_stage_key_covers_the_code_it_imports_and_nothing_else(tmp_path):
    from pipeline.core.code import code_hash

    package = tmp_path / "pipeline"
    shutil.copytree(ROOT / "pipeline", package, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_hash("pipeline.stages.train", package)
    with open(package / "studies" / "zoo.py", "a") as f:  # a study: training does not import it
        f.write("\n# an edit\n")
    assert code_hash("pipeline.stages.train", package) == before
    with open(package / "data" / "folder.py", "a") as f:  # imported (lazily) by the data loader training uses
        f.write("\n# an edit\n")
    assert code_hash("pipeline.stages.train", package) != before
    assert code_hash("pipeline.studies.zoo", package) != code_hash("pipeline.studies.zoo", ROOT / "pipeline")
    # what the records use: the installed package, every module a stage imports
    from pipeline.core.code import closure

    used = {p.relative_to(ROOT / "pipeline").as_posix() for p in closure("pipeline.stages.qat")}
    assert {"stages/qat.py", "compression/qat.py", "training/fit.py", "core/params.py"} <= used
