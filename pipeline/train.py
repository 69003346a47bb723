"""Stage 1: build the CNN named in params, train it, keep the best epoch by validation accuracy."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from . import architectures
from .artifacts import make_record, trained_path
from .data import Dataset, load_dataset
from .keras_io import save_model
from .params import Params
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


def predict_labels(model, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    return np.argmax(model.predict(as_dataset(x, None, batch_size), verbose=0), axis=-1)


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(predict_labels(model, x) == y))


def keras_verbosity() -> int:
    """Keras's live progress bar on a terminal; one line per epoch in logs and CI."""
    return 1 if sys.stdout.isatty() else 2


class KeepBest(keras.callbacks.Callback):
    """Remember the weights of the epoch with the best validation accuracy (never test accuracy),
    considering epochs from ``first_epoch`` (0-based) on."""

    def __init__(self, first_epoch: int = 0):
        super().__init__()
        self.first_epoch = first_epoch
        self.best, self.best_epoch, self.weights = -1.0, -1, None

    def on_epoch_end(self, epoch, logs=None):
        score = (logs or {}).get("val_accuracy", -1.0)
        if epoch >= self.first_epoch and score > self.best:
            self.best, self.best_epoch, self.weights = score, epoch, self.model.get_weights()


def rounded_history(history) -> dict[str, list[float]]:
    return {k: [round(float(v), 5) for v in values] for k, values in history.history.items()}


def split_accuracies(model, data: Dataset) -> dict[str, float]:
    return {"train_accuracy": accuracy(model, data.x_train, data.y_train),
            "val_accuracy": accuracy(model, data.x_val, data.y_val),
            "test_accuracy": accuracy(model, data.x_test, data.y_test)}


def train(params: Params, out: Path | None = None) -> Path:
    """Train ``params.model`` on ``params.data``; write the best epoch to ``models/<name>.keras``."""
    data = load_dataset(params.data, params.seed)
    out = out or trained_path(params.name)
    seed_everything(params.seed)
    model = architectures.build(params.model.architecture, data.input_shape, data.num_classes,
                                width=params.model.width, dropout=params.model.dropout)
    steps = math.ceil(len(data.x_train) / params.train.batch_size)
    compile_for_training(model, keras.optimizers.schedules.CosineDecay(params.train.learning_rate,
                                                                        steps * params.train.epochs))
    print(f"train: {params.model.architecture} ({model.count_params():,} params) on {data.describe()}", flush=True)
    keep = KeepBest()
    start = time.perf_counter()
    history = model.fit(as_dataset(data.x_train, data.y_train, params.train.batch_size, params.seed),
                        validation_data=as_dataset(data.x_val, data.y_val, 500),
                        epochs=params.train.epochs, callbacks=[keep], verbose=keras_verbosity())
    seconds = time.perf_counter() - start
    model.set_weights(keep.weights)
    metrics = {"best_epoch": keep.best_epoch + 1, **split_accuracies(model, data),
               "train_seconds": round(seconds, 1), "history": rounded_history(history)}
    record = make_record("train", params.to_dict(), params.seed, {"dataset": data.fingerprint},
                         dataset=data.source, input_shape=list(data.input_shape),
                         class_names=data.class_names, metrics=metrics)
    save_model(model, out, record)
    print(f"train: best epoch {metrics['best_epoch']}, val {metrics['val_accuracy']:.4f}, "
          f"test {metrics['test_accuracy']:.4f} ({seconds:.0f}s) -> {out}", flush=True)
    return out
