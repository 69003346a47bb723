"""Training on several devices or machines with tf.distribute (``train.distribute``).

- ``none``: TensorFlow's default strategy; everything as on one device.
- ``mirrored``: ``MirroredStrategy`` over this machine's GPUs, or over its logical CPU devices when it
  has none (what the tests use).
- ``multi_worker``: ``MultiWorkerMirroredStrategy``, one process per machine (or per local worker,
  ``mobiledeploy train --workers N``), configured by ``TF_CONFIG``; without ``TF_CONFIG`` it is one worker.

The configured batch size is the global batch: each of the N replicas gets ``batch / N`` images a
step, and the gradients are summed over replicas of losses divided by N, so a step is the same step
as on one device, up to float rounding and batch normalisation: each replica normalises with the
statistics of its own part of the batch, unless ``train.sync_batchnorm`` synchronises them across
replicas (then they are the global batch's, as on one device). The learning rate is not scaled.

A fit runs on a replica of the model built under the strategy (:func:`replica`); the stage then goes on
with a copy of its weights in a model of its own (:func:`local_copy`), so evaluating and saving never
enter a collective op. In multi-worker training only the chief writes (:func:`is_chief`)."""

from __future__ import annotations

import dataclasses
import json
import math
import os

from ..core.errors import Interrupted, PipelineError, clip
from ..core.framework import keras, tf

KINDS = ("none", "mirrored", "multi_worker")
_made: dict[str, object] = {}  # one strategy per kind and process: MultiWorkerMirroredStrategy can be made once


def start(kind: str):
    """The strategy for ``kind``, made once per process. A multi-worker strategy must exist before
    TensorFlow runs its first op, so the stages that fit call this before they load anything."""
    if kind not in KINDS:
        raise PipelineError(f"train.distribute: {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "none":
        return tf.distribute.get_strategy()
    if kind == "multi_worker":
        tf_config()  # a malformed TF_CONFIG gets its one line before TensorFlow reads it
    if kind not in _made:
        if set(_made) - {kind}:
            raise PipelineError(f"train.distribute {kind}: this process already trains with {next(iter(_made))}; "
                                "one process runs one kind of distribution")
        _made[kind] = _mirrored() if kind == "mirrored" else _multi_worker()
    return _made[kind]


def _mirrored():
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    ops = None if gpus else tf.distribute.ReductionToOneDevice()
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=ops)


def _multi_worker():
    options = tf.distribute.experimental.CommunicationOptions(implementation="RING")
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except RuntimeError as exc:  # TensorFlow ran an op before: collectives can no longer be configured
        raise PipelineError(f"train.distribute multi_worker: {str(exc).splitlines()[0]} (each worker needs a "
                            "process of its own, started with `--workers N` or by your cluster)") from None


def tf_config() -> dict:
    """``TF_CONFIG`` parsed, or {} when it is not set; one line if it is not a cluster TensorFlow accepts."""
    text = os.environ.get("TF_CONFIG", "")
    if not text.strip():
        return {}
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        task = config["task"]
        assert isinstance(workers, list) and workers and all(isinstance(w, str) for w in workers)
        assert task["type"] in ("worker", "chief") and isinstance(task["index"], int)
        assert task["type"] == "chief" or 0 <= task["index"] < len(workers)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise PipelineError('TF_CONFIG is not a cluster: it must be JSON like {"cluster": {"worker": '
                            '["host:port", ...]}, "task": {"type": "worker", "index": 0}}') from None
    return config


def distributed(strategy) -> bool:
    """True for a strategy made by :func:`start` (not TensorFlow's default one)."""
    return any(strategy is made for made in _made.values())


def workers() -> int:
    """The number of worker processes of this run (1 unless multi-worker with a cluster in TF_CONFIG)."""
    if "multi_worker" not in _made:
        return 1
    cluster = tf_config().get("cluster", {})
    return max(1, len(cluster.get("worker", [])) + len(cluster.get("chief", [])))


def is_chief() -> bool:
    """False only in a multi-worker run, on a worker other than the chief (the first worker, or the
    task of type ``chief``): such a worker trains but writes no artefact, record or resume state."""
    if "multi_worker" not in _made:
        return True
    config = tf_config()
    task = config.get("task", {})
    if not task or task["type"] == "chief":
        return True
    return "chief" not in config["cluster"] and task["index"] == 0


def _clone(model, synchronized: bool):
    """A copy of ``model`` with its weights, each batch normalisation synchronised across replicas or not."""
    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config["synchronized"] = synchronized
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def replica(model, strategy, synchronized: bool):
    """What a fit under ``strategy`` trains: ``model`` itself under the default strategy, otherwise a
    copy with its weights whose variables live under ``strategy`` (compile it in ``strategy.scope()``).
    Its batch normalisations are ``synchronized`` (``train.sync_batchnorm``): their statistics are then
    the global batch's, as on one device, at the price of five all-reduces per layer and step (three forward, two backward); otherwise
    each replica normalises with its own part of the batch."""
    if not distributed(strategy):
        return model
    with strategy.scope():
        return _clone(model, synchronized=synchronized)


