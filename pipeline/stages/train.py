"""Stage 1: build the CNN named in params, train it, keep the best epoch by validation accuracy."""

from __future__ import annotations

import math
import time
from pathlib import Path

from .. import architectures
from ..core.artifacts import make_record, text_hash, trained_path
from ..core.errors import PipelineError
from ..core.params import Params
from ..data import load_dataset
from ..training import augment as augmentation
from ..training import distribute
from ..training.fit import fit_target, seed_everything, split_accuracies
from ..training.recipe import schedule
from ..training.resume import Diverged, divergence_hint, fit_resumable
from .base import fed, make, teacher_for


def train(params: Params) -> Path:
    """Train ``params.model`` on ``params.data``; write the best epoch to ``models/<name>.keras``."""
    m = params.model
    if m.file:
        raise PipelineError(f"model.file names a ready-made model ({m.file}); there is nothing to train: the stages "
                            "after training start from it (unset model.file to train model.architecture)")
    strategy = distribute.start(params.train.distribute)  # before TensorFlow runs anything
    data = load_dataset(params.data, params.seed)
    out = trained_path(params.name)
    teacher, distilled = teacher_for(params, out, train=train)  # before seeding: training a teacher moves the seed
    seed_everything(params.seed)
    model = architectures.build(m.architecture, data.input_shape, data.num_classes, width=m.width,
                                dropout=m.dropout, options=m.options, tasks=data.tasks)
    data = fed(params, model, data, out)
    used = {**params.subset("name", "data", "input", "model", "train", "augment"), **distilled}
    # the built network's own description is an input: a change to a builder retrains, like a params edit
    inputs = {"dataset": data.fingerprint, "architecture": text_hash(model.to_json())}
    planned = make_record("train", used, params.seed, inputs, dataset=data.source,
                          input_shape=list(data.input_shape), class_names=data.class_names, tasks=list(data.tasks))

    def work(state: Path):
        steps = math.ceil(len(data.x_train) / params.train.batch_size)
        rate = schedule(params.train, steps)
        feed = distribute.datasets(strategy, data, params.train.batch_size, params.seed, "train.batch_size")
        net = distribute.replica(model, strategy, params.train.sync_batchnorm)
        with strategy.scope():
            target = fit_target(net, data, params.train, rate, teacher.load(data) if teacher else None,
                                average=True)
        print(f"train: {m.architecture} ({model.count_params():,} params) on {data.describe()}, "
              f"{distribute.describe(strategy)}, augmentation: {augmentation.describe(params.augment)}"
              + (f", {teacher.describe()}" if teacher else ""), flush=True)
        start = time.perf_counter()
        keep = fit_resumable(target, feed, params.train.epochs, state, planned["key"],
                             [Diverged("training", divergence_hint(data.tasks, "train.learning_rate"))], strategy=strategy)
        fit = time.perf_counter() - start  # the epochs this process ran, each with its validation pass
        if net is not model:
            model.set_weights(net.get_weights())
        metrics = {"best_epoch": keep.best_epoch + 1, "fit_seconds": round(fit, 1),
                   "train_images_per_second": round(len(data.x_train) * keep.epochs_run / fit, 1),
                   "replicas": strategy.num_replicas_in_sync, "workers": distribute.workers(),
                   **split_accuracies(model, data),
                   "train_seconds": round(time.perf_counter() - start, 1), "history": keep.history}
        print(f"train: best epoch {metrics['best_epoch']}, val {metrics['val_accuracy']:.4f}, "
              f"test {metrics['test_accuracy']:.4f} ({metrics['train_seconds']:.0f}s) -> {out}", flush=True)
        return model, metrics

    make(out, planned, work)
    return out
