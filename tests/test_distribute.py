"""train.distribute: a mirrored fit, and pruning's fine-tuning, take the same steps as one device;
--workers N runs a multi-worker fit on localhost workers, which trains like one process and survives
losing a worker (every stage that fits launches its workers the same way)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, fails_cleanly, new_project, run_cli, tiny_dataset
from test_multitask import multi_data

from pipeline import architectures
from pipeline.core.errors import PipelineError
from pipeline.compression import wrapped_copy
from pipeline.compression.magnitude import prune_model, wrap_for_pruning
from pipeline.compression.qat import quantize_aware
from pipeline.core.framework import keras, tfmot
from pipeline.core.params import PruneParams, TrainParams
from pipeline.training import distribute
from pipeline.training.fit import fit_target, seed_everything


def steps_taken(kind: str, data, synchronized: bool = True) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The weights (by name) of the tiny architecture without dropout before and after an epoch at global
    batch 32 under ``kind``, batch normalisation ``synchronized`` across replicas or not."""
    seed_everything(0)
    model = architectures.build("tiny", data.input_shape, data.num_classes, width=4, dropout=0.0, tasks=data.tasks)
    strategy = distribute.start(kind)
    feed = distribute.datasets(strategy, data, 32, 0, "train.batch_size")
    before = {w.name: w.numpy() for w in model.weights}
    net = distribute.replica(model, strategy, synchronized)
    with strategy.scope():
        target = fit_target(net, data, TrainParams(), 3e-3)
    feed.fit(target, epochs=1, verbose=0)
    return before, {w.name: w.numpy() for w in distribute.local_copy(net, strategy).weights}


def test_mirrored_over_two_devices_takes_the_same_steps_as_one_device():
    # two tasks: the pipeline's own trainer, whose loss is scaled for the replicas (one task is Keras's
    # compiled loss; the multi-worker test below trains one). 224 training images: 7 global batches of
    # 32, each split 16 + 16 between the two logical CPUs; batch normalisation is synchronised, so both
    # devices normalise with the global batch's statistics
    data = multi_data(n=320)
    start, alone = steps_taken("none", data)
    assert distribute.start("mirrored").num_replicas_in_sync == 2
    mirrored = steps_taken("mirrored", data)[1]
    assert alone.keys() == mirrored.keys()
    for name, value in alone.items():
        if "moving_variance" in name:  # one device's fused kernel updates it with Bessel's n / (n - 1)
            np.testing.assert_allclose(value, mirrored[name], rtol=0.01)
        else:
            np.testing.assert_allclose(value, mirrored[name], atol=2e-5, err_msg=name)
    # the tolerance is far below what the steps changed
    assert max(float(np.abs(start[name] - value).max()) for name, value in alone.items()) > 1e-2
    # train.sync_batchnorm false: each device normalises with its own 16 images, and the steps differ
    apart = steps_taken("mirrored", data, synchronized=False)[1]
    assert max(float(np.abs(apart[name] - value).max()) for name, value in alone.items()
               if "moving" not in name) > 1e-3


def pruned(kind: str, data) -> list[tuple[str, np.ndarray]]:
    """The weights (name, value; in order: the names depend on the strategy) of the tiny architecture without
    dropout after an epoch of pruning's fine-tuning to 50% at global batch 32 under ``kind``, batch
    normalisation synchronised."""
    seed_everything(0)
    model = architectures.build("tiny", data.input_shape, data.num_classes, width=4, dropout=0.0, tasks=data.tasks)
    p = PruneParams(final_sparsity=0.5, epochs=1, end_epoch=1, frequency=1, min_weights=0, batch_size=32,
                    learning_rate=3e-3)
    stripped = prune_model(model, data, p, 0, train_p=TrainParams(distribute=kind, sync_batchnorm=True))[1]
    return [(w.name, w.numpy()) for w in stripped.weights]


def test_pruning_mirrored_over_two_devices_takes_the_same_steps_as_one_device():
    # what a multi-worker prune fine-tunes (`prune --workers N`), on two devices of this process. TF-MOT wraps
    # a clone of the replica, whose batch normalisations must stay synchronised (next test): without that,
    # the kernels ended up 4.5e-3 apart (docs/distribute.md). One task: Keras's compiled loss
    data = tiny_dataset(n=320)
    alone, mirrored = pruned("none", data), pruned("mirrored", data)
    assert [value.shape for _, value in alone] == [value.shape for _, value in mirrored]
    for (name, value), (_, other) in zip(alone, mirrored):
        if "moving_variance" in name:  # Bessel's correction, as above
            np.testing.assert_allclose(value, other, rtol=0.01, err_msg=name)
        else:
            np.testing.assert_allclose(value, other, atol=2e-5, err_msg=name)
        if name.endswith("kernel:0"):
            assert np.array_equal(value == 0, other == 0), name
    kernels = np.concatenate([value.ravel() for name, value in mirrored if name.endswith("kernel:0")])
    assert float(np.mean(kernels == 0)) >= 0.48


def batch_norms(model) -> list:
    """The batch normalisations of ``model``, inside TF-MOT's wrappers too."""
    layers = [getattr(layer, "layer", layer) for layer in model.layers]
    return [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]


