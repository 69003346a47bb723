"""Channel pruning over rounds: prune, fine-tune, repeat until a target or the accuracy budget."""

from __future__ import annotations

import math

import numpy as np

from ...core.errors import PipelineError
from ...core.framework import keras
from ...export.costs import model_costs, totals
from ...training import distribute
from ...training.distill import TeacherFile
from ...training.fit import accuracy, fit_target, seed_everything
from ...training.resume import Diverged, divergence_hint, keras_verbosity
from .graph import ChannelGraph
from .ranking import rank, refuse_ties
from .surgery import choose, layer_fractions, remove_channels


def val_accuracies(model, data) -> dict[str, float]:
    """Validation accuracy per task (``{"label": ...}`` for a single-task model)."""
    found = accuracy(model, data.x_val, data.y_val, data.tasks, data.contract)
    return found if isinstance(found, dict) else {"label": found}


def val_accuracy(model, data) -> float:
    """Validation accuracy (the mean over tasks for a multi-task model)."""
    return float(np.mean(list(val_accuracies(model, data).values())))


def within_budget(start: dict, row: dict, budget: float) -> bool:
    """True if no task's validation accuracy in ``row`` is more than ``budget`` below ``start``'s (history
    rows of :func:`iterate`): on a multi-task model, one task may not pay for the other."""
    return all(start["val_tasks"][t] - acc <= budget for t, acc in row["val_tasks"].items())


def sensitivity(model, data, criterion: str, ratios=(0.1, 0.25, 0.5, 0.75)) -> tuple[float, list[dict]]:
    """(validation accuracy of ``model``, one row per prunable layer group and ratio): the validation
    accuracy after removing that share of the group's channels alone, without retraining. A share
    that removes no channel of a small layer (10% of 8) is not measured: its row says 0 removed and
    holds no accuracy."""
    scores = rank(model, criterion, data.contract.apply(data.x_val), data.labels(data.y_val))
    refuse_ties(model, scores, criterion)
    base = val_accuracy(model, data)
    rows = []
    for space in ChannelGraph(model).prunable():
        for ratio in ratios:
            keep = choose({space.id: scores[space.id]}, ratio)
            removed = space.channels - len(keep[space.id])
            found = val_accuracy(remove_channels(model, keep), data) if removed else None
            rows.append({"layers": space.producers, "channels": space.channels, "ratio": ratio, "removed": removed,
                         "val_accuracy": None if found is None else round(found, 5),
                         "drop": None if found is None else round(base - found, 5)})
    return base, rows


def finetune(model, data, s, train_p, seed: int, teacher: TeacherFile | None = None) -> None:
    """``s.finetune_epochs`` of training at ``s.learning_rate`` decayed along a cosine (the task
    weighting and soft-sharing penalty of ``train_p`` apply to a multi-task model), distilled from
    ``teacher`` if given."""
    strategy = distribute.start(train_p.distribute)
    seed_everything(seed)
    steps = math.ceil(len(data.x_train) / s.batch_size)
    feed = distribute.datasets(strategy, data, s.batch_size, seed, "structured.batch_size")
    net = distribute.replica(model, strategy, train_p.sync_batchnorm)
    with strategy.scope():
        target = fit_target(net, data, train_p, keras.optimizers.schedules.CosineDecay(
            s.learning_rate, steps * s.finetune_epochs), teacher.load(data) if teacher else None)
    feed.fit(target, validate=False, epochs=s.finetune_epochs, verbose=keras_verbosity(),
             callbacks=[Diverged("structured fine-tuning", divergence_hint(data.tasks, "structured.learning_rate"))])
    if net is not model:
        model.set_weights(net.get_weights())


def iterate(model, data, s, train_p, seed: int, latency, teacher: TeacherFile | None = None
            ) -> tuple[object, list[dict]]:
    """Prune, fine-tune, repeat: each round removes ``s.fraction`` of the remaining channels (ranked by
    ``s.criterion``, per layer or globally; ``s.layer_fractions`` overrides the share of named layers,
    ``s.channel_multiple`` rounds the widths) and fine-tunes. Stops when ``s.target`` (MACs, params, or
    int8 p50 from ``latency(model)``) is at or below ``s.target_ratio`` of the start, when the
    validation accuracy (of any task) has dropped by more than ``s.accuracy_budget``, when no channel
    can be removed, or after ``s.max_rounds``.

    Returns the last model within the budget and one history row per round (round 0: the start).
    """
    def measure(m, round_: int) -> dict:
        cost = totals(model_costs(m))
        tasks = {t: round(a, 5) for t, a in val_accuracies(m, data).items()}
        return {"round": round_, "params": cost["params"], "macs": cost["macs"],
                "val_accuracy": round(float(np.mean(list(tasks.values()))), 5), "val_tasks": tasks,
                "p50_ms": latency(m)}

    start = measure(model, 0)
    history = [{**start, "within_budget": True}]
    kept, current = model, model
    for r in range(1, s.max_rounds + 1):
        scores = rank(current, s.criterion, data.contract.apply(data.x_val), data.labels(data.y_val))
        shares = layer_fractions(current, s.fraction, s.layer_fractions) if s.layer_fractions else s.fraction
        refuse_ties(current, scores, s.criterion, shares if isinstance(shares, dict) else None)
        keep = choose(scores, shares, s.scope, s.channel_multiple)
        if all(len(keep[sid]) == len(found) for sid, found in scores.items()):
            if r == 1:
                widths = ", ".join(str(len(found)) for found in scores.values())
                raise PipelineError(f"structured: nothing to remove: at structured.fraction={s.fraction} and "
                                    f"channel_multiple={s.channel_multiple}, no layer of {model.name} (widths "
                                    f"{widths}) can lose a channel; lower channel_multiple or raise fraction")
            print(f"structured: round {r}: no layer can lose more channels at these settings; stopping", flush=True)
            break
        narrow = remove_channels(current, keep)
        finetune(narrow, data, s, train_p, seed + r, teacher)
        row = measure(narrow, r)
        row["within_budget"] = within_budget(start, row, s.accuracy_budget)
        history.append(row)
        print(f"structured: round {r}: {row['params']:,} params, {row['macs']:,} MACs, val {row['val_accuracy']:.4f}, "
              f"p50 {row['p50_ms']:.3f} ms{'' if row['within_budget'] else ' (over the accuracy budget)'}", flush=True)
        if not row["within_budget"]:
            break
        kept = current = narrow
        key = {"macs": "macs", "params": "params", "latency": "p50_ms"}[s.target]
        if row[key] <= s.target_ratio * start[key]:
            break
    return kept, history


def one_shot(model, data, s, train_p, seed: int, like, criterion: str | None = None,
             teacher: TeacherFile | None = None):
    """``model`` cut in one step to the per-layer widths of ``like`` (a model it was pruned to), keeping
    the best channels by ``criterion`` (default ``s.criterion``), then fine-tuned for
    ``s.finetune_epochs``: the baseline that iteration, and each criterion, are compared with."""
    criterion = criterion or s.criterion
    graph = ChannelGraph(model)
    scores = rank(model, criterion, data.contract.apply(data.x_val), data.labels(data.y_val))
    refuse_ties(model, scores, criterion)
    keep = {}
    for space in graph.prunable():
        width = like.get_layer(space.producers[0]).get_weights()[0].shape[-1]
        keep[space.id] = np.sort(np.argsort(scores[space.id], kind="stable")[space.channels - width:])
    narrow = remove_channels(model, keep)
    finetune(narrow, data, s, train_p, seed, teacher)
    return narrow