def local_copy(model, strategy):
    """A model of its own with ``model``'s weights, outside any strategy, with ordinary batch
    normalisations (``model`` itself under the default strategy): what is evaluated and saved after a
    distributed fit."""
    return _clone(model, synchronized=False) if distributed(strategy) else model


def from_chief(strategy, measure):
    """``measure()`` as the chief finds it, on every worker (the others do not run it): for what must be
    the same decision everywhere, such as a latency timed on one machine. An all-reduce in which only
    the chief's number counts."""
    if not distributed(strategy) or "multi_worker" not in _made:
        return measure()
    value = float(measure()) if is_chief() else 0.0
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(value, tf.float64)),
                            axis=None)
    return float(total.numpy()) / (strategy.num_replicas_in_sync // workers())  # the chief's replicas each add it


def per_replica_batch(batch_size: int, strategy, key: str) -> int:
    """``batch_size`` (the global batch) split evenly over the replicas, or one line saying it cannot be."""
    n = strategy.num_replicas_in_sync
    if batch_size % n:
        raise PipelineError(f"{key} {batch_size} is the global batch: it must divide evenly among the {n} replicas "
                            f"(try {max(n, batch_size // n * n)})")
    return batch_size // n


@dataclasses.dataclass(frozen=True)
class Feed:
    """What a fit reads: the training and validation inputs, and the steps Keras must be told of when
    they are distributed (it cannot count a distributed dataset)."""
    train: object
    val: object
    steps: dict

    def fit(self, model, validate: bool = True, **kwargs):
        """``model.fit`` on this feed (with a validation pass after each epoch, unless ``validate`` is
        false). A collective op aborted because a peer worker is gone ends the fit with one line."""
        try:
            if not validate:
                return model.fit(self.train, steps_per_epoch=self.steps.get("steps_per_epoch"), **kwargs)
            return model.fit(self.train, validation_data=self.val, **self.steps, **kwargs)
        except (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.DeadlineExceededError) as exc:
            if workers() == 1:
                raise
            cause = next((line.strip() for line in str(exc).splitlines() if "aborted by" in line),
                         type(exc).__name__)
            raise Interrupted(f"a worker of this multi-worker fit is gone ({clip(cause, 120)}); the state of its last "
                              "completed epoch is kept: run the same command again to resume") from None


def datasets(strategy, data, batch_size: int, seed: int, key: str) -> Feed:
    """The inputs of a fit at global batch ``batch_size``: as on one device under the default strategy.
    Otherwise each split is cut to a multiple of the number of replicas (each epoch leaves out fewer
    images than there are replicas, other ones each epoch), so that no replica is ever handed an empty
    batch. On one machine Keras splits each global batch among the replicas; on several workers, each
    worker reads its own equal shard of the same seed-shuffled order, before anything is decoded."""
    from .fit import evaluation_batch, split_dataset

    if not distributed(strategy):
        return Feed(split_dataset(data, "train", batch_size, seed), split_dataset(data, "val"), {})
    n = strategy.num_replicas_in_sync
    per_replica = per_replica_batch(batch_size, strategy, key)
    val_batch = max(1, evaluation_batch(data.x_val) // n)
    if workers() == 1:
        return Feed(split_dataset(data, "train", batch_size, seed, multiple=n),
                    split_dataset(data, "val", val_batch * n, multiple=n), {})

    def sharded(split: str, batch: int, shuffle: int | None):
        return strategy.distribute_datasets_from_function(lambda ctx: split_dataset(
            data, split, batch, shuffle, shard=(ctx.num_input_pipelines, ctx.input_pipeline_id), multiple=n,
            repeat=shuffle is not None))

    steps = {"steps_per_epoch": math.ceil(len(data.x_train) // n * n / batch_size),
             "validation_steps": math.ceil(len(data.x_val) // n / val_batch)}
    return Feed(sharded("train", per_replica, seed), sharded("val", val_batch, None), steps)


def barrier(strategy) -> None:
    """Wait until every worker gets here (an all-reduce of one number): after the chief has prepared the
    resume state, before any worker reads it."""
    if distributed(strategy):
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)


def describe(strategy) -> str:
    if not distributed(strategy):
        return "one device"
    n = workers()
    kind = next(k for k, made in _made.items() if made is strategy)
    return (f"{strategy.num_replicas_in_sync} replicas ({kind}"
            f"{f', {n} workers' if n > 1 else ''})")