def test_the_copies_pruning_clustering_and_qat_tune_keep_batch_normalisation_synchronised():
    # tf_keras's BatchNormalization config leaves `synchronized` out: every clone lost it (pipeline.core.framework)
    strategy = distribute.start("mirrored")
    model = architectures.build("tiny", (12, 12, 1), 3, width=4)
    net = distribute.replica(model, strategy, True)
    with strategy.scope(), tfmot.quantization.keras.quantize_scope():
        copies = {"replica": net, "clone": keras.models.clone_model(net),
                  "copy (clustering's)": wrapped_copy(net, lambda layer: layer),
                  "pruning": wrap_for_pruning(net, tfmot.sparsity.keras.ConstantSparsity(0.5, 0), 0),
                  "qat": quantize_aware(net, "qat")}
    for name, copy in copies.items():
        assert len(batch_norms(copy)) == 3 and all(layer.synchronized for layer in batch_norms(copy)), name
    # what is evaluated and saved: not synchronised, and its file's config as tf_keras writes it
    local = distribute.local_copy(net, strategy)
    assert not any(layer.synchronized or "synchronized" in layer.get_config() for layer in batch_norms(local))
    assert not any(layer.synchronized for layer in batch_norms(model))


def test_a_global_batch_the_replicas_cannot_share_is_refused():
    strategy = distribute.start("mirrored")
    with pytest.raises(PipelineError, match=r"prune.batch_size 33 is the global batch: it must divide evenly among "
                                            r"the 2 replicas \(try 32\)"):
        distribute.datasets(strategy, tiny_dataset(), 33, 0, "prune.batch_size")
    with pytest.raises(PipelineError, match="train.distribute: 'ring' is not one of none, mirrored, multi_worker"):
        distribute.start("ring")


MULTI_WORKER = """extends: smoke.yaml
name: mw
data:
  limit_train: 600
model:
  dropout: 0.0            # no dropout and batch normalisation over the global batch: the workers' steps
train:                    # are one process's steps, up to float rounding
  epochs: 2
  distribute: multi_worker
  sync_batchnorm: true
"""
MW = ("--params", "configs/mw.yaml")


def multi_worker_project(tmp_path, name: str):
    (tmp_path / name).mkdir()
    project = new_project(tmp_path / name)
    (project / "configs" / "mw.yaml").write_text(MULTI_WORKER)
    return project


def worker_pids(lines: list[str]) -> list[int]:
    found = [line for line in lines if line.startswith("2 workers: ")]
    return [int(pid) for pid in re.findall(r"\(PID (\d+)\)", found[0])] if found else []


@pytest.mark.e2e
@pytest.mark.long
def test_two_workers_survive_a_kill_and_train_like_one_process(tmp_path):
    project = multi_worker_project(tmp_path, "two")
    launcher = subprocess.Popen([sys.executable, "-m", "pipeline", "train", *MW, "--workers", "2"], cwd=project,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = []
    for line in launcher.stdout:  # until the state of the first of the two epochs is saved
        lines.append(line)
        if line.startswith("[worker 1] Epoch 2/2"):
            break
    pids = worker_pids(lines)
    assert len(pids) == 2, "".join(lines)
    os.kill(pids[1], signal.SIGKILL)
    rest, err = launcher.communicate(timeout=120)  # the watchdog: nothing may wait for the dead peer for ever
    assert launcher.returncode == 1, rest + err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: worker 1 was killed by SIGKILL; stopped worker 0; nothing was written; run the same command again "
        "to resume from the last completed epoch"], err
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)
    assert not (project / "models" / "mw.keras").exists()

    out = run_cli("train", *MW, "--workers", "2", cwd=project).stdout
    assert "[worker 0] resuming from epoch 2 of 2" in out and "[worker 1] resuming from epoch 2 of 2" in out, out
    assert "[worker 1] train: this worker's part is done; the chief writes models/mw.keras" in out
    assert sorted(p.name for p in (project / "models").iterdir()) == ["mw.keras", "mw.keras.json"]  # no state left
    two = json.loads((project / "models" / "mw.keras.json").read_text())["metrics"]
    assert (two["replicas"], two["workers"]) == (2, 2)

    one = multi_worker_project(tmp_path, "one")  # one process on one device, as one worker is
    run_cli("train", *MW, "--set", "train.distribute=none", cwd=one)
    alone = json.loads((one / "models" / "mw.keras.json").read_text())["metrics"]
    assert abs(two["test_accuracy"] - alone["test_accuracy"]) <= 0.01, (two, alone)



def test_workers_are_refused_without_multi_worker_and_inside_a_cluster(tmp_path, monkeypatch):
    project = new_project(tmp_path)
    fails_cleanly(run_cli("train", "--params", "configs/smoke.yaml", "--workers", "2", cwd=project, check=False),
                  "--workers 2 runs a multi-worker fit, but train.distribute is 'none'")
    (project / "configs" / "mw.yaml").write_text(MULTI_WORKER)
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 0}}')
    fails_cleanly(run_cli("train", *MW, "--workers", "2", cwd=project, check=False), "TF_CONFIG is set")
    for hostile in ("not json", '{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}',
                    '{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}',
                    '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 5}}'):
        monkeypatch.setenv("TF_CONFIG", hostile)
        fails_cleanly(run_cli("train", *MW, cwd=project, check=False), "TF_CONFIG is not a cluster")
    monkeypatch.delenv("TF_CONFIG")
    monkeypatch.setenv("MOBILEDEPLOY_RUN_LOCK_FD", "0")
    fails_cleanly(run_cli("train", *MW, cwd=project, check=False),
                  "MOBILEDEPLOY_RUN_LOCK_FD=0 does not hold the run lock of this project")
    usage = run_cli("train", *MW, "--workers", "0", cwd=project, check=False)
    assert usage.returncode == 2 and "Invalid value for '--workers': 0 is not in the range 1<=x<=64" in usage.stderr
