"""Typed, frozen parameters loaded from ``params.yaml``, a config overlay and ``--set`` overrides.

``params.yaml`` is the documentation and the truth for every default; the dataclass defaults below
mirror it, so that library calls and the command line start from the same values (a test keeps the
two equal).

A config file may start with ``extends: <path>`` (relative to itself) to overlay a base file; the
result is checked as a whole before any work starts. Unknown keys, wrong types and impossible values
raise :class:`ParamsError` naming the key and what it accepts. This module does not import TensorFlow,
so the CLI and the Makefile can read params cheaply.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from ..compression.channels.ranking import CRITERIA  # the registries params choose from
from ..export.tflite import DEFAULT_FORMATS, FORMATS
from .errors import PipelineError, clip, short

MULTIFASHION_TASKS = ("top_left", "bottom_right")  # the tasks of data.source multifashion
MAX_NAME = 64  # characters of params.name: artefact names add up to ~40 more, well under a file system's 255 bytes
MAX_FILE_BYTES = 1 << 20  # a params file is a page of settings, not data
# validate.latency_runs below 200 gives unstable percentiles; the test suite lowers the floor (never
# raises it) through this variable, to time tiny models quickly. Not for users.
LATENCY_FLOOR_ENV = "MOBILEDEPLOY_TEST_LATENCY_FLOOR"
_floor = os.environ.get(LATENCY_FLOOR_ENV, "").strip()
LATENCY_RUNS_FLOOR = min(200, max(1, int(_floor))) if _floor.isdigit() else 200


class ParamsError(PipelineError):
    """A params file or override that is not valid."""


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ParamsError(f"params: {key}: {message}")


def bounded(default: Any, low: float, high: float, *, open_low: bool = False, open_high: bool = False,
            factory: Any = None) -> Any:
    """A field whose number (or each number of its list or mapping) must lie in [low, high]
    (``open_low``/``open_high``: exclusive). Every numeric key has one: a range that keeps a typo from
    exhausting the machine or failing hours later. ``mobiledeploy keys`` lists them."""
    meta = {"range": (low, high, open_low, open_high)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe_range(spec: tuple) -> str:
    low, high, open_low, open_high = spec
    fmt = lambda v: f"{v:g}" if isinstance(v, float) else f"{v:,}".replace(",", "_")  # noqa: E731
    return f"{'(' if open_low else '['}{fmt(low)}, {fmt(high)}{')' if open_high else ']'}"


def _in_range(value: Any, spec: tuple) -> bool:
    low, high, open_low, open_high = spec
    return (low < value if open_low else low <= value) and (value < high if open_high else value <= high)


def _numbers(key: str, value: Any) -> list[tuple[str, Any]]:
    """(key, number) for the numbers a value holds: itself, or the items of its list or mapping."""
    items = ([(f"{key}.{clip(str(k), 40)}", v) for k, v in value.items()] if isinstance(value, dict) else
             [(key, v) for v in value] if isinstance(value, list) else [(key, value)])
    return [(k, v) for k, v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]


@dataclasses.dataclass(frozen=True)
class DataParams:
    source: Literal["fashion_mnist", "multifashion", "folder", "manifest"] = "fashion_mnist"
    dir: Optional[str] = None
    manifest: Optional[str] = None
    val_fraction: float = bounded(0.1, 0, 1, open_low=True, open_high=True)
    test_fraction: float = bounded(0.2, 0, 1, open_low=True, open_high=True)
    image_size: Optional[list[int]] = bounded(None, 8, 4096)
    channels: Literal[1, 3] = 1
    limit_train: Optional[int] = bounded(None, 10, 10**9)
    limit_test: Optional[int] = bounded(None, 10, 10**9)
    tasks: Optional[list[str]] = None
    # image folders and manifests: decode once and hold in memory, or stream from the files every epoch
    # (auto: memory while the decoded images fit pipeline.data.stream.AUTO_MEMORY_BYTES)
    cache: Literal["auto", "memory", "none"] = "auto"

    def validate(self) -> None:
        _check(self.val_fraction + self.test_fraction < 1, "data.test_fraction",
               "val_fraction + test_fraction must leave some training data")
        if self.image_size is not None:
            _check(len(self.image_size) == 2, "data.image_size",
                   f"must be [height, width], got {short(self.image_size)}")
        _check(self.manifest is None or self.source == "manifest", "data.manifest",
               f"is read only with data.source manifest (source is {self.source})")
        if self.tasks is not None:
            _check(self.source in ("multifashion", "manifest"), "data.tasks",
                   "only a multi-task source (multifashion, or a manifest with a column per task) has tasks")
            known = set(MULTIFASHION_TASKS) if self.source == "multifashion" else set(self.tasks)
            _check(len(self.tasks) > 0 and set(self.tasks) <= known and len(set(self.tasks)) == len(self.tasks),
                   "data.tasks", f"must be null or a list of distinct tasks among "
                   f"{', '.join(MULTIFASHION_TASKS) if self.source == 'multifashion' else 'the manifest columns'}; "
                   f"got {short(self.tasks)}")


@dataclasses.dataclass(frozen=True)
class InputParams:
    """How pixels 0-255 become the model's input (pipeline.core.contract): auto recognises a model that
    scales its input itself (a leading Rescaling or Normalization layer) and refuses one that does not."""
    pixels: Literal["auto", "raw", "unit", "symmetric", "scale_offset", "mean_std"] = "auto"
    scale: Optional[list[float]] = bounded(None, -1e6, 1e6)
    offset: Optional[list[float]] = bounded(None, -1e6, 1e6)
    mean: Optional[list[float]] = bounded(None, -1e6, 1e6)
    std: Optional[list[float]] = bounded(None, 0, 1e6, open_low=True)

    def validate(self) -> None:
        needs = {"scale_offset": ("scale",), "mean_std": ("mean", "std")}.get(self.pixels, ())
        allowed = {"scale_offset": ("scale", "offset"), "mean_std": ("mean", "std")}.get(self.pixels, ())
        for key in ("scale", "offset", "mean", "std"):
            value = getattr(self, key)
            if key in needs:
                _check(value is not None and 1 <= len(value) <= 4, f"input.{key}",
                       f"input.pixels {self.pixels} needs 1 value, or one per channel; got {short(value)}")
            elif value is not None:
                _check(key in allowed, f"input.{key}", f"is not read with input.pixels {self.pixels} (only "
                       f"scale_offset reads scale/offset, mean_std reads mean/std); remove it")
                _check(1 <= len(value) <= 4, f"input.{key}", f"needs 1 value, or one per channel; got {short(value)}")
        if self.scale is not None:
            _check(all(v != 0 for v in self.scale), "input.scale", "a zero scale makes every image the same")


@dataclasses.dataclass(frozen=True)
class ModelParams:
    file: Optional[str] = None  # your own ready-made model: train is left out, the stages after it start here
    architecture: str = "small_cnn"
    width: Optional[int] = bounded(None, 1, 512)
    dropout: float = bounded(0.3, 0, 1, open_high=True)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        from ..architectures import resolve

        try:
            resolve(self.architecture, self.width, self.options)
        except PipelineError as exc:
            raise ParamsError(f"params: model: {exc}") from None


@dataclasses.dataclass(frozen=True)
class TrainParams:
    epochs: int = bounded(12, 1, 1000)
    batch_size: int = bounded(128, 1, 8192)
    learning_rate: float = bounded(1e-3, 0, 10, open_low=True)
    task_weights: dict[str, Any] = bounded(None, 0, 100, factory=dict)
    loss_weighting: Literal["fixed", "uncertainty"] = "fixed"
    sharing_penalty: Literal["l2", "trace"] = "l2"
    sharing_coefficient: float = bounded(0.0, 0, 100)
    # none | mirrored (this machine's GPUs, or its logical CPUs) | multi_worker (TF_CONFIG, `--workers N`);
    # honoured by training and every fine-tuning. batch_size stays the global batch.
    distribute: Literal["none", "mirrored", "multi_worker"] = "none"
    # with distribute: batch normalisation statistics over each replica's part of the batch (false, as
    # Keras does) or over the global batch (true: as on one device, at the price of many more collectives)
    sync_batchnorm: bool = False
    # recipes, in training and (but warm-up and ema) every fine-tuning: pipeline.training.recipe
    label_smoothing: float = bounded(0.0, 0, 0.5)  # share of each label spread evenly over all classes
    weight_decay: float = bounded(0.0, 0, 1)  # AdamW's decoupled weight decay (0: Adam)
    warmup_epochs: int = bounded(0, 0, 1000)  # the learning rate rises from 0 over these, then its cosine
    ema: float = bounded(0.0, 0, 1, open_high=True)  # momentum of the weights' moving average (0: off)

    def validate(self) -> None:
        _check(self.warmup_epochs < self.epochs, "train.warmup_epochs",
               f"must be fewer than train.epochs ({self.epochs}), got {self.warmup_epochs}")
        for task, weight in self.task_weights.items():
            _check(isinstance(weight, (int, float)) and not isinstance(weight, bool),
                   f"train.task_weights.{clip(str(task), 40)}", f"must be a number, got {short(weight)}")


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """Random transformations of the training images, in training and every fine-tuning
    (pipeline.training.augment); never of validation, test or calibration images."""
    shift: int = bounded(0, 0, 64)  # up to this many pixels each way, zero-filled (0: off)
    flip: bool = False  # mirror half of the images left to right
    erase: float = bounded(0.0, 0, 1)  # probability of erasing a random rectangle

    @property
    def active(self) -> bool:
        return bool(self.shift or self.flip or self.erase)


@dataclasses.dataclass(frozen=True)
class DistillParams:
    """Knowledge distillation (pipeline.training.distill): a teacher's softened outputs as a second target
    in training and every fine-tuning."""
    teacher: str = ""  # a Keras model file (.keras, .h5), or a params file whose trained model teaches ("": none)
    teacher_pixels: Literal["auto", "raw", "unit", "symmetric"] = "auto"  # the teacher file's input contract
    from_parent: bool = False  # fine-tuning stages: the model they start from teaches them instead
    temperature: float = bounded(4.0, 0, 100, open_low=True)
    weight: float = bounded(0.5, 0, 1, open_low=True)  # share of the loss on the teacher's outputs

    @property
    def teacher_config(self) -> bool:
        return self.teacher.endswith((".yaml", ".yml"))

    def validate(self) -> None:
        _check(self.teacher == self.teacher.strip() and "\0" not in self.teacher, "distill.teacher",
               f"must be a path, got {short(self.teacher)}")
        _check(not (self.teacher_pixels != "auto" and (not self.teacher or self.teacher_config)),
               "distill.teacher_pixels", "describes a teacher model file's input; distill.teacher names "
               + ("a params file, whose model declares its own" if self.teacher else "none"))


@dataclasses.dataclass(frozen=True)
class PruneParams:
    enabled: bool = True  # false: no magnitude pruning; make all converts and gates the trained model alone
    schedule: Literal["polynomial_decay", "constant_sparsity"] = "polynomial_decay"
    initial_sparsity: float = bounded(0.0, 0, 1, open_high=True)
    final_sparsity: float = bounded(0.81, 0, 1, open_high=True)
    epochs: int = bounded(12, 1, 1000)
    begin_epoch: int = bounded(0, 0, 1000)
    end_epoch: int = bounded(4, 1, 1000)
    frequency: int = bounded(100, 1, 100_000)
    min_weights: int = bounded(10000, 0, 10**9)
    batch_size: int = bounded(128, 1, 8192)
    learning_rate: float = bounded(5e-4, 0, 10, open_low=True)
    sparsity_m_by_n: Optional[list[int]] = None  # exactly [2, 4] or null (validate)
    policy: Optional[Literal["xnnpack"]] = None

    def validate(self) -> None:
        if self.sparsity_m_by_n is not None:
            _check(self.sparsity_m_by_n == [2, 4], "prune.sparsity_m_by_n",
                   f"must be null or [2, 4] (the M-by-N sparsity TF-MOT supports), got {short(self.sparsity_m_by_n)}")
        _check(self.initial_sparsity <= self.final_sparsity, "prune.initial_sparsity",
               f"must not exceed final_sparsity ({self.final_sparsity}), got {self.initial_sparsity}")
        _check(self.end_epoch > self.begin_epoch, "prune.end_epoch",
               f"must be after begin_epoch ({self.begin_epoch}), got {self.end_epoch}")
        _check(self.end_epoch <= self.epochs, "prune.end_epoch",
               f"must not exceed prune.epochs ({self.epochs}), got {self.end_epoch}")


@dataclasses.dataclass(frozen=True)
class ClusterParams:
    """Weight clustering (pipeline.compression.clustering): each chosen kernel keeps ``clusters`` values."""
    enabled: bool = False
    clusters: int = bounded(16, 2, 256)
    init: Literal["kmeans_plus_plus", "linear", "density_based", "random"] = "kmeans_plus_plus"
    min_weights: int = bounded(10000, 1, 10**9)  # kernels with fewer weights stay as they are...
    layers: list[str] = dataclasses.field(default_factory=list)  # ...unless layers names them instead
    epochs: int = bounded(2, 1, 1000)
    batch_size: int = bounded(128, 1, 8192)
    learning_rate: float = bounded(1e-4, 0, 10, open_low=True)

    def validate(self) -> None:
        _check(len(set(self.layers)) == len(self.layers), "cluster.layers", "names a layer twice")


@dataclasses.dataclass(frozen=True)
class QuantizeParams:
    """Quantization-aware training (pipeline.compression.qat): fake quantization, fine-tuned, then int8."""
    # qat: the trained model; pqat: the pruned one, zeros kept; cqat: the clustered one, clusters kept;
    # pcqat: the clustered one made from the pruned one, zeros and clusters kept
    aware: Literal["none", "qat", "pqat", "cqat", "pcqat"] = "none"
    epochs: int = bounded(2, 1, 1000)
    batch_size: int = bounded(128, 1, 8192)
    learning_rate: float = bounded(1e-4, 0, 10, open_low=True)


@dataclasses.dataclass(frozen=True)
class StructuredParams:
    enabled: bool = False  # true: shrink is a stage of `make all`, and pruning, clustering and qat start from its model
    criterion: Literal[CRITERIA] = "l1"
    scope: Literal["layer", "global"] = "layer"
    fraction: float = bounded(0.25, 0, 1, open_low=True, open_high=True)
    layer_fractions: dict[str, Any] = bounded(None, 0, 1, open_high=True, factory=dict)
    channel_multiple: int = bounded(16, 1, 256)
    max_rounds: int = bounded(6, 1, 100)
    finetune_epochs: int = bounded(4, 1, 1000)
    batch_size: int = bounded(128, 1, 8192)
    learning_rate: float = bounded(5e-4, 0, 10, open_low=True)
    accuracy_budget: float = bounded(0.01, 0, 1, open_high=True)
    target: Literal["macs", "params", "latency"] = "latency"
    target_ratio: float = bounded(0.5, 0, 1, open_low=True)

    def validate(self) -> None:
        for layer, share in self.layer_fractions.items():
            _check(isinstance(share, (int, float)) and not isinstance(share, bool),
                   f"structured.layer_fractions.{clip(str(layer), 40)}", f"must be a number, got {short(share)}")
        _check(not self.layer_fractions or self.scope == "layer", "structured.layer_fractions",
               f"needs scope: layer (scope is {self.scope})")
        _check(self.channel_multiple == 1 or self.scope == "layer", "structured.channel_multiple",
               f"needs scope: layer (scope is {self.scope})")


@dataclasses.dataclass(frozen=True)
class ConvertParams:
    formats: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_FORMATS))
    representative_samples: int = bounded(500, 1, 100_000)
    calibration_source: Literal["train", "validation"] = "train"
    calibration_stratified: bool = False  # true: each class in proportion to its share (of the first task)
    float_layers: list[str] = dataclasses.field(default_factory=list)  # Keras layers int8_mixed keeps in float

    def validate(self) -> None:
        _check(len(self.formats) > 0, "convert.formats", f"must name at least one of {', '.join(FORMATS)}")
        for fmt in self.formats:
            _check(fmt in FORMATS, "convert.formats", f"unknown format {short(fmt)}; known: {', '.join(FORMATS)}")
        _check(len(set(self.formats)) == len(self.formats), "convert.formats",
               f"names a format twice: {short(self.formats)}")
        for layer in self.float_layers:
            _check(bool(layer) and layer.strip() == layer, "convert.float_layers",
                   f"must list Keras layer names, got {short(layer)}")
        _check(len(set(self.float_layers)) == len(self.float_layers), "convert.float_layers",
               f"names a layer twice: {short(self.float_layers)}")
        _check(bool(self.float_layers) or "int8_mixed" not in self.formats, "convert.float_layers",
               "format int8_mixed needs the Keras layers to keep in float (none are listed)")
        _check(not self.float_layers or "int8_mixed" in self.formats, "convert.float_layers",
               "only format int8_mixed keeps layers in float; add it to convert.formats")


@dataclasses.dataclass(frozen=True)
class ValidateParams:
    batch_size: int = bounded(500, 1, 100_000)
    warmup_runs: int = bounded(20, 0, 100_000)
    latency_runs: int = bounded(300, LATENCY_RUNS_FLOOR, 1_000_000)  # at least 200 for stable percentiles
    threads: list[int] = bounded(None, 0, 256, factory=lambda: [1, 0])  # 0 = all cores
    layer_error_images: int = bounded(100, 0, 10_000)  # test images for the per-layer error; 0 = none
    micro_images: int = bounded(10, 0, 10_000)  # test images for each int8 C array in LiteRT Micro; 0 = no Micro

    def validate(self) -> None:
        _check(0 < len(self.threads) <= 8, "validate.threads",
               f"must list 1 to 8 thread counts (0 = all cores), got {short(self.threads)}")


@dataclasses.dataclass(frozen=True)
class CheckParams:
    gates: Optional[str] = None  # null: gates/<name>.yaml
    accuracy_margin: float = bounded(0.005, 0, 1, open_high=True)
    drop_margin: float = bounded(0.003, 0, 1, open_high=True)
    size_margin: float = bounded(0.05, 0, 1, open_high=True)
    latency_gates: bool = True
    latency_margin: float = bounded(0.15, 0, 10)
    class_margin: Optional[float] = bounded(None, 0, 1, open_high=True)



@dataclasses.dataclass(frozen=True)
class ZooParams:
    variants: list[str] = dataclasses.field(default_factory=lambda: [
        "small_cnn", "plain_cnn", "plain_cnn_avg", "plain_cnn_strided", "bottleneck_cnn", "mobile_cnn", "inverted_cnn"])

    def validate(self) -> None:
        from ..architectures import names

        _check(len(self.variants) > 0, "zoo.variants", "must name at least one architecture")
        for name in self.variants:
            _check(name in names(), "zoo.variants", f"unknown architecture {short(name)}; known: {', '.join(names())}")
        _check(len(set(self.variants)) == len(self.variants), "zoo.variants", "names a variant twice")


@dataclasses.dataclass(frozen=True)
class StudiesParams:
    """What the comparisons (zoo, mtl-compare) repeat: each variant once per seed (pipeline.studies.variants)."""
    seeds: list[int] = bounded(None, 0, 2**31 - 1, factory=list)  # empty: `seed` alone

    def validate(self) -> None:
        _check(len(self.seeds) <= 10, "studies.seeds", f"at most 10 seeds, got {len(self.seeds)}")
        _check(len(set(self.seeds)) == len(self.seeds), "studies.seeds", "names a seed twice")


@dataclasses.dataclass(frozen=True)
class Params:
    name: str = "fmnist_cnn"
    seed: int = bounded(42, 0, 2**31 - 1)
    data: DataParams = DataParams()
    input: InputParams = InputParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    augment: AugmentParams = AugmentParams()
    distill: DistillParams = DistillParams()
    prune: PruneParams = PruneParams()
    cluster: ClusterParams = ClusterParams()
    quantize: QuantizeParams = QuantizeParams()
    structured: StructuredParams = StructuredParams()
    convert: ConvertParams = ConvertParams()
    validate: ValidateParams = ValidateParams()
    check: CheckParams = CheckParams()
    zoo: ZooParams = ZooParams()
    studies: StudiesParams = StudiesParams()

    def check_all(self) -> None:
        _check(0 < len(self.name) <= MAX_NAME and all(c.isascii() and (c.isalnum() or c in "_-") for c in self.name),
               "name", f"must be 1 to {MAX_NAME} ASCII letters, digits, '_' or '-' (it names files), "
               f"got {short(self.name)}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if dataclasses.is_dataclass(value) and hasattr(value, "validate"):
                value.validate()
        tasks = self.data.tasks or (MULTIFASHION_TASKS if self.data.source == "multifashion" else [])
        if self.data.source == "manifest" and not self.data.tasks:
            tasks = list(self.train.task_weights)  # a manifest's columns are known once it is read
        _check(not (self.augment.flip and self.data.source == "multifashion"), "augment.flip",
               "multifashion's labels name places (top_left, bottom_right): a mirrored image would put the "
               "top-left item on the right; leave flip off")
        aware = self.quantize.aware
        _check(aware not in ("pqat", "pcqat") or self.prune.enabled, "quantize.aware",
               f"{aware} keeps the pruned zeros, and prune.enabled is false (enable pruning, or use "
               f"{'qat' if aware == 'pqat' else 'cqat'})")
        _check(aware not in ("cqat", "pcqat") or self.cluster.enabled, "quantize.aware",
               f"{aware} fine-tunes the clustered model, and cluster.enabled is false (enable clustering, or use "
               f"{'qat' if aware == 'cqat' else 'pqat'})")
        for task in self.train.task_weights:
            _check(task in tasks, f"train.task_weights.{task}",
                   f"not a task of the data; its tasks: {', '.join(tasks)}" if tasks else
                   f"{self.data.source} has a single task; task weights need multi-task data (multifashion)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def gates_path(self) -> Path:
        """The gates file: check.gates, or gates/<name>.yaml, so a config's gates follow its name."""
        return Path(self.check.gates or f"gates/{self.name}.yaml")

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
    if origin is Literal:  # by type too: True == 1 and 1.0 == 1 would pass as the choice 1
        return any(value == a and type(value) is type(a) for a in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if annotation is type(None):
        return value is None
    if annotation is float:  # finite: an inf learning rate trains a NaN model without a word
        if isinstance(value, int) and not isinstance(value, bool):
            return abs(value) < 1e300
        return isinstance(value, float) and math.isfinite(value)
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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in raw:
        if not isinstance(name, str):
            raise ParamsError(f"params: {where}: keys must be names, got {short(name)}")
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(f"params: {prefix + '.' if prefix else ''}{clip(unknown[0], 40)}: unknown key; "
                          f"known keys{' in ' + prefix if prefix else ''}: {', '.join(sorted(fields))}")
    values = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            values[name] = _build(annotation, value, key)
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ParamsError(f"params: {key}: must be a finite number, got {value}")
        if not _type_ok(value, annotation):
            raise ParamsError(f"params: {key}: expected {_describe(annotation)}, got {short(value)}")
        spec = fields[name].metadata.get("range")
        for where_, number in _numbers(key, value) if spec else ():
            _check(isinstance(number, int) or math.isfinite(number), where_, f"must be finite, got {number}")
            _check(_in_range(number, spec), where_, f"must be in {describe_range(spec)}, got {short(number)}")
        if annotation is float:
            value = float(value)
        values[name] = value
    return cls(**values)


def key_table(params: "Params") -> list[tuple[str, str, str]]:
    """(key, value, what it accepts) for every key: the ranges and choices the loader enforces."""
    rows = []

    def walk(obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for field in dataclasses.fields(obj):
            value, key = getattr(obj, field.name), f"{prefix}{field.name}"
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
                continue
            accepts = _describe(hints[field.name])
            if "range" in field.metadata:
                each = "each " if "list" in accepts or "mapping" in accepts else ""
                accepts += f", {each}in {describe_range(field.metadata['range'])}"
            rows.append((key, yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n..."),
                         accepts))

    walk(params, "")
    return rows


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML without aliases (a few hundred bytes of nested aliases expand to gigabytes) and without
    duplicate keys (two ``train:`` sections would silently keep the last)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in params",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {short(key, 40)}",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.1 reads 1e-3 (no dot) as a string; a params file means the number, as YAML 1.2 and Python do
_EXPONENT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT, list("-+.0123456789"))


def _parse_yaml(text: str) -> Any:
    return copy.deepcopy(_parsed_yaml(text))  # a copy: the caller may change what it gets


@functools.lru_cache(maxsize=64)  # every command parses params.yaml again; the pure-Python parser takes 20-30 ms
def _parsed_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # a constructor's refusal: a date like 2001-13-45, !!int abc
        raise yaml.YAMLError(f"a value YAML cannot read ({clip(str(exc), 80)})") from None


def _read_text(path: Path, what: str) -> str:
    """A YAML file's text: a regular ``.yaml``/``.yml`` file of UTF-8 text, at most MAX_FILE_BYTES.
    Nothing of a file that fails these checks is ever quoted."""
    name = clip(str(path), 120)
    if path.suffix not in (".yaml", ".yml"):
        raise ParamsError(f"{what} {name}: expected a .yaml or .yml file")
    try:
        if not path.is_file():
            problem = "a directory" if path.is_dir() else "not a regular file" if path.exists() else "not found"
            raise ParamsError(f"{what} {name}: {problem}")
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ParamsError(f"{what} {name}: cannot read it ({exc.strerror or exc.__class__.__name__})") from None
    except ValueError:  # a NUL byte in the path
        raise ParamsError(f"{what} {name}: not a valid path") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ParamsError(f"{what} {name}: larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{what} {name}: not UTF-8 text (byte {exc.start})") from None


def read_yaml(path: Path, what: str = "params file") -> Any:
    """The data of a YAML file read as :func:`_read_text` and :class:`_StrictLoader` allow, or
    ParamsError naming the file, the line and the problem."""
    text = _read_text(path, what)
    try:
        return _parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"{what} {clip(str(path), 120)}{where}: YAML: {clip(problem, 120)}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml(path)
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
        layer = _read_yaml(current)  # refuses what is not a readable params file before anything else
        if os.path.realpath(current) in [os.path.realpath(p) for p in chain]:
            raise ParamsError(f"params: {current}: 'extends' forms a cycle")
        chain.append(current)
        parent = layer.get("extends")
        if parent is not None and not isinstance(parent, str):
            raise ParamsError(f"params: {current}: extends: expected a path, got {short(parent)}")
        current = Path(os.path.normpath(current.parent / parent)) if parent else None
    return chain[::-1]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], parsed YAML value)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"--set {short(text)}: expected section.key=value")
    try:
        parsed = _parse_yaml(value) if value.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        if "alias" in problem or "nested" in problem:
            raise ParamsError(f"--set {short(text)}: {problem}") from None
        parsed = value
    return key.strip().split("."), parsed


def load_params(path: str | Path = "params.yaml", overrides: tuple[str, ...] | list[str] = ()) -> Params:
    """Load, merge, override and validate params. Raises :class:`ParamsError` on any problem."""
    raw: dict[str, Any] = {}
    files = param_files(path)
    for file in files:
        layer = _read_yaml(file)
        layer.pop("extends", None)
        raw = _merge(raw, layer)
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for part in keys[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(f"--set {short(text)}: {clip(part, 40)} is not a section")
        node[keys[-1]] = value
    params = _build(Params, raw, "")
    params.check_all()
    # a config that extends another names its own artefacts: with the base's name, training it would
    # overwrite the base's model, and the base's stages would then read a foreign network
    named = "name" in _read_yaml(files[-1]) or any(parse_override(text)[0] == ["name"] for text in overrides)
    if len(files) > 1 and not named:
        raise ParamsError(f"params: {files[-1]} extends {files[-2]} but sets no name of its own, so its "
                          f"artefacts would overwrite those of {params.name!r}; add a `name:` line")
    return params
