"""Fashion-MNIST from IDX files, found in the first place that has them."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..core.errors import PipelineError
from .memo import read_once

ENV_VAR = "FASHION_MNIST_DIR"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets" / "fashion-mnist"


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def has_files(directory: Path) -> bool:
    return all(_find(directory, stem) for stem in FILES.values())


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one IDX file (optionally gzipped), checking its magic number and its length."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise PipelineError(f"{path}: cannot read ({exc.__class__.__name__}: {exc}); the file is corrupt or "
                            "truncated") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise PipelineError(f"{path}: truncated: {len(raw)} bytes is shorter than an IDX header")
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise PipelineError(f"{path}: wrong magic number 0x{found:08x}, expected 0x{magic:08x}; not an IDX "
                            f"{'image' if ndim == 3 else 'label'} file")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise PipelineError(f"{path}: holds {len(raw) - header} data bytes, the header announces {expected} "
                            f"({' x '.join(map(str, dims))}); the file is truncated or corrupt")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def read_directory(directory: Path) -> dict[str, np.ndarray]:
    paths = {}
    for key, stem in FILES.items():
        paths[key] = _find(directory, stem)
        if paths[key] is None:
            raise PipelineError(f"{directory}: missing {stem}(.gz)")
    arrays = read_once("fashion_mnist", list(paths.values()), lambda: tuple(
        read_idx(path, IMAGES_MAGIC if key.startswith("x") else LABELS_MAGIC) for key, path in paths.items()))
    arrays = dict(zip(paths, arrays))
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise PipelineError(f"{directory}: {split} set has {len(x)} images but {len(y)} labels")
        if y.size and y.max() >= len(CLASS_NAMES):
            raise PipelineError(f"{directory}: {split} labels go up to {y.max()}, Fashion-MNIST has 10 classes")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise PipelineError(f"{directory}: train images are {arrays['x_train'].shape[1:]} but test images are "
                            f"{arrays['x_test'].shape[1:]}")
    return arrays


def _download_with_keras() -> bool:
    from ..core.framework import keras

    try:
        keras.datasets.fashion_mnist.load_data()
    except Exception:  # offline, proxy, certificate...: every failure means "not available this way"
        return False
    return has_files(keras_cache_dir())


def locate(configured: str | None) -> Path:
    """The directory to read, trying the sources in order. Raises naming every way to get the data."""
    if configured:
        path = Path(configured)
        if not has_files(path):
            raise PipelineError(f"data.dir {path} does not hold the four Fashion-MNIST IDX files "
                                f"({', '.join(FILES.values())}, optionally .gz)")
        return path
    env = os.environ.get(ENV_VAR)
    if env:
        if not has_files(Path(env)):
            raise PipelineError(f"${ENV_VAR}={env} does not hold the four Fashion-MNIST IDX files")
        return Path(env)
    for candidate in (keras_cache_dir(), DEBIAN_DIR):
        if has_files(candidate):
            return candidate
    if _download_with_keras():
        return keras_cache_dir()
    raise PipelineError(
        "Fashion-MNIST not found. Any one of these provides it: set data.dir in params (or --set data.dir=PATH) "
        f"to a folder with the four IDX files; set ${ENV_VAR}; put them in the Keras cache {keras_cache_dir()}; "
        f"install Debian's dataset-fashion-mnist (`make data`, files in {DEBIAN_DIR}); or run once with network "
        "access so Keras can download them")


def load_fashion_mnist(configured: str | None):
    directory = locate(configured)
    a = read_directory(directory)
    return (a["x_train"][..., None], a["y_train"], a["x_test"][..., None], a["y_test"], CLASS_NAMES,
            f"fashion_mnist ({directory})")
