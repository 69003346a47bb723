"""What the stages share: the skeleton every stage that writes an artefact runs (:func:`make`), the
parent model a fine-tuning stage starts from, its teacher, and the training settings that go into its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..core.artifacts import (
    check_writable,
    derived,
    is_config_model,
    read_record,
    require,
    reuse_if_current,
    save_with_record,
    shrunk_path,
    trained_path,
    trained_source,
)
from ..core.contract import resolve
from ..core.errors import Interrupted, PipelineError
from ..core.keras_io import check_fits_data, load_model, save_model
from ..core.model_files import path_hash
from ..core.params import Params, load_params
from ..core.provenance import disagreements, stale_link
from ..data import Dataset, load_dataset
from ..data.stream import decode_errors
from ..export.report import bound_params, flatten
from ..training.distill import TeacherFile
from ..training.distribute import is_chief
from ..training.resume import backup_dir, finish


def make(out: Path, planned: dict[str, Any], work: Callable[[Path], tuple[Any, dict[str, Any] | None]]) -> None:
    """Plan, reuse or work, save, finish: the skeleton of every stage that writes an artefact.

    If ``out`` is current for the ``planned`` record (same inputs, params, code and versions), say so
    and do nothing. Otherwise ``work(state_dir)`` returns what to write (a Keras model, or bytes)
    and the metrics for its record; it may keep per-epoch resume state in ``state_dir``, which is
    removed once the artefact and its record are on disk. In a multi-worker run, only the chief writes."""
    stage = planned["stage"]
    if reuse_if_current(out, planned):
        print(f"{stage}: {out} is up to date (same inputs, params, code and versions); nothing to do", flush=True)
        return
    check_writable(out)
    state = backup_dir(out)
    chief = is_chief()
    try:
        with decode_errors():  # an image that fails to decode while streaming: its one line
            made, metrics = work(state)
    except PipelineError as exc:  # a refusal after the work (a divergence, a sparsity not reached): resuming
        if chief and not isinstance(exc, Interrupted):  # would only meet it again; an interruption (Ctrl-C,
            finish(state)                               # SIGTERM, a lost worker) keeps the state to resume
        raise
    if not chief:  # a multi-worker fit's other workers: the chief writes the artefact
        print(f"{stage}: this worker's part is done; the chief writes {out}", flush=True)
        return
    record = {**planned, "metrics": metrics} if metrics is not None else planned
    if isinstance(made, bytes):
        save_with_record(out, lambda tmp: tmp.write_bytes(made), record)
    else:
        save_model(made, out, record)
    finish(state)


def refuse_foreign(path: Path, params: Params) -> None:
    """One line if the config's own artefact ``path`` is not what these params make: the records behind
    it say other params (a ``--set`` experiment, or another config that wrote the same name), or one of
    them was made from an earlier version of its parent (re-made since). Files brought from elsewhere
    (``--model``, files without records) are judged as what they are, and not refused."""
    flat = flatten(bound_params(params))
    for key, made, now, record in disagreements(path, flat):
        stage = (read_record(Path(record.removesuffix(".json"))) or {}).get("stage", "train")
        raise PipelineError(f"{path} was made with {key}={made!r} ({record}); these params say {now!r}. Re-make "
                            f"it with these params (`make {stage}` re-makes what is stale), or give the same "
                            "--set it was made with")
    stale = stale_link(path)
    if stale:
        made, parent = stale
        stage = (read_record(made) or {}).get("stage", "convert")
        raise PipelineError(f"{made} was made from an earlier {parent} (it was re-made since); re-make it "
                            f"(`make {stage}`)")


def load_parent(params: Params, model_path: Path | None, refuse: tuple[str, ...], head: bool = True):
    """(path, model, data) for a stage that starts from the trained model (or a user's ``model_path``),
    or, with ``structured.enabled`` and ``head``, from the model the shrink stage made of it; refusing a
    model made by one of the stages in ``refuse`` and one that does not fit the data."""
    source = model_path or (require_model_file(trained_source(params)) if params.model.file else
                            require(trained_path(params.name), "mobiledeploy train"))
    if head and params.structured.enabled:  # the chain goes on from the shrunk model
        source = require(derived(shrunk_path, source, params), "mobiledeploy shrink" + (
            f" --model {model_path}" if model_path else ""))
    if is_config_model(source, params.name):
        refuse_foreign(source, params)
    stage = (read_record(source) or {}).get("stage")
    if stage in refuse:
        raise PipelineError(f"{source} is already a {'shrunk' if stage == 'shrink' else 'pruned'} model; "
                            "give the trained model it came from")
    model = load_model(source)
    if any(type(layer).__name__ == "PruneLowMagnitude" for layer in model.layers):
        raise PipelineError(f"{source} still holds pruning wrappers; give a trained, unwrapped model")
    data = load_dataset(params.data, params.seed)
    check_fits_data(model, data, source)
    return source, model, fed(params, model, data, source)


def made_from(params: Params, source: Path, model_path: Path | None, data: Dataset, path_of, stage: str):
    """(path, model, data) of the model the ``stage`` stage made from ``source`` (``path_of``: how it is
    named), for a stage that starts from it; one line with the command that makes it if it is missing."""
    path = require(derived(path_of, source, params), f"mobiledeploy {stage}" + (
        f" --model {model_path}" if model_path else ""))
    refuse_foreign(path, params)
    model = load_model(path)
    return path, model, fed(params, model, data, path)


def require_model_file(path: Path) -> Path:
    """``model.file``, which no stage makes: one line if it is not there."""
    if not path.exists():
        raise PipelineError(f"model.file {path} not found (it names your own ready-made model; the path is relative "
                            "to the folder you run in)")
    return path


def fed(params: Params, model, data: Dataset, source: Path) -> Dataset:
    """``data`` with the input contract of ``model`` (loaded from ``source``): declared by ``input``
    params, or the model's own leading Rescaling/Normalization layer; refused if neither says. Its
    training split is augmented as ``params.augment`` says, in training and every fine-tuning."""
    return data.with_contract(resolve(params.input, model, str(source), data.input_shape[-1])).with_augment(
        params.augment)


def teacher_for(params: Params, out: Path, parent: Path | None = None, data: Dataset | None = None,
                train: Callable[[Params], Path] | None = None) -> tuple[TeacherFile | None, dict]:
    """The teacher of the stage that writes ``out`` (None without one), and the distillation settings
    for its record and key (the teacher file's sha256 among them). A fine-tuning stage gives its
    ``parent`` and ``data``: with ``distill.from_parent`` the parent teaches. A ``distill.teacher``
    params file names the model its config trains: the train stage gives ``train``, which trains it
    first if it is not current; the stages after it require it."""
    d = params.distill
    knobs = {"temperature": d.temperature, "weight": d.weight}
    if parent is not None and d.from_parent:
        return TeacherFile(parent, d, data.contract), {"distill": {"teacher": "parent", **knobs}}
    if not d.teacher:
        return None, {"distill": {}}
    path = teacher_model(params, train)
    if path.resolve() == out.resolve():
        raise PipelineError(f"distill.teacher {path} is the model this stage writes: a model cannot teach itself")
    settings = {"teacher": d.teacher, "teacher_pixels": d.teacher_pixels, "teacher_sha256": path_hash(path), **knobs}
    return TeacherFile(path, d), {"distill": settings}


def teacher_model(params: Params, train: Callable[[Params], Path] | None = None) -> Path:
    """The model file ``distill.teacher`` names: itself, or the trained model of the params file it names
    (trained by ``train`` if given)."""
    d = params.distill
    if not d.teacher_config:
        path = Path(d.teacher)
        if not path.is_file():
            what = ("is a folder, not a model file" if path.is_dir() else "is not a regular file" if path.exists()
                    else "not found")
            raise PipelineError(f"distill.teacher {path} {what} (a Keras .keras or .h5 file, or a params file whose "
                                "trained model teaches; relative to the folder you run in)")
        return path
    theirs = load_params(d.teacher)
    if theirs.name == params.name:
        raise PipelineError(f"distill.teacher {d.teacher} has this config's own name ({params.name}): a model "
                            "cannot teach itself")
    if theirs.distill.teacher:
        raise PipelineError(f"distill.teacher {d.teacher} distils from {theirs.distill.teacher} itself; name its "
                            "trained model file instead (train it first with its own config)")
    if theirs.model.file:
        return require_model_file(trained_source(theirs))
    if train is None or params.train.distribute == "multi_worker":  # (its workers would all train it)
        return require(trained_path(theirs.name), f"mobiledeploy train --params {d.teacher} (the teacher)")
    print(f"distill: the teacher is {d.teacher}'s model; training it first if it is not current", flush=True)
    return train(theirs)


def finetune_settings(params: Params, data: Dataset) -> dict:
    """The ``train`` settings a fine-tuning stage uses, for its record and key: the recipe (label
    smoothing, weight decay) and, on multi-task data, the task weighting and soft-sharing penalty."""
    t = params.train
    settings = {"recipe": {"label_smoothing": t.label_smoothing, "weight_decay": t.weight_decay}}
    if data.tasks:
        settings["multitask"] = {"task_weights": t.task_weights, "loss_weighting": t.loss_weighting,
                                 "sharing_penalty": t.sharing_penalty, "sharing_coefficient": t.sharing_coefficient}
    return settings
