"""The training loop's parts: seeding, tf.data input, compiling, fitting target, accuracy."""

from __future__ import annotations

import numpy as np

from ..core.framework import keras, tf
from ..core.params import TrainParams
from ..data import Dataset
from .multitask import MultiTaskTrainer, tower_groups


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
    :class:`~pipeline.training.multitask.MultiTaskTrainer` around it (task weights, and the soft-sharing
    penalty if the model has a tower per task)."""
    if not data.tasks:
        compile_for_training(model, rate)
        return model

    soft = bool(tower_groups(model, data.tasks))
    penalty = p.sharing_penalty if soft and p.sharing_coefficient > 0 else None
    trainer = MultiTaskTrainer(model, data.tasks, p.task_weights, p.loss_weighting == "uncertainty", penalty,
                               p.sharing_coefficient)
    trainer.compile(optimizer=keras.optimizers.Adam(rate))
    trainer(tf.zeros((1, *data.input_shape)))  # built before fit, so BackupAndRestore can restore its optimizer
    return trainer
