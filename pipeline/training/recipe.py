"""The training recipe's parts that ``train`` params choose: the loss (label smoothing), the optimizer
(Adam, or AdamW with weight decay, either keeping a moving average of the weights) and the
learning-rate schedule (warm-up, then a cosine to zero)."""

from __future__ import annotations

import contextlib

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


def optimizer(rate, p: TrainParams = TrainParams(), average: bool = False):
    """Adam at ``rate`` (a number or a schedule); AdamW when ``p.weight_decay`` is set, decaying the
    kernels only. With ``average`` and ``p.ema``, it also keeps an exponential moving average of the
    trainable weights (updated after every step with momentum ``p.ema``), which :class:`Averaged`
    validates and :func:`averaged` reads, and which Keras writes into the model when ``fit`` ends."""
    ema = {"use_ema": True, "ema_momentum": p.ema} if average and p.ema else {}
    if not p.weight_decay:
        return keras.optimizers.Adam(rate, **ema)
    adamw = keras.optimizers.AdamW(rate, weight_decay=p.weight_decay, **ema)
    adamw.exclude_from_weight_decay(var_names=NOT_DECAYED)
    return adamw


def averages(model) -> bool:
    """Whether ``model``'s optimizer keeps a moving average of its weights (:func:`optimizer`)."""
    return bool(getattr(getattr(model, "optimizer", None), "use_ema", False))


@contextlib.contextmanager
def averaged(model):
    """Inside the block, ``model``'s trainable weights hold their moving averages (if its optimizer keeps
    them); after it, their own values again. The optimizer's state is untouched."""
    if not averages(model):
        yield
        return
    variables = model.trainable_variables
    own = [v.numpy() for v in variables]
    model.optimizer.finalize_variable_values(variables)  # writes each average into its variable
    try:
        yield
    finally:
        for variable, value in zip(variables, own):
            variable.assign(value)


class Averaged(keras.callbacks.Callback):
    """Validation passes inside ``fit`` run on the moving averages of the weights (:func:`averaged`),
    so the validation accuracy that picks the best epoch is the averaged model's; training goes on from
    the weights themselves."""

    def __init__(self):
        super().__init__()
        self._block = None

    def on_test_begin(self, logs=None):
        self._block = averaged(self.model)
        self._block.__enter__()

    def on_test_end(self, logs=None):
        self._block.__exit__(None, None, None)
        self._block = None


def schedule(p: TrainParams, steps_per_epoch: int):
    """``p.learning_rate`` decayed to zero along a cosine over ``p.epochs``, after ``p.warmup_epochs``
    in which it rises linearly from zero."""
    warmup = steps_per_epoch * p.warmup_epochs
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(p.learning_rate, steps_per_epoch * p.epochs)
    return keras.optimizers.schedules.CosineDecay(0.0, steps_per_epoch * p.epochs - warmup,
                                                  warmup_target=p.learning_rate, warmup_steps=warmup)
