"""Training a model with one softmax output per task.

:class:`MultiTaskTrainer` wraps the deployable model and adds what exists only for training: the
per-task loss weights (fixed, or learned as one log-variance per task after Kendall et al. 2018) and,
for soft parameter sharing, the penalty on the distance between the task towers. The model it wraps
is saved and converted on its own, so none of this reaches a ``.tflite``.
"""

from __future__ import annotations

import re

from ..core.framework import keras, tf
from .recipe import classification_loss

PENALTIES = ("l2", "trace")


def _kernels(layer) -> list:
    inner = getattr(layer, "layer", layer)  # a TF-MOT pruning wrapper holds the layer it prunes
    return [w for attr in ("kernel", "depthwise_kernel") if (w := getattr(inner, attr, None)) is not None]


def tower_groups(model, tasks) -> list[list]:
    """Corresponding kernels of the task towers: one list per layer, one kernel per task, in task order.

    Towers are the layers named ``<task>_<rest>``; layers are matched by ``<rest>``. The heads (named
    after the task alone) are task-specific by design and are not tied. With fewer than two tasks there
    is nothing to tie.
    """
    if len(tasks) < 2:  # one tower has nothing to be close to (the trace norm would just regularise it)
        return []
    found: dict[str, dict[str, list]] = {}
    for layer in model.layers:
        name = getattr(layer, "layer", layer).name
        for task in tasks:
            match = re.fullmatch(rf"{re.escape(task)}_(.+)", name)
            if match and _kernels(layer):
                found.setdefault(match.group(1), {})[task] = _kernels(layer)
    groups = []
    for rest in sorted(found):
        per_task = found[rest]
        if len(per_task) == len(tasks):
            for i in range(len(per_task[tasks[0]])):
                groups.append([per_task[t][i] for t in tasks])
    return groups


def l2_distance(group) -> tf.Tensor:
    """Sum over task pairs of the squared L2 norm of the difference of their weights."""
    total = tf.constant(0.0)
    for i in range(len(group)):
        for j in range(i + 1, len(group)):
            total += tf.reduce_sum(tf.square(group[i] - group[j]))
    return total


def trace_norm(group) -> tf.Tensor:
    """The trace (nuclear) norm of the tasks' weights stacked as rows: sum of its singular values.

    Low when the towers' weights are nearly linearly dependent, so it pulls the towers towards shared
    directions without forcing them equal.
    """
    stacked = tf.stack([tf.reshape(w, [-1]) for w in group])
    return tf.reduce_sum(tf.linalg.svd(stacked, compute_uv=False))


def sharing_penalty(groups, kind: str) -> tf.Tensor:
    measure = {"l2": l2_distance, "trace": trace_norm}[kind]
    return tf.add_n([measure(g) for g in groups]) if groups else tf.constant(0.0)


class MultiTaskTrainer(keras.Model):
    """Fits ``net`` (a model whose output is a dict keyed by task) on labels given as the same dict.

    Loss: sum over tasks of ``w_t * CE_t`` (fixed weights), or ``exp(-s_t) * CE_t + s_t`` with learned
    ``s_t`` (uncertainty weighting); plus ``coefficient * penalty`` between towers when ``penalty`` is
    set. Logs the loss, each task's accuracy and ``accuracy``, their mean (what picks the best epoch).
    """

    def __init__(self, net, tasks, weights: dict[str, float] | None = None, uncertainty: bool = False,
                 penalty: str | None = None, coefficient: float = 0.0, logits: dict[str, bool] | None = None,
                 smoothing: float = 0.0):
        super().__init__(name="multitask_trainer")
        self.net, self.tasks = net, tuple(tasks)
        self.weights_by_task = [float((weights or {}).get(t, 1.0)) for t in self.tasks]
        self.log_vars = self.add_weight(name="log_vars", shape=(len(self.tasks),), initializer="zeros",
                                        trainable=True) if uncertainty else None
        self.groups = tower_groups(net, self.tasks) if penalty else []
        self.penalty_kind, self.coefficient = penalty, coefficient
        # per task: on logits or on probabilities, as its output gives; per image, averaged in _objective
        # (a Keras loss may not reduce over the batch itself under a distribution strategy)
        self.ce = {t: classification_loss(bool((logits or {}).get(t)), smoothing, keras.losses.Reduction.NONE)
                   for t in self.tasks}
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.penalty_tracker = keras.metrics.Mean(name="penalty")
        self.accuracies = {t: keras.metrics.SparseCategoricalAccuracy(name=f"{t}_accuracy") for t in self.tasks}

    def call(self, x, training=False):
        out = self.net(x, training=training)
        return out if isinstance(out, dict) else dict(zip(self.net.output_names, out))

    @property
    def metrics(self):
        trackers = [self.loss_tracker, *self.accuracies.values()]
        return trackers + [self.penalty_tracker] if self.groups else trackers

    def _objective(self, y, out):
        losses = tf.stack([tf.reduce_mean(self.ce[t](y[t], out[t])) for t in self.tasks])
        if self.log_vars is not None:
            total = tf.reduce_sum(tf.exp(-self.log_vars) * losses + self.log_vars)
        else:
            total = tf.reduce_sum(tf.constant(self.weights_by_task) * losses)
        penalty = sharing_penalty(self.groups, self.penalty_kind) if self.groups else tf.constant(0.0)
        return total + self.coefficient * penalty + tf.add_n(self.net.losses or [tf.constant(0.0)]), penalty

    def _logs(self, loss, penalty, y, out):
        self.loss_tracker.update_state(loss)
        if self.groups:
            self.penalty_tracker.update_state(penalty)
        for t in self.tasks:
            self.accuracies[t].update_state(y[t], out[t])
        logs = {m.name: m.result() for m in self.metrics}
        logs["accuracy"] = tf.reduce_mean([self.accuracies[t].result() for t in self.tasks])
        return logs

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            out = self(x, training=True)
            loss, penalty = self._objective(y, out)
            # each replica's mean loss, divided by their number: the summed gradients are those of the global batch
            scaled = loss / tf.distribute.get_strategy().num_replicas_in_sync
        self.optimizer.minimize(scaled, self.trainable_variables, tape=tape)
        return self._logs(loss, penalty, y, out)

    def test_step(self, data):
        x, y = data
        out = self(x, training=False)
        loss, penalty = self._objective(y, out)
        return self._logs(loss, penalty, y, out)
