"""A user's own images: one subfolder per class, PNG or JPEG, resized to one input size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import PipelineError
from ..params import DataParams

EXTENSIONS = {".png", ".jpg", ".jpeg"}


def _read_image(path: Path, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise PipelineError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
    return array[..., None] if channels == 1 else array


def scan(root: Path) -> dict[str, list[Path]]:
    """Class name -> image files. Refuses non-image files, empty classes and a single class."""
    if not root.is_dir():
        raise PipelineError(f"data.dir {root} is not a directory (expected one subfolder per class)")
    classes: dict[str, list[Path]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in sub.iterdir() if p.is_file() and not p.name.startswith("."))
        strangers = [p for p in files if p.suffix.lower() not in EXTENSIONS]
        if strangers:
            raise PipelineError(f"{strangers[0]}: not a PNG or JPEG file; an image folder may hold only images")
        if not files:
            raise PipelineError(f"{sub}: class folder holds no images")
        classes[sub.name] = files
    if len(classes) < 2:
        raise PipelineError(f"{root}: found {len(classes)} class folder(s); a classifier needs at least 2 "
                            "(one subfolder per class)")
    return classes


def load_folder(params: DataParams, seed: int):
    """All images, then a seeded stratified test split; the caller carves validation from the rest."""
    from . import split_train_val

    if not params.dir:
        raise PipelineError("data.source is 'folder' but data.dir is not set; --set data.dir=PATH")
    root = Path(params.dir)
    classes = scan(root)
    size = tuple(params.image_size) if params.image_size else None
    images, labels = [], []
    for label, files in enumerate(classes.values()):
        for path in files:
            image = _read_image(path, size, params.channels)
            if size is None:
                size = image.shape[:2]  # the first image sets the size for the rest
            images.append(image)
            labels.append(label)
    x, y = np.stack(images), np.asarray(labels, np.uint8)
    x_train, y_train, x_test, y_test = split_train_val(x, y, params.test_fraction, seed + 7)
    return x_train, y_train, x_test, y_test, list(classes), f"folder ({root})"
