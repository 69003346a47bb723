"""Stage 1: build the CNN named in params, train it, keep the best epoch by validation accuracy."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from . import architectures
from .artifacts import make_record, reuse_if_current, text_hash, trained_path
from .data import Dataset, load_dataset
from .keras_io import save_model
from .params import Params, TrainParams
from .resume import backup_dir, finish, fit_resumable
from .tf import keras, tf


def seed_everything(seed: int) -> None:
    """Same seed, params and machine -> same weights (TensorFlow's op determinism is enabled)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def as_dataset(x: np.ndarray, y: np.ndarray | None, batch_size: int, shuffle_seed: int | None = None):
    """uint8 arrays -> a batched float32 tf.data pipeline (the model rescales inside)."""
    ds = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    cast = (lambda a: tf.cast(a, tf.float32)) if y is None else (lambda a, b: (tf.cast(a, tf.float32), b))
    return ds.batch(batch_size).map(cast, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def compile_for_training(model, rate) -> None:
    """Adam on sparse categorical cross-entropy; ``rate`` is a number or a learning-rate schedule."""
    model.compile(optimizer=keras.optimizers.Adam(rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])


def predict_labels(model, x: np.ndarray, batch_size: int = 500) -> np.ndarray | dict[str, np.ndarray]:
    """Top-1 labels; for a multi-task model, a dict of them keyed by task."""
    scores = model.predict(as_dataset(x, None, batch_size), verbose=0)
    if isinstance(scores, dict):
        return {task: np.argmax(s, axis=-1) for task, s in scores.items()}
    return np.argmax(scores, axis=-1)


def accuracy(model, x: np.ndarray, y: np.ndarray, tasks: tuple[str, ...] = ()) -> float | dict[str, float]:
    """Top-1 accuracy; with ``tasks`` (y has one column per task), a dict of them keyed by task."""
    labels = predict_labels(model, x)
    if tasks:
        return {task: float(np.mean(labels[task] == y[:, i])) for i, task in enumerate(tasks)}
    return float(np.mean(labels == y))


def split_accuracies(model, data: Dataset) -> dict:
    """Accuracy on each split; for multi-task data the mean over tasks, and each task's under ``tasks``."""
    splits = {"train": (data.x_train, data.y_train), "val": (data.x_val, data.y_val),
              "test": (data.x_test, data.y_test)}
    found = {name: accuracy(model, x, y, data.tasks) for name, (x, y) in splits.items()}
    if not data.tasks:
        return {f"{name}_accuracy": value for name, value in found.items()}
    metrics: dict = {f"{name}_accuracy": float(np.mean(list(value.values()))) for name, value in found.items()}
    metrics["tasks"] = {task: {f"{name}_accuracy": found[name][task] for name in splits} for task in data.tasks}
    return metrics


def fit_target(model, data: Dataset, p: TrainParams, rate):
    """What ``fit`` runs on, compiled with Adam at ``rate``: the model itself for one task, or a
    :class:`~pipeline.multitask.MultiTaskTrainer` around it (task weights, and the soft-sharing
    penalty if the model has a tower per task)."""
    if not data.tasks:
        compile_for_training(model, rate)
        return model
    from .multitask import MultiTaskTrainer, tower_groups

    soft = bool(tower_groups(model, data.tasks))
    penalty = p.sharing_penalty if soft and p.sharing_coefficient > 0 else None
    trainer = MultiTaskTrainer(model, data.tasks, p.task_weights, p.loss_weighting == "uncertainty", penalty,
                               p.sharing_coefficient)
    trainer.compile(optimizer=keras.optimizers.Adam(rate))
    trainer(tf.zeros((1, *data.input_shape)))  # built before fit, so BackupAndRestore can restore its optimizer
    return trainer


def train(params: Params) -> Path:
    """Train ``params.model`` on ``params.data``; write the best epoch to ``models/<name>.keras``."""
    data = load_dataset(params.data, params.seed)
    out = trained_path(params.name)
    m = params.model
    seed_everything(params.seed)
    model = architectures.build(m.architecture, data.input_shape, data.num_classes, width=m.width,
                                dropout=m.dropout, options=m.options, tasks=data.tasks)
    used = params.subset("name", "data", "model", "train")
    # the built network's own description is an input: a change to a builder retrains, like a params edit
    inputs = {"dataset": data.fingerprint, "architecture": text_hash(model.to_json())}
    planned = make_record("train", used, params.seed, inputs, dataset=data.source,
                          input_shape=list(data.input_shape), class_names=data.class_names, tasks=list(data.tasks))
    if reuse_if_current(out, planned):
        print(f"train: {out} is up to date (same data, params, network and versions); nothing to do", flush=True)
        return out
    steps = math.ceil(len(data.x_train) / params.train.batch_size)
    rate = keras.optimizers.schedules.CosineDecay(params.train.learning_rate, steps * params.train.epochs)
    target = fit_target(model, data, params.train, rate)
    print(f"train: {params.model.architecture} ({model.count_params():,} params) on {data.describe()}", flush=True)
    state = backup_dir(out)
    start = time.perf_counter()
    keep = fit_resumable(target, as_dataset(data.x_train, data.labels(data.y_train), params.train.batch_size,
                                            params.seed),
                         as_dataset(data.x_val, data.labels(data.y_val), 500), params.train.epochs, state, planned["key"])
    seconds = time.perf_counter() - start
    metrics = {"best_epoch": keep.best_epoch + 1, **split_accuracies(model, data),
               "train_seconds": round(seconds, 1), "history": keep.history}
    save_model(model, out, {**planned, "metrics": metrics})
    finish(state)
    print(f"train: best epoch {metrics['best_epoch']}, val {metrics['val_accuracy']:.4f}, "
          f"test {metrics['test_accuracy']:.4f} ({seconds:.0f}s) -> {out}", flush=True)
    return out
