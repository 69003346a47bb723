"""Where artefacts live, how they are written (atomically) and the record written beside each one."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from .code import code_hash
from .errors import PipelineError, short

MODELS_DIR = Path("models")
OUT_DIR = Path("tflite_out")
USER_DIR = "user"  # artefacts made from a model given with --model: models/user/, tflite_out/user/

PACKAGES = ("tensorflow", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert", "ai-edge-quantizer", "numpy")


def trained_path(name: str) -> Path:
    return MODELS_DIR / f"{name}.keras"


def pruned_path(name: str) -> Path:
    return MODELS_DIR / f"{name}.pruned.keras"


def clustered_path(name: str) -> Path:
    return MODELS_DIR / f"{name}.clustered.keras"


def aware_path(name: str, aware: str) -> Path:
    """A quantization-aware model (``aware``: qat, pqat): HDF5, the format tf_keras reloads TF-MOT's
    quantize wrappers from (its .keras format loses track of their variables)."""
    return MODELS_DIR / f"{name}.{aware}.h5"


def chain(params) -> dict[str, Path]:
    """The config's own models, stage by stage, for the stages its params turn on: the trained model
    (or ``model.file``), then the shrunk one (``structured.enabled``), then what pruning, clustering
    and quantization-aware training made from the one before them."""
    models = {"train": trained_source(params)}
    head = params.name
    if params.structured.enabled:
        head = f"{params.name}.shrunk"
        models["shrink"] = shrunk_path(params.name)
    if params.prune.enabled:
        models["prune"] = pruned_path(head)
    if params.cluster.enabled:
        models["cluster"] = clustered_path(head)
    if params.quantize.aware != "none":
        models["qat"] = aware_path(head, params.quantize.aware)
    return models


def shipped_tflite(params) -> list[Path]:
    """The .tflite files a config ships: each model of its :func:`chain` in each of ``convert.formats``,
    its quantization-aware model in int8 only (fake quantization converts to int8)."""
    files = []
    for stage, path in chain(params).items():
        stem = params.name if stage == "train" else model_stem(path)
        files += [tflite_path(stem, fmt) for fmt in (["int8"] if stage == "qat" else params.convert.formats)]
    return files


def tflite_path(model: str, fmt: str) -> Path:
    return OUT_DIR / f"{model}.{fmt}.tflite"


def report_path(model: str, suffix: str = ".json") -> Path:
    """The validation report for a config's (or a user model's) .tflite files."""
    return OUT_DIR / f"{model}.report{suffix}"


def record_path(artefact: Path) -> Path:
    return artefact.with_name(artefact.name + ".json")


def trained_source(params) -> Path:
    """The config's trained model: ``model.file`` (a ready-made model: no train stage) or ``models/<name>.keras``."""
    return Path(params.model.file) if params.model.file else trained_path(params.name)


def derived(path_of, source: Path, params) -> Path:
    """Where the artefact ``path_of(stem)`` made from ``source`` goes: named after the config for its own
    models (``model.file`` included), under ``user/`` for a model given with --model (see :func:`place`)."""
    if params.model.file and os.path.realpath(source) == os.path.realpath(params.model.file):
        return path_of(params.name)
    return place(path_of(model_stem(source)), source, params.name)


def model_stem(path: Path) -> str:
    """``models/x.pruned.keras`` -> ``x.pruned``: the model name used in .tflite file names."""
    return path.name.removesuffix(path.suffix)


def is_config_model(source: Path, name: str) -> bool:
    """True if ``source`` is one of the config ``name``'s own models (``models/<name>[.*].keras``)."""
    stem = model_stem(source)
    return source.resolve().parent == MODELS_DIR.resolve() and (stem == name or stem.startswith(name + "."))


def place(path: Path, source: Path, name: str) -> Path:
    """Where an artefact derived from ``source`` goes: ``path`` for the config's own models, the same
    name under ``user/`` for any other model (a --model file), so that a model of yours, whatever its
    name, can never overwrite an artefact the config ships."""
    return path if is_config_model(source, name) else path.parent / USER_DIR / path.name


