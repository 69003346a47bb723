"""Typed, frozen parameters loaded from ``params.yaml``, a config overlay and ``--set`` overrides.

A config file may start with ``extends: <path>`` (relative to itself) to overlay a base file; the
result is checked as a whole before any work starts. Unknown keys, wrong types and impossible values
raise :class:`ParamsError` naming the key and what it accepts. This module does not import TensorFlow,
so the CLI and the Makefile can read params cheaply.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .errors import PipelineError

FORMATS = ("float32", "float16", "dynamic_int8", "int8")
MULTIFASHION_TASKS = ("top_left", "bottom_right")  # the tasks of data.source multifashion


class ParamsError(PipelineError):
    """A params file or override that is not valid."""


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ParamsError(f"params: {key}: {message}")


@dataclasses.dataclass(frozen=True)
class DataParams:
    source: Literal["fashion_mnist", "multifashion", "folder"] = "fashion_mnist"
    dir: Optional[str] = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    image_size: Optional[list[int]] = None
    channels: Literal[1, 3] = 1
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None
    tasks: Optional[list[str]] = None

    def validate(self) -> None:
        _check(0 < self.val_fraction < 1, "data.val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        _check(0 < self.test_fraction < 1, "data.test_fraction", f"must be in (0, 1), got {self.test_fraction}")
        _check(self.val_fraction + self.test_fraction < 1, "data.test_fraction",
               "val_fraction + test_fraction must leave some training data")
        if self.image_size is not None:
            _check(len(self.image_size) == 2 and min(self.image_size) >= 8, "data.image_size",
                   f"must be [height, width], each at least 8, got {self.image_size}")
        for key in ("limit_train", "limit_test"):
            value = getattr(self, key)
            _check(value is None or value >= 10, f"data.{key}", f"must be null or at least 10, got {value}")
        if self.tasks is not None:
            _check(self.source == "multifashion", "data.tasks", "only a multi-task source (multifashion) has tasks")
            _check(len(self.tasks) > 0 and set(self.tasks) <= set(MULTIFASHION_TASKS)
                   and len(set(self.tasks)) == len(self.tasks), "data.tasks",
                   f"must be null or a list of distinct tasks among {', '.join(MULTIFASHION_TASKS)}; got {self.tasks}")


@dataclasses.dataclass(frozen=True)
class ModelParams:
    architecture: str = "small_cnn"
    width: Optional[int] = None
    dropout: float = 0.3
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        from .architectures import resolve  # the registry has no TensorFlow import at module level

        _check(self.width is None or self.width >= 1, "model.width", f"must be null or at least 1, got {self.width}")
        _check(0 <= self.dropout < 1, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        try:
            resolve(self.architecture, self.width, self.options)
        except PipelineError as exc:
            raise ParamsError(f"params: model: {exc}") from None


@dataclasses.dataclass(frozen=True)
class TrainParams:
    epochs: int = 12
    batch_size: int = 128
    learning_rate: float = 1e-3
    task_weights: dict[str, Any] = dataclasses.field(default_factory=dict)
    loss_weighting: Literal["fixed", "uncertainty"] = "fixed"
    sharing_penalty: Literal["l2", "trace"] = "l2"
    sharing_coefficient: float = 0.0

    def validate(self) -> None:
        _check(self.epochs >= 1, "train.epochs", f"must be at least 1, got {self.epochs}")
        _check(self.batch_size >= 1, "train.batch_size", f"must be at least 1, got {self.batch_size}")
        _check(self.learning_rate > 0, "train.learning_rate", f"must be positive, got {self.learning_rate}")
        for task, weight in self.task_weights.items():
            _check(isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight >= 0,
                   f"train.task_weights.{task}", f"must be a number >= 0, got {weight!r}")
        _check(self.sharing_coefficient >= 0, "train.sharing_coefficient",
               f"must be at least 0, got {self.sharing_coefficient}")


@dataclasses.dataclass(frozen=True)
class PruneParams:
    schedule: Literal["polynomial_decay", "constant_sparsity"] = "polynomial_decay"
    initial_sparsity: float = 0.0
    final_sparsity: float = 0.8
    epochs: int = 4
    begin_epoch: int = 0
    end_epoch: int = 3
    frequency: int = 100
    min_weights: int = 0
    batch_size: int = 128
    learning_rate: float = 5e-4
    sparsity_m_by_n: Optional[list[int]] = None
    policy: Optional[Literal["xnnpack"]] = None

    def validate(self) -> None:
        if self.sparsity_m_by_n is not None:
            _check(self.sparsity_m_by_n == [2, 4], "prune.sparsity_m_by_n",
                   f"must be null or [2, 4] (the M-by-N sparsity TF-MOT supports), got {self.sparsity_m_by_n}")
        for key in ("initial_sparsity", "final_sparsity"):
            value = getattr(self, key)
            _check(0 <= value < 1, f"prune.{key}", f"must be in [0, 1), got {value}")
        _check(self.initial_sparsity <= self.final_sparsity, "prune.initial_sparsity",
               f"must not exceed final_sparsity ({self.final_sparsity}), got {self.initial_sparsity}")
        _check(self.epochs >= 1, "prune.epochs", f"must be at least 1, got {self.epochs}")
        _check(self.begin_epoch >= 0, "prune.begin_epoch", f"must be at least 0, got {self.begin_epoch}")
        _check(self.end_epoch > self.begin_epoch, "prune.end_epoch",
               f"must be after begin_epoch ({self.begin_epoch}), got {self.end_epoch}")
        _check(self.end_epoch <= self.epochs, "prune.end_epoch",
               f"must not exceed prune.epochs ({self.epochs}), got {self.end_epoch}")
        _check(self.frequency >= 1, "prune.frequency", f"must be at least 1, got {self.frequency}")
        _check(self.min_weights >= 0, "prune.min_weights", f"must be at least 0, got {self.min_weights}")
        _check(self.batch_size >= 1, "prune.batch_size", f"must be at least 1, got {self.batch_size}")
        _check(self.learning_rate > 0, "prune.learning_rate", f"must be positive, got {self.learning_rate}")


@dataclasses.dataclass(frozen=True)
class StructuredParams:
    criterion: Literal["l1", "l2", "mean_activation", "apoz", "taylor"] = "l1"
    scope: Literal["layer", "global"] = "layer"
    fraction: float = 0.2
    layer_fractions: dict[str, Any] = dataclasses.field(default_factory=dict)
    channel_multiple: int = 1
    max_rounds: int = 6
    finetune_epochs: int = 2
    batch_size: int = 128
    learning_rate: float = 5e-4
    accuracy_budget: float = 0.01
    target: Literal["macs", "params", "latency"] = "macs"
    target_ratio: float = 0.5

    def validate(self) -> None:
        _check(0 < self.fraction < 1, "structured.fraction", f"must be in (0, 1), got {self.fraction}")
        for layer, share in self.layer_fractions.items():
            _check(isinstance(share, (int, float)) and not isinstance(share, bool) and 0 <= share < 1,
                   f"structured.layer_fractions.{layer}", f"must be a number in [0, 1), got {share!r}")
        _check(not self.layer_fractions or self.scope == "layer", "structured.layer_fractions",
               f"needs scope: layer (scope is {self.scope})")
        _check(self.channel_multiple >= 1, "structured.channel_multiple",
               f"must be at least 1, got {self.channel_multiple}")
        _check(self.channel_multiple == 1 or self.scope == "layer", "structured.channel_multiple",
               f"needs scope: layer (scope is {self.scope})")
        _check(self.max_rounds >= 1, "structured.max_rounds", f"must be at least 1, got {self.max_rounds}")
        _check(self.finetune_epochs >= 1, "structured.finetune_epochs",
               f"must be at least 1, got {self.finetune_epochs}")
        _check(self.batch_size >= 1, "structured.batch_size", f"must be at least 1, got {self.batch_size}")
        _check(self.learning_rate > 0, "structured.learning_rate", f"must be positive, got {self.learning_rate}")
        _check(0 <= self.accuracy_budget < 1, "structured.accuracy_budget",
               f"must be in [0, 1), got {self.accuracy_budget}")
        _check(0 < self.target_ratio <= 1, "structured.target_ratio", f"must be in (0, 1], got {self.target_ratio}")


@dataclasses.dataclass(frozen=True)
class ConvertParams:
    formats: list[str] = dataclasses.field(default_factory=lambda: list(FORMATS))
    representative_samples: int = 500

    def validate(self) -> None:
        _check(len(self.formats) > 0, "convert.formats", f"must name at least one of {', '.join(FORMATS)}")
        for fmt in self.formats:
            _check(fmt in FORMATS, "convert.formats", f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
        _check(self.representative_samples >= 1, "convert.representative_samples",
               f"must be at least 1, got {self.representative_samples}")


@dataclasses.dataclass(frozen=True)
class ValidateParams:
    batch_size: int = 500
    warmup_runs: int = 20
    latency_runs: int = 300
    threads: list[int] = dataclasses.field(default_factory=lambda: [1, 0])

    def validate(self) -> None:
        _check(self.batch_size >= 1, "validate.batch_size", f"must be at least 1, got {self.batch_size}")
        _check(self.warmup_runs >= 0, "validate.warmup_runs", f"must be at least 0, got {self.warmup_runs}")
        _check(self.latency_runs >= 200, "validate.latency_runs",
               f"must be at least 200 for stable percentiles, got {self.latency_runs}")
        _check(len(self.threads) > 0 and all(t >= 0 for t in self.threads), "validate.threads",
               f"must be a non-empty list of thread counts (0 = all cores), got {self.threads}")


@dataclasses.dataclass(frozen=True)
class CheckParams:
    gates: str = "gates/default.yaml"
    accuracy_margin: float = 0.01
    drop_margin: float = 0.005
    size_margin: float = 0.05

    def validate(self) -> None:
        for key in ("accuracy_margin", "drop_margin", "size_margin"):
            value = getattr(self, key)
            _check(0 <= value < 1, f"check.{key}", f"must be in [0, 1), got {value}")


@dataclasses.dataclass(frozen=True)
class ZooParams:
    variants: list[str] = dataclasses.field(default_factory=lambda: ["small_cnn"])

    def validate(self) -> None:
        from .architectures import names

        _check(len(self.variants) > 0, "zoo.variants", "must name at least one architecture")
        for name in self.variants:
            _check(name in names(), "zoo.variants", f"unknown architecture {name!r}; known: {', '.join(names())}")
        _check(len(set(self.variants)) == len(self.variants), "zoo.variants", "names a variant twice")


@dataclasses.dataclass(frozen=True)
class Params:
    name: str = "fmnist_cnn"
    seed: int = 42
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    prune: PruneParams = PruneParams()
    structured: StructuredParams = StructuredParams()
    convert: ConvertParams = ConvertParams()
    validate: ValidateParams = ValidateParams()
    check: CheckParams = CheckParams()
    zoo: ZooParams = ZooParams()

    def check_all(self) -> None:
        _check(bool(self.name) and all(c.isalnum() or c in "_-" for c in self.name), "name",
               f"must be letters, digits, '_' or '-' (it names files), got {self.name!r}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if dataclasses.is_dataclass(value):
                value.validate()
        tasks = self.data.tasks or (MULTIFASHION_TASKS if self.data.source == "multifashion" else [])
        for task in self.train.task_weights:
            _check(task in tasks, f"train.task_weights.{task}",
                   f"not a task of the data; its tasks: {', '.join(tasks)}" if tasks else
                   f"{self.data.source} has a single task; task weights need multi-task data (multifashion)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section(self, name: str) -> dict[str, Any]:
        return dataclasses.asdict(getattr(self, name))

    def overlay(self, changes: dict[str, Any]) -> "Params":
        """These params with ``changes`` (nested like the YAML) merged in, checked like a loaded file."""
        params = _build(Params, _merge(self.to_dict(), changes), "")
        params.check_all()
        return params

    def subset(self, *names: str) -> dict[str, Any]:
        """The named top-level keys and sections: the params one stage uses (its record and key)."""
        everything = self.to_dict()
        return {name: everything[name] for name in names}


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"a list of {_describe(typing.get_args(annotation)[0])}"
    if origin is dict:
        return "a mapping"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix or "top level"
    if not isinstance(raw, dict):
        raise ParamsError(f"params: {where}: must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ParamsError(f"params: {prefix + '.' if prefix else ''}{unknown[0]}: unknown key; "
                          f"known keys{' in ' + prefix if prefix else ''}: {', '.join(sorted(known))}")
    values = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            values[name] = _build(annotation, value, key)
            continue
        if not _type_ok(value, annotation):
            raise ParamsError(f"params: {key}: expected {_describe(annotation)}, got {value!r}")
        if annotation is float:
            value = float(value)
        values[name] = value
    return cls(**values)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"params file not found: {path}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"params: {path}{where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"params: {path}: must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def param_files(path: str | Path) -> list[Path]:
    """The chain of files a params file reads, base first (follows ``extends``)."""
    chain: list[Path] = []
    current: Path | None = Path(path)
    while current is not None:
        if current.resolve() in [p.resolve() for p in chain]:
            raise ParamsError(f"params: {current}: 'extends' forms a cycle")
        chain.append(current)
        parent = _read_yaml(current).get("extends")
        if parent is not None and not isinstance(parent, str):
            raise ParamsError(f"params: {current}: extends: expected a path, got {parent!r}")
        current = Path(os.path.normpath(current.parent / parent)) if parent else None
    return chain[::-1]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], parsed YAML value)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"--set {text!r}: expected section.key=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def load_params(path: str | Path = "params.yaml", overrides: tuple[str, ...] | list[str] = ()) -> Params:
    """Load, merge, override and validate params. Raises :class:`ParamsError` on any problem."""
    raw: dict[str, Any] = {}
    for file in param_files(path):
        layer = _read_yaml(file)
        layer.pop("extends", None)
        raw = _merge(raw, layer)
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for part in keys[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(f"--set {text!r}: {part} is not a section")
        node[keys[-1]] = value
    params = _build(Params, raw, "")
    params.check_all()
    return params
