"""Fitting that survives being killed: state is saved after every epoch and picked up on re-run."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from ..core.artifacts import atomic_path, read_json, write_json
from ..core.errors import PipelineError
from ..core.framework import keras
from .recipe import Averaged, averaged, averages


def keras_verbosity() -> int:
    """Keras's live progress bar on a terminal; one line per epoch in logs and CI."""
    return 1 if sys.stdout.isatty() else 2


def backup_dir(artefact: Path) -> Path:
    """Where the fit that will produce ``artefact`` keeps its per-epoch state (hidden, beside it)."""
    return artefact.with_name(f".{artefact.name}.resume")


class KeepBest(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the best validation accuracy (never test accuracy),
    among epochs from ``first_epoch`` (0-based) on, and the logs of every epoch.

    With ``state_dir`` the best weights and the logs are also written there after each epoch (unless
    ``write`` is false: a multi-worker fit's other workers only read them), and read back when
    training starts, so a resumed fit keeps what the killed one had found.
    """

    def __init__(self, first_epoch: int = 0, state_dir: Path | None = None, write: bool = True):
        super().__init__()
        self.first_epoch, self.state_dir, self.write = first_epoch, state_dir, write
        self.best, self.best_epoch, self.weights = -1.0, -1, None
        self.history: dict[str, list[float]] = {}
        self.epochs_run = 0  # by this process (a resumed fit ran fewer than its history holds)

    def on_train_begin(self, logs=None):
        state = self.state_dir / "keep_best.json" if self.state_dir else None
        if state is None or not state.is_file():
            return
        saved = read_json(state)
        self.best, self.best_epoch, self.history = saved["best"], saved["best_epoch"], saved["history"]
        if self.best_epoch >= 0:
            with np.load(self.state_dir / "best_weights.npz") as f:
                self.weights = [f[f"w{i}"] for i in range(len(f.files))]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.epochs_run += 1
        for key, value in logs.items():
            self.history.setdefault(key, []).append(round(float(value), 5))
        score = logs.get("val_accuracy", -1.0)
        improved = epoch >= self.first_epoch and score > self.best
        if improved:
            with averaged(self.model):  # the weights that were validated
                self.best, self.best_epoch, self.weights = float(score), epoch, self.model.get_weights()
        if self.state_dir is None or not self.write:
            return
        if improved:
            with atomic_path(self.state_dir / "best_weights.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **{f"w{i}": w for i, w in enumerate(self.weights)})
        write_json(self.state_dir / "keep_best.json",
                   {"best": self.best, "best_epoch": self.best_epoch, "history": self.history})


class DivergedError(PipelineError):
    """A fit whose loss became NaN or infinite: its resume state is worthless too."""


class Diverged(keras.callbacks.Callback):
    """Stops a fit, with one line naming what to change, at the end of the first epoch whose loss is
    NaN or infinite: the weights are then garbage, and nothing may be saved from them. (Checked per
    epoch, not per batch: a per-batch hook makes Keras fetch the logs after every step.)"""

    def __init__(self, what: str, hint: str):
        super().__init__()
        self.what, self.hint = what, hint

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            raise DivergedError(f"{self.what} diverged: the loss became {float(loss)} in epoch {epoch + 1}; "
                                f"nothing was written. {self.hint}")


def divergence_hint(data_tasks: tuple[str, ...], rate_key: str) -> str:
    """What to lower when a fit diverges: the learning rate, and for multi-task data the task weights
    and the sharing coefficient."""
    keys = [rate_key] + (["train.task_weights", "train.sharing_coefficient"] if data_tasks else [])
    return f"Lower {', '.join(keys[:-1]) + ' or ' + keys[-1] if len(keys) > 1 else keys[0]}."


def fit_resumable(model, feed, epochs: int, state_dir: Path | None, key: str,
                  callbacks=(), first_best_epoch: int = 0, strategy=None) -> KeepBest:
    """``model.fit`` on ``feed`` (:class:`~pipeline.training.distribute.Feed`) with Keras's BackupAndRestore
    and :class:`KeepBest`; returns the KeepBest. A model whose optimizer averages its weights
    (``train.ema``) is validated, and its best epoch kept, as those averages.

    State left by a killed run with the same ``key`` (inputs, params, versions) is resumed from its
    last completed epoch; state with another key is discarded. Call :func:`finish` once the artefact
    is saved. Under a multi-worker ``strategy`` only the chief prepares and writes the state, and the
    other workers wait for it before they read it (BackupAndRestore keeps their own checkpoints in
    temporary folders of its own).
    """
    from .distribute import barrier, is_chief

    chief = is_chief()
    extra = []
    if state_dir is not None:
        key_file = state_dir / "key.json"
        if chief:
            if state_dir.exists() and not (key_file.is_file() and read_json(key_file).get("key") == key):
                shutil.rmtree(state_dir)
            resumed = state_dir.exists()
            state_dir.mkdir(parents=True, exist_ok=True)
            write_json(key_file, {"key": key})
        if strategy is not None:
            barrier(strategy)
        if (chief and resumed) or (not chief and (state_dir / "keep_best.json").is_file()):
            done = len(read_json(state_dir / "keep_best.json")["history"].get("loss", [])) \
                if (state_dir / "keep_best.json").is_file() else 0
            print(f"resuming from epoch {done + 1} of {epochs} (state in {state_dir})", flush=True)
        extra = [keras.callbacks.BackupAndRestore(str(state_dir / "keras"))]
    keep = KeepBest(first_best_epoch, state_dir, write=chief)
    average = [Averaged()] if averages(model) else []
    feed.fit(model, epochs=epochs, callbacks=[*average, *callbacks, *extra, keep], verbose=keras_verbosity())
    model.set_weights(keep.weights)
    return keep


def finish(state_dir: Path | None) -> None:
    """Remove the resume state once the artefact it was for is safely on disk."""
    if state_dir is not None and state_dir.exists():
        shutil.rmtree(state_dir)
