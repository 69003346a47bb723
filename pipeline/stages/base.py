"""What the stages share: the parent model a fine-tuning stage starts from, and its multi-task settings."""

from __future__ import annotations

from pathlib import Path

from ..core.artifacts import read_record, require, trained_path
from ..core.errors import PipelineError
from ..core.keras_io import check_fits_data, load_model
from ..core.params import Params
from ..data import Dataset, load_dataset


def load_parent(params: Params, model_path: Path | None, refuse: tuple[str, ...]):
    """(path, model, data) for a stage that starts from the trained model (or a user's ``model_path``),
    refusing a model made by one of the stages in ``refuse`` and one that does not fit the data."""
    source = model_path or require(trained_path(params.name), "mobiledeploy train")
    stage = (read_record(source) or {}).get("stage")
    if stage in refuse:
        raise PipelineError(f"{source} is already a {'shrunk' if stage == 'shrink' else 'pruned'} model; "
                            "give the trained model it came from")
    model = load_model(source)
    if any(type(layer).__name__ == "PruneLowMagnitude" for layer in model.layers):
        raise PipelineError(f"{source} still holds pruning wrappers; give a trained, unwrapped model")
    data = load_dataset(params.data, params.seed)
    check_fits_data(model, data, source)
    return source, model, data


def multitask_settings(params: Params, data: Dataset) -> dict:
    """The training settings a fine-tuning stage uses on multi-task data (task weighting, soft-sharing
    penalty), for its record and key; nothing for single-task data."""
    if not data.tasks:
        return {}
    t = params.train
    return {"multitask": {"task_weights": t.task_weights, "loss_weighting": t.loss_weighting,
                          "sharing_penalty": t.sharing_penalty, "sharing_coefficient": t.sharing_coefficient}}
