"""The training loop's parts: seeding, tf.data input, compiling, fitting target, accuracy."""

from __future__ import annotations

import numpy as np

from ..core.contract import RAW, InputContract, by_output, logits_by_output
from ..core.errors import PipelineError
from ..core.framework import keras, tf
from ..core.params import AugmentParams, TrainParams
from ..data import Dataset
from ..data.stream import ImageFiles, threads
from . import augment as augmentation
from .distill import Teacher
from .multitask import tower_groups
from .recipe import classification_loss, optimizer
from .trainer import Trainer


EVALUATION_VALUES = 1 << 22  # 500 Fashion-MNIST images; 151 RGB images of 96x96


def seed_everything(seed: int) -> None:
    """Same seed, params and machine -> same weights (TensorFlow's op determinism is enabled)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def as_dataset(x, y: np.ndarray | None, batch_size: int, shuffle_seed: int | None = None,
               contract: InputContract = RAW, shard: tuple[int, int] = (1, 0), multiple: int = 1,
               repeat: bool = False, augment: AugmentParams = AugmentParams()):
    """uint8 images -> a batched float32 tf.data pipeline, each pixel turned into the model's input by
    ``contract`` (the identity for the pipeline's own models: they rescale inside). Images not held in
    memory (:class:`~pipeline.data.stream.ImageFiles`) are streamed: their indices are shuffled (the
    same order as an array's for the same seed) and decoded in parallel. ``multiple`` leaves out the last
    images of the (shuffled) order so that a multiple of it remain, and ``shard`` (count, index) keeps
    one of ``count`` equal shards of them: both before anything is decoded. ``repeat`` repeats it
    without end, shuffled anew each time (a distributed dataset is not re-iterated per epoch). ``augment``
    transforms each batch's pixels before the contract (:mod:`.augment`), seeded by ``shuffle_seed``
    and the shard, anew each epoch."""
    streamed = isinstance(x, ImageFiles) and x.pixels is None
    items = np.arange(len(x)) if streamed else np.asarray(x)
    ds = tf.data.Dataset.from_tensor_slices(items if y is None else (items, y))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    count, index = shard
    multiple = np.lcm(multiple, count)
    if multiple > 1:
        ds = ds.take(len(x) - len(x) % multiple)
    if count > 1:
        ds = ds.shard(count, index)
    if repeat:
        ds = ds.repeat()
    if streamed:  # fixed parallelism and buffers: tf.data's autotuning grows them with time, and memory with them
        ds = ds.map(x.tf_images if y is None else (lambda i, b: (x.tf_images(i), b)), num_parallel_calls=threads())
    scale, offset = tf.constant(contract.scale, tf.float32), tf.constant(contract.offset, tf.float32)

    def to_input(a, seed=None):
        a = tf.cast(a, tf.float32)
        if seed is not None:
            a = augmentation.images(a, augment, seed)
        return a if contract.is_identity else a * scale + offset

    ds = ds.batch(batch_size)
    if augment.active and y is not None and shuffle_seed is not None:
        augmentation.check(augment, x.shape[1:])
        ds = augmentation.seeded(ds, shuffle_seed * 1024 + index)
        step = lambda batch, seed: (to_input(batch[0], seed), batch[1])  # noqa: E731
    else:
        step = to_input if y is None else (lambda a, b: (to_input(a), b))
    ds = ds.map(step, num_parallel_calls=1 if streamed else tf.data.AUTOTUNE)
    if streamed:
        options = tf.data.Options()
        options.autotune.enabled = False
        return ds.prefetch(2).with_options(options)
    return ds.prefetch(tf.data.AUTOTUNE)


def output_logits(model, data: Dataset) -> dict[str, bool]:
    """The output contract, per output name: True if the output gives logits, False if probabilities.
    Read from what the model returns for a few training images (:func:`gives_probabilities`)."""
    return logits_by_output(by_output(model, model(data.contract.apply(data.x_train[:32]), training=False)))


def compile_for_training(model, rate, from_logits: bool = False, p: TrainParams = TrainParams(),
                         average: bool = False) -> None:
    """Adam (or AdamW, :func:`optimizer`, averaging the weights with ``average``) on sparse categorical
    cross-entropy, on logits or probabilities as the model outputs, label-smoothed by
    ``p.label_smoothing``; ``rate`` is a number or a learning-rate schedule."""
    model.compile(optimizer=optimizer(rate, p, average), loss=classification_loss(from_logits, p.label_smoothing),
                  metrics=["accuracy"])


def evaluation_batch(x) -> int:
    """The batch size of predictions and validation passes: 500 images, fewer for large images (at most
    EVALUATION_VALUES input values a batch), so their activations do not set the peak memory."""
    return int(max(1, min(500, EVALUATION_VALUES // int(np.prod(x.shape[1:])))))


def predict_labels(model, x: np.ndarray, batch_size: int | None = None, contract: InputContract = RAW
                   ) -> np.ndarray | dict[str, np.ndarray]:
    """Top-1 labels; for a multi-output model, a dict of them keyed by output (task) name."""
    batch_size = batch_size or evaluation_batch(x)
    scores = by_output(model, model.predict(as_dataset(x, None, batch_size, contract=contract), verbose=0))
    if len(scores) == 1:
        return np.argmax(next(iter(scores.values())), axis=-1)
    return {task: np.argmax(s, axis=-1) for task, s in scores.items()}


def accuracy(model, x: np.ndarray, y: np.ndarray, tasks: tuple[str, ...] = (), contract: InputContract = RAW
             ) -> float | dict[str, float]:
    """Top-1 accuracy; with ``tasks`` (y has one column per task), a dict of them keyed by task."""
    labels = predict_labels(model, x, contract=contract)
    if tasks and not isinstance(labels, dict):  # a one-task model of multi-task data
        labels = {tasks[0]: labels}
    if tasks:
        return {task: float(np.mean(labels[task] == y[:, i])) for i, task in enumerate(tasks)}
    return float(np.mean(labels == y))


def split_accuracies(model, data: Dataset) -> dict:
    """Accuracy on each split; for multi-task data the mean over tasks, and each task's under ``tasks``."""
    splits = {"train": (data.x_train, data.y_train), "val": (data.x_val, data.y_val),
              "test": (data.x_test, data.y_test)}
    found = {name: accuracy(model, x, y, data.tasks, data.contract) for name, (x, y) in splits.items()}
    if not data.tasks:
        return {f"{name}_accuracy": value for name, value in found.items()}
    metrics: dict = {f"{name}_accuracy": float(np.mean(list(value.values()))) for name, value in found.items()}
    metrics["tasks"] = {task: {f"{name}_accuracy": found[name][task] for name in splits} for task in data.tasks}
    return metrics


def split_dataset(data: Dataset, split: str, batch_size: int | None = None, shuffle_seed: int | None = None,
                  shard: tuple[int, int] = (1, 0), multiple: int = 1, repeat: bool = False):
    """One split of ``data`` ("train" or "val") as the batched (input, labels) pipeline fitting reads;
    without ``batch_size``, in :func:`evaluation_batch` batches; ``shard``, ``multiple`` and ``repeat`` as
    in :func:`as_dataset`. The shuffled training split is augmented as ``data.augment`` says."""
    x, y = {"train": (data.x_train, data.y_train), "val": (data.x_val, data.y_val)}[split]
    augment = data.augment if split == "train" else AugmentParams()
    return as_dataset(x, data.labels(y), batch_size or evaluation_batch(x), shuffle_seed, data.contract, shard, multiple,
                      repeat, augment)


def fit_target(model, data: Dataset, p: TrainParams, rate, teacher: Teacher | None = None, average: bool = False):
    """What ``fit`` runs on, compiled with Adam (AdamW; with ``average``, keeping the moving average of
    the weights that ``p.ema`` asks for) at ``rate`` and a loss on logits or probabilities
    as the model's outputs give (:func:`output_logits`), label-smoothed as ``p`` says: the model itself
    for one task, or a :class:`~pipeline.training.trainer.Trainer` around it for several (task weights,
    and the soft-sharing penalty if the model has a tower per task) and whenever ``teacher`` distils."""
    unknown = sorted(set(p.task_weights) - set(data.tasks))
    if unknown:  # checked on load for multifashion; a manifest's tasks are its columns, known only now
        raise PipelineError(f"train.task_weights.{unknown[0]}: not a task of the data; its tasks: "
                            f"{', '.join(data.tasks) or 'none (a single label)'}")
    logits = output_logits(model, data)
    if not data.tasks and teacher is None:
        compile_for_training(model, rate, next(iter(logits.values())), p, average)
        # the compiled accuracy's variables too (one output here; labels are one integer an image)
        model.compiled_metrics.build(tf.zeros((1, *model.output.shape[1:])), tf.zeros((1,), tf.uint8))
        return _built(model)

    soft = bool(tower_groups(model, data.tasks))
    penalty = p.sharing_penalty if soft and p.sharing_coefficient > 0 else None
    tasks = data.tasks or tuple(logits)
    trainer = Trainer(model, tasks, p.task_weights, p.loss_weighting == "uncertainty", penalty, p.sharing_coefficient,
                      logits, p.label_smoothing, teacher, single=not data.tasks)
    trainer.compile(optimizer=optimizer(rate, p, average))
    trainer(tf.zeros((1, *data.input_shape)))
    return _built(trainer)


def _built(target):
    """``target`` with its optimizer's variables made now, not in the first step of ``fit``: variables
    made while TensorFlow traces that step make it trace the step twice (a second trace cost 2.5-3 s
    a fit for the tests' small pruned models). And BackupAndRestore can then restore the optimizer."""
    target.optimizer.build(target.trainable_variables)
    return target