def require(path: Path, made_by: str) -> Path:
    """Fail with the command that makes ``path`` when it is missing."""
    if not path.is_file():
        raise PipelineError(f"{path} not found; it is made by `{made_by}`")
    return path


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` only if the block succeeds.

    The temporary name keeps the final suffix because Keras picks the save format from it. An
    interrupted or failed write leaves ``final`` as it was and removes the temporary file.
    """
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=final.parent)
    except OSError as exc:
        raise PipelineError(f"cannot write to {final.parent}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(tmp)  # writers such as Keras refuse or misbehave on an existing empty file
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except OSError as exc:  # a full disk (ENOSPC), a quota, a folder made read-only meanwhile
        raise PipelineError(f"cannot write {final}: {exc.strerror or exc}; {final.name} is unchanged") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


NAME_MAX = 255  # bytes in one file name, on every common file system


def check_writable(path: Path) -> None:
    """Before any work: the folder of ``path`` exists or can be made, and can be written; and the
    longest name the artefact brings (its record, its temporary file, its resume folder) fits the
    file system. A stage or study calls this for what it will write, so that it never fails after
    hours of training on a name or a folder."""
    longest = max(f".{path.stem}.xxxxxxxx.tmp{path.suffix}", f".{path.name}.resume", path.name + ".json",
                  key=lambda name: len(name.encode()))
    if len(longest.encode()) > NAME_MAX:
        spare = NAME_MAX - (len(longest.encode()) - len(path.name.encode()))
        raise PipelineError(f"{short(path.name, 60)}: the name is {len(path.name.encode())} bytes; with its record "
                            f"and temporary files it must be at most {spare} (file systems allow {NAME_MAX}). "
                            "Shorten the config's name or your model's file name")
    for folder in [path.parent, *path.parent.parents]:
        if folder.exists() and not folder.is_dir():
            raise PipelineError(f"cannot write {path}: {folder} is a file, not a folder; move it away")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PipelineError(f"cannot write to {path.parent}: {exc.strerror or exc}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise PipelineError(f"cannot write to {path.parent}: permission denied")


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path} not found") from None
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None
    except (OSError, UnicodeDecodeError, RecursionError) as exc:
        raise PipelineError(f"{path}: cannot read it as JSON ({exc.__class__.__name__})") from None


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def text_hash(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment() -> dict[str, Any]:
    """Where and when a measurement was made: date (UTC), git commit, package versions, CPU and cores."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _git_commit(), "versions": _versions(), "cpu": cpu, "cpu_count": os.cpu_count()}


def make_record(stage: str, params: dict[str, Any], seed: int | None, inputs: dict[str, str],
                **extra: Any) -> dict[str, Any]:
    """What produced an artefact: stage, the params it used, seed, versions, commit, and ``inputs``
    (what was read -> its hash; see :func:`file_hash`).

    ``key`` hashes everything that determines the artefact (not the git commit): a stage whose planned
    record has the key of the record on disk has nothing to do (:func:`reuse_if_current`). The code of
    the stage, its module and every package module it imports, is one of the inputs
    (:func:`pipeline.core.code.code_hash`): a change to it remakes the artefact, an edit elsewhere does not.
    """
    inputs = {**inputs, "code": code_hash(f"pipeline.stages.{stage}")}
    versions = _versions()
    key_source = json.dumps([stage, params, seed, inputs, versions], sort_keys=True, default=str)
    return {"stage": stage, "key": text_hash(key_source),
            "params": params, "seed": seed, "inputs": inputs, "versions": versions,
            "git_commit": _git_commit(), **extra}


def reuse_if_current(path: Path, planned: dict[str, Any]) -> bool:
    """True if ``path`` exists, unmodified, and was made from the same inputs, params and versions as
    ``planned`` would be; it is then touched, so that Make too sees it as up to date."""
    if not path.is_file():
        return False
    try:
        record = read_record(path)
    except PipelineError:
        return False
    current = bool(record) and record.get("key") == planned["key"] and \
        record.get("artefact", {}).get("hash") == file_hash(path)
    if current:
        with contextlib.suppress(OSError):  # a read-only folder: current all the same, Make may ask again
            os.utime(path)
    return current


def save_with_record(path: Path, save: Callable[[Path], None], record: dict[str, Any]) -> None:
    """Write an artefact through ``save(tmp_path)`` and its record, each atomically.

    The record is written before the artefact takes its final name, so an artefact is never without
    its record (a full disk fails the record first, and the artefact then stays as it was); a record
    whose artefact did not follow no longer matches its hash, so the stage is redone.
    """
    with atomic_path(path) as tmp:
        save(tmp)
        write_json(record_path(path), {**record, "artefact": {"path": str(path), "hash": file_hash(tmp)}})


def read_record(path: Path) -> dict[str, Any] | None:
    """The record beside ``path`` (None if there is none); PipelineError if it is not a JSON object."""
    rec = record_path(path)
    if not rec.is_file():
        return None
    record = read_json(rec)
    if not isinstance(record, dict):
        raise PipelineError(f"{rec}: not a record (expected a JSON object, got {type(record).__name__}); "
                            f"remove it or re-make {path.name}")
    return record


def shrunk_path(stem: str) -> Path:
    return trained_path(stem).with_name(f"{stem}.shrunk.keras")
