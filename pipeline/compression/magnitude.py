"""TF-MOT magnitude pruning: the schedule, wrapping the prunable layers, fine-tuning, stripping."""

from __future__ import annotations

import math
from pathlib import Path

from ..core.errors import PipelineError
from ..core.framework import keras, tf, tfmot
from ..core.params import PruneParams, TrainParams
from ..data import Dataset
from ..export.costs import layer_cost
from ..training import distribute
from ..training.distill import TeacherFile
from ..training.fit import fit_target, seed_everything
from ..training.resume import Diverged, divergence_hint, fit_resumable
from . import wrapped_copy

sparsity = tfmot.sparsity.keras


def schedule_steps(p: PruneParams, steps_per_epoch: int) -> tuple[int, int, int]:
    """(begin, end, frequency) of the mask updates, from the fine-tuning's actual number of steps.

    TF-MOT updates the masks at ``begin`` and every ``frequency`` steps after it up to ``end``, and a
    polynomial schedule reaches its final sparsity only at ``end``: so ``end`` is moved to the last
    update at or before the configured end, and ``frequency`` is lowered when the ramp has fewer steps
    than it (a small dataset: 17 steps an epoch at frequency 100 would never prune after step 0)."""
    begin = p.begin_epoch * steps_per_epoch
    span = max(p.end_epoch * steps_per_epoch - 1 - begin, 1)
    frequency = min(p.frequency, span)
    return begin, begin + (span // frequency) * frequency, frequency


def make_schedule(p: PruneParams, steps_per_epoch: int):
    """The TF-MOT schedule from params, on the steps of :func:`schedule_steps`."""
    begin, end, frequency = schedule_steps(p, steps_per_epoch)
    if p.schedule == "constant_sparsity":
        return sparsity.ConstantSparsity(p.final_sparsity, begin_step=begin, end_step=end, frequency=frequency)
    return sparsity.PolynomialDecay(initial_sparsity=p.initial_sparsity, final_sparsity=p.final_sparsity,
                                    begin_step=begin, end_step=end, frequency=frequency)


def target_sparsity(p: PruneParams) -> float:
    """The share of zeros the pruned layers must end with: final_sparsity, or 2 in 4 for 2:4 sparsity."""
    return 0.5 if p.sparsity_m_by_n else p.final_sparsity


def pruned_layers(wrapped) -> list[str]:
    """Names of the layers that ``wrap_for_pruning`` wrapped (those TF-MOT prunes)."""
    return [layer.layer.name for layer in wrapped.layers if type(layer).__name__ == "PruneLowMagnitude"]


# Layers whose kernels magnitude pruning zeroes. TF-MOT also wraps DepthwiseConv2D but prunes none of
# its weights, and prunes only the pointwise kernel of SeparableConv2D; other layers are left as they are.
PRUNABLE = ("Conv2D", "Dense", "SeparableConv2D")


def wrap_for_pruning(model, schedule, min_weights: int = 0, m_by_n: list[int] | None = None,
                     policy: str | None = None):
    """A copy of ``model`` with each prunable layer of at least ``min_weights`` kernel weights wrapped
    by ``prune_low_magnitude``; smaller layers (typically the first convolution and the 1x1
    bottleneck: few weights, much damage when pruned) stay dense.

    ``m_by_n`` ([2, 4]) asks TF-MOT for structured M-by-N sparsity instead of the schedule's target:
    at least N - M zeros in every block of N consecutive weights along the input channels.
    ``policy="xnnpack"`` prunes only what XNNPACK's sparse inference can use, and refuses a model that
    does not fit its requirements (TF-MOT's ``PruneForLatencyOnXNNPack``)."""
    allow = lambda layer: True  # noqa: E731
    if policy == "xnnpack":
        xnnpack = sparsity.PruneForLatencyOnXNNPack()
        try:
            xnnpack.ensure_model_supports_pruning(model)
        except ValueError as exc:
            raise PipelineError(f"prune.policy xnnpack: {model.name} does not fit XNNPACK sparse inference: "
                                f"{str(exc).strip().splitlines()[0]} (docs/structured-pruning.md, 'Pruning for "
                                "XNNPACK')") from None
        allow = xnnpack.allow_pruning
    extra = {"sparsity_m_by_n": tuple(m_by_n)} if m_by_n else {}

    def wrap(layer):
        if type(layer).__name__ in PRUNABLE and layer_cost(layer).prunable >= min_weights and allow(layer):
            return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule, **extra)
        return layer

    return wrapped_copy(model, wrap)


class HoldThenCosine(keras.optimizers.schedules.LearningRateSchedule):
    """The full rate while sparsity ramps up (``hold`` steps), then a cosine to zero for recovery."""

    def __init__(self, rate: float, hold: int, decay: int):
        self.rate, self.hold, self.decay = rate, hold, max(decay, 1)

    def __call__(self, step):
        progress = tf.clip_by_value((tf.cast(step, tf.float32) - self.hold) / self.decay, 0.0, 1.0)
        return self.rate * 0.5 * (1.0 + tf.cos(math.pi * progress))

    def get_config(self):
        return {"rate": self.rate, "hold": self.hold, "decay": self.decay}


def prune_model(model, data: Dataset, p: PruneParams, seed: int, state_dir: Path | None = None, key: str = "",
                train_p: TrainParams = TrainParams(), teacher: TeacherFile | None = None):
    """Wrap ``model`` for pruning, fine-tune it, and return (wrapped, stripped, KeepBest).

    The weights kept are those of the best validation epoch among the epochs that end at the final
    sparsity, so the model never trades sparsity for accuracy. A multi-task model is fine-tuned with
    the task weighting of ``train_p`` and, if it has task towers, their soft-sharing penalty; and
    distilled from ``teacher`` if given.
    """
    strategy = distribute.start(train_p.distribute)
    seed_everything(seed)
    steps = math.ceil(len(data.x_train) / p.batch_size)
    feed = distribute.datasets(strategy, data, p.batch_size, seed, "prune.batch_size")
    with strategy.scope():  # the wrapped copy's variables live under the strategy
        net = distribute.replica(model, strategy, train_p.sync_batchnorm)
        wrapped = wrap_for_pruning(net, make_schedule(p, steps), p.min_weights, p.sparsity_m_by_n, p.policy)
    if not pruned_layers(wrapped):
        raise PipelineError(f"prune: no layer of {model.name} can be pruned: none is a {', '.join(PRUNABLE)} layer "
                            f"with at least prune.min_weights ({p.min_weights:,}) kernel weights; lower "
                            "prune.min_weights (`mobiledeploy summary` lists each layer's weights)")
    begin, end, frequency = schedule_steps(p, steps)
    if frequency != p.frequency:
        print(f"prune: the sparsity ramp has {end - begin + 1} steps ({steps} a fine-tuning epoch), fewer than "
              f"prune.frequency ({p.frequency}): masks are updated every {frequency} steps instead", flush=True)
    hold = p.end_epoch * steps
    with strategy.scope():
        target = fit_target(wrapped, data, train_p, HoldThenCosine(p.learning_rate, hold, p.epochs * steps - hold),
                            teacher.load(data) if teacher else None)
    keep = fit_resumable(target, feed, p.epochs, state_dir, key,
                         callbacks=[sparsity.UpdatePruningStep(), Diverged(
                             "pruning's fine-tuning", divergence_hint(data.tasks, "prune.learning_rate"))],
                         first_best_epoch=p.end_epoch - 1, strategy=strategy)
    return wrapped, distribute.local_copy(sparsity.strip_pruning(wrapped), strategy), keep
