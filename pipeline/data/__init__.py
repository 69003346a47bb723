"""Datasets as uint8 NHWC arrays (or image files that read as such: :mod:`.stream`) with a deterministic train / validation / test split.

The test split is only ever used for reporting; validation (carved from the training data) is what
chooses epochs and checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from ..core.contract import RAW, InputContract
from ..core.errors import PipelineError
from ..core.params import AugmentParams, DataParams

# Fewest examples of each class (of each task) a split may hold; fewer is refused, naming the class.
# A class absent from training cannot be learnt, and one absent from validation or test cannot be scored.
MIN_PER_CLASS = {"training": 5, "validation": 1, "test": 1}


@dataclasses.dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray  # or, for an image folder or manifest, a stream.ImageFiles (each x_ alike)
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    source: str
    fingerprint: str
    tasks: tuple[str, ...] = ()  # multi-task: the label arrays have one column per task, in this order
    contract: InputContract = RAW  # how the pixels become the model's input (pipeline.core.contract)
    augment: AugmentParams = AugmentParams()  # what the training split's batches get (pipeline.training.augment)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> str:
        tasks = "" if not self.tasks else (f" (task {self.tasks[0]})" if len(self.tasks) == 1 else
                                          f" for each of {len(self.tasks)} tasks ({', '.join(self.tasks)})")
        return (f"{self.source}: {len(self.x_train)} train / {len(self.x_val)} val / {len(self.x_test)} test, "
                f"{'x'.join(map(str, self.input_shape))}, {self.num_classes} classes{tasks}")

    def with_contract(self, contract: InputContract) -> "Dataset":
        return dataclasses.replace(self, contract=contract)

    def with_augment(self, augment: AugmentParams) -> "Dataset":
        return dataclasses.replace(self, augment=augment)

    def labels(self, y: np.ndarray) -> dict[str, np.ndarray] | np.ndarray:
        """Label arrays as Keras wants them: a dict keyed by task for a multi-task dataset."""
        return {task: y[:, i] for i, task in enumerate(self.tasks)} if self.tasks else y


def split_train_val(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A seeded, stratified split: each class gives the same fraction to validation (for multi-task
    labels, each class of the first task)."""
    rng = np.random.default_rng(seed)
    strata = y if y.ndim == 1 else y[:, 0]
    val_idx = []
    for label in np.unique(strata):
        members = np.flatnonzero(strata == label)
        rng.shuffle(members)
        val_idx.append(members[: max(1, round(len(members) * val_fraction))])
    val_mask = np.zeros(len(y), bool)
    if val_idx:
        val_mask[np.concatenate(val_idx)] = True
    return x[~val_mask], y[~val_mask], x[val_mask], y[val_mask]


def subset(x: np.ndarray, y: np.ndarray, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` examples of a seeded permutation (all of them when ``limit`` is None)."""
    if limit is None or limit >= len(y):
        return x, y
    order = np.random.default_rng(seed).permutation(len(y))[:limit]
    order.sort()
    return x[order], y[order]


def check_class_counts(split: str, y: np.ndarray, names: list[str], tasks: tuple[str, ...]) -> None:
    """Refuse a split that holds fewer than MIN_PER_CLASS[split] examples of some class (per task)."""
    need = MIN_PER_CLASS[split]
    columns = [(f" for task {task}", y[:, i]) for i, task in enumerate(tasks)] if tasks else [("", y)]
    for task, labels in columns:
        counts = np.bincount(labels.astype(np.int64), minlength=len(names))
        worst = int(np.argmin(counts))
        if counts[worst] < need:
            fix = {"training": "data.limit_train", "validation": "data.limit_train or data.val_fraction",
                   "test": "data.limit_test (or, for an image folder or manifest, data.test_fraction)"}[split]
            raise PipelineError(f"data: class {names[worst]!r} has {counts[worst]} {split} example(s){task}; "
                                f"each class needs at least {need} (add images, or raise {fix})")


def fingerprint(*arrays) -> str:
    """sha256 of arrays' shapes and bytes; images still in their files (:class:`.stream.ImageFiles`,
    in memory or not) count by their files' digests."""
    from .stream import ImageFiles

    digest = hashlib.sha256()
    for a in arrays:
        digest.update(str(a.shape).encode())
        digest.update(a.content_hash() if isinstance(a, ImageFiles) else np.ascontiguousarray(a).tobytes())
    return "sha256:" + digest.hexdigest()


def load_dataset(params: DataParams, seed: int) -> Dataset:
    """Load the dataset ``params`` names and split it. Raises PipelineError with the fix on failure."""
    if params.source in ("folder", "manifest"):  # split by a hash of each image's path (folder.hashed_splits)
        from .folder import load_folder
        from .manifest import load_manifest

        load = load_folder if params.source == "folder" else load_manifest
        x_train, y_train, x_val, y_val, x_test, y_test, names, tasks, source = load(params, seed)
        x_train, y_train = subset(x_train, y_train, params.limit_train, seed)
        x_test, y_test = subset(x_test, y_test, params.limit_test, seed + 1)
    else:
        from .fashion_mnist import load_fashion_mnist

        x, y, x_test, y_test, names, source = load_fashion_mnist(params.dir)
        tasks: tuple[str, ...] = ()
        if params.source == "multifashion":
            from .multifashion import TASKS, load_multifashion

            x, y, x_test, y_test = load_multifashion(x, y, x_test, y_test, seed)
            tasks, source = TASKS, f"multifashion from {source}"
            if params.tasks:  # a subset of the tasks, e.g. one, for a single-task baseline
                columns = [TASKS.index(t) for t in params.tasks]
                y, y_test, tasks = y[:, columns], y_test[:, columns], tuple(params.tasks)
        x, y = subset(x, y, params.limit_train, seed)
        x_test, y_test = subset(x_test, y_test, params.limit_test, seed + 1)
        x_train, y_train, x_val, y_val = split_train_val(x, y, params.val_fraction, seed)
    for split, labels in (("training", y_train), ("validation", y_val), ("test", y_test)):
        check_class_counts(split, labels, names, tasks)
    return Dataset(x_train, y_train, x_val, y_val, x_test, y_test, names, source,
                   fingerprint(x_train, y_train, x_val, y_val, x_test, y_test), tasks)
