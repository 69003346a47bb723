"""The training wrapper around a deployable model, for what exists only while it trains.

:class:`Trainer` fits a model with one softmax output per task (multi-task data), or one output (a
single task) when a teacher distils into it. It adds the per-task loss weights (fixed, or learned as one
log-variance per task after Kendall et al. 2018), for soft parameter sharing the penalty on the distance
between the task towers (:mod:`.multitask`), and the teacher's softened outputs (:mod:`.distill`). The
model it wraps is saved and converted on its own, so none of this reaches a ``.tflite``.
"""

from __future__ import annotations

from ..core.framework import keras, tf
from .distill import Teacher, as_logits, soft_loss
from .multitask import sharing_penalty, tower_groups
from .recipe import classification_loss


class Trainer(keras.Model):
    """Fits ``net`` on labels given as a dict keyed by task (its outputs are keyed the same way), or, with
    ``single``, on one label array for its one output (named ``tasks[0]`` here).

    Loss per task: ``CE_t``, or with a teacher ``(1 - w) * CE_t + w * KD_t`` (:func:`.distill.soft_loss`);
    summed over tasks with fixed weights, or as ``exp(-s_t) * loss_t + s_t`` with learned ``s_t``
    (uncertainty weighting); plus ``coefficient * penalty`` between towers when ``penalty`` is set.
    Logs the loss, each task's accuracy and ``accuracy``, their mean (what picks the best epoch), and
    with a teacher the mean distillation term.
    """

    def __init__(self, net, tasks, weights: dict[str, float] | None = None, uncertainty: bool = False,
                 penalty: str | None = None, coefficient: float = 0.0, logits: dict[str, bool] | None = None,
                 smoothing: float = 0.0, teacher: Teacher | None = None, single: bool = False):
        super().__init__(name="trainer")
        self.net, self.tasks, self.single = net, tuple(tasks), single
        self.weights_by_task = [float((weights or {}).get(t, 1.0)) for t in self.tasks]
        self.log_vars = self.add_weight(name="log_vars", shape=(len(self.tasks),), initializer="zeros",
                                        trainable=True) if uncertainty else None
        self.groups = tower_groups(net, self.tasks) if penalty else []
        self.penalty_kind, self.coefficient = penalty, coefficient
        self.logits = {t: bool((logits or {}).get(t)) for t in self.tasks}
        # per task: on logits or on probabilities, as its output gives; per image, averaged in _objective
        # (a Keras loss may not reduce over the batch itself under a distribution strategy)
        self.ce = {t: classification_loss(self.logits[t], smoothing, keras.losses.Reduction.NONE) for t in self.tasks}
        self.teacher = teacher  # not tracked: its weights are not the trainer's to save or restore
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.penalty_tracker = keras.metrics.Mean(name="penalty")
        self.distill_tracker = keras.metrics.Mean(name="distillation")
        self.accuracies = {t: keras.metrics.SparseCategoricalAccuracy(name="accuracy" if single else f"{t}_accuracy")
                           for t in self.tasks}

    def call(self, x, training=False):
        out = self.net(x, training=training)
        if self.single:
            return {self.tasks[0]: out}
        return out if isinstance(out, dict) else dict(zip(self.net.output_names, out))

    @property
    def metrics(self):
        trackers = [self.loss_tracker, *self.accuracies.values()]
        return trackers + [self.penalty_tracker] * bool(self.groups) + [self.distill_tracker] * bool(self.teacher)

    def _objective(self, x, y, out):
        y = {self.tasks[0]: y} if self.single else y
        losses, soft = [], []
        taught = self.teacher.logits_for(x, self.tasks) if self.teacher else {}
        for t in self.tasks:
            loss = self.ce[t](y[t], out[t])
            if self.teacher:
                kd = soft_loss(taught[t], as_logits(out[t], self.logits[t]), self.teacher.temperature)
                soft.append(tf.reduce_mean(kd))
                loss = (1.0 - self.teacher.weight) * loss + self.teacher.weight * kd
            losses.append(tf.reduce_mean(loss))
        losses = tf.stack(losses)
        if self.log_vars is not None:
            total = tf.reduce_sum(tf.exp(-self.log_vars) * losses + self.log_vars)
        else:
            total = tf.reduce_sum(tf.constant(self.weights_by_task) * losses)
        penalty = sharing_penalty(self.groups, self.penalty_kind) if self.groups else tf.constant(0.0)
        distilled = tf.reduce_mean(tf.stack(soft)) if soft else tf.constant(0.0)
        return total + self.coefficient * penalty + tf.add_n(self.net.losses or [tf.constant(0.0)]), penalty, distilled

    def _logs(self, loss, penalty, distilled, y, out):
        y = {self.tasks[0]: y} if self.single else y
        self.loss_tracker.update_state(loss)
        if self.groups:
            self.penalty_tracker.update_state(penalty)
        if self.teacher:
            self.distill_tracker.update_state(distilled)
        for t in self.tasks:
            self.accuracies[t].update_state(y[t], out[t])
        logs = {m.name: m.result() for m in self.metrics}
        logs["accuracy"] = tf.reduce_mean([self.accuracies[t].result() for t in self.tasks])
        return logs

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            out = self(x, training=True)
            loss, penalty, distilled = self._objective(x, y, out)
            # each replica's mean loss, divided by their number: the summed gradients are those of the global batch
            scaled = loss / tf.distribute.get_strategy().num_replicas_in_sync
        self.optimizer.minimize(scaled, self.trainable_variables, tape=tape)
        return self._logs(loss, penalty, distilled, y, out)

    def test_step(self, data):
        x, y = data
        out = self(x, training=False)
        loss, penalty, distilled = self._objective(x, y, out)
        return self._logs(loss, penalty, distilled, y, out)
