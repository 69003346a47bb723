"""Soft parameter sharing: the task towers of a multi-task model, and the penalties on the distance
between their weights (an L2 distance, or the trace norm) that :class:`~pipeline.training.trainer.Trainer`
adds to the loss."""

from __future__ import annotations

import re

from ..core.framework import tf

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
