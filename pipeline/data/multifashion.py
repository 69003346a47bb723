"""MultiFashion: the two-task benchmark built from Fashion-MNIST (Lin et al. 2019, "Pareto Multi-Task
Learning").

On a 36x36 canvas, one item at the top-left and one of a different class at the bottom-right, each
shifted at random by up to 4 pixels towards the centre; where they overlap, a pixel takes the maximum.
Every source image is the top-left item of two pairings, so 60,000 training images give 120,000
examples and the 10,000 test images (used only for the test split) give 20,000. Generation is
deterministic for a seed and cached on disk, keyed by the source data, the seed and this recipe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.artifacts import atomic_path
from ..core.params import MULTIFASHION_TASKS
from . import fingerprint
from .memo import read_once

TASKS = MULTIFASHION_TASKS
CANVAS = 36
ITEM = 28
SHIFT = 4
PAIRINGS = 2
RECIPE = f"multifashion-v1-{CANVAS}-{SHIFT}-{PAIRINGS}"
CACHE_DIR = Path(".cache") / "multifashion"


def compose(x: np.ndarray, y: np.ndarray, seed: int, pairings: int = PAIRINGS
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (n*pairings, 36, 36, 1), labels (n*pairings, 2), layout (n*pairings, 6)) from 28x28 items.

    ``layout`` holds, per image, the indices of its top-left and bottom-right source items, then the
    (row, col) of the top-left item's corner and of the bottom-right item's.
    """
    if x.shape[1:3] != (ITEM, ITEM):
        raise ValueError(f"MultiFashion composes {ITEM}x{ITEM} items, got {x.shape[1:3]}")
    rng = np.random.default_rng(seed)
    first = np.repeat(np.arange(len(y)), pairings)
    second = rng.integers(0, len(y), len(first))
    clash = y[second] == y[first]
    while clash.any():  # redraw partners of the same class until every pair has two classes
        second[clash] = rng.integers(0, len(y), int(clash.sum()))
        clash = y[second] == y[first]
    far = CANVAS - ITEM  # 8: the bottom-right item's corner before its shift
    offsets = np.concatenate([rng.integers(0, SHIFT + 1, (len(first), 2)),
                              far - rng.integers(0, SHIFT + 1, (len(first), 2))], axis=1)
    images = np.zeros((len(first), CANVAS, CANVAS), np.uint8)
    items = x.reshape(len(x), ITEM, ITEM)
    for k, (i, j, (r1, c1, r2, c2)) in enumerate(zip(first, second, offsets)):
        images[k, r1:r1 + ITEM, c1:c1 + ITEM] = items[i]
        region = images[k, r2:r2 + ITEM, c2:c2 + ITEM]
        np.maximum(region, items[j], out=region)
    layout = np.concatenate([first[:, None], second[:, None], offsets], axis=1)
    return images[..., None], np.stack([y[first], y[second]], axis=1).astype(np.uint8), layout


def load_multifashion(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, seed: int,
                      cache_dir: Path = CACHE_DIR) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MultiFashion train and test arrays from Fashion-MNIST's, from the cache when it has them."""
    key = fingerprint(x, y, x_test, y_test).removeprefix("sha256:")[:16]
    path = cache_dir / f"{RECIPE}-seed{seed}-{key}.npz"
    if path.is_file():
        try:
            def read():
                with np.load(path) as cached:
                    return cached["x"], cached["y"], cached["x_test"], cached["y_test"]
            return read_once("multifashion", [path], read)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    print(f"data: composing MultiFashion (seed {seed}) -> {path}", flush=True)
    train_x, train_y, _ = compose(x, y, seed)
    test_x, test_y, _ = compose(x_test, y_test, seed + 1)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, x=train_x, y=train_y, x_test=test_x, y_test=test_y)
    return train_x, train_y, test_x, test_y
