"""The training recipe's parts that ``train`` params choose: the loss (label smoothing), the optimizer
(Adam, or AdamW with weight decay) and the learning-rate schedule (warm-up, then a cosine to zero)."""

from __future__ import annotations

from ..core.framework import keras, tf
from ..core.params import TrainParams

# weight decay shrinks kernels, not offsets, normalisation scales or the learned task weights: variables
# named so whatever the layer is called (AdamW searches these patterns in each variable's name)
NOT_DECAYED = [r"(^|/)(bias|gamma|beta|log_vars)(:\d+)?$"]


class SmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels whose one-hot targets keep ``1 - smoothing`` on the label and
    spread ``smoothing`` evenly over all classes (label smoothing, Szegedy et al. 2016)."""

    def __init__(self, smoothing: float, from_logits: bool = False, reduction=keras.losses.Reduction.AUTO,
                 name: str = "smoothed_crossentropy"):
        super().__init__(reduction=reduction, name=name)
        self.smoothing, self.from_logits = smoothing, from_logits

    def call(self, y_true, y_pred):
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        target = tf.one_hot(labels, tf.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(target, y_pred, from_logits=self.from_logits,
                                                     label_smoothing=self.smoothing)

    def get_config(self):
        return {**super().get_config(), "smoothing": self.smoothing, "from_logits": self.from_logits}


def classification_loss(from_logits: bool, smoothing: float = 0.0, reduction=keras.losses.Reduction.AUTO):
    """Sparse categorical cross-entropy on logits or probabilities, label-smoothed if ``smoothing``."""
    if smoothing:
        return SmoothedCrossentropy(smoothing, from_logits, reduction)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits, reduction=reduction)


def optimizer(rate, p: TrainParams = TrainParams()):
    """Adam at ``rate`` (a number or a schedule); AdamW when ``p.weight_decay`` is set, decaying the
    kernels only."""
    if not p.weight_decay:
        return keras.optimizers.Adam(rate)
    adamw = keras.optimizers.AdamW(rate, weight_decay=p.weight_decay)
    adamw.exclude_from_weight_decay(var_names=NOT_DECAYED)
    return adamw


def schedule(p: TrainParams, steps_per_epoch: int):
    """``p.learning_rate`` decayed to zero along a cosine over ``p.epochs``, after ``p.warmup_epochs``
    in which it rises linearly from zero."""
    warmup = steps_per_epoch * p.warmup_epochs
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(p.learning_rate, steps_per_epoch * p.epochs)
    return keras.optimizers.schedules.CosineDecay(0.0, steps_per_epoch * p.epochs - warmup,
                                                  warmup_target=p.learning_rate, warmup_steps=warmup)
