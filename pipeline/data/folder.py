"""A user's own images: one subfolder per class, identified by content, resized to one input size."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..core.errors import PipelineError
from ..core.params import DataParams

# What an image file starts with, by format: files are judged by their bytes, not their names.
SIGNATURES = {"PNG": (b"\x89PNG\r\n\x1a\n",), "JPEG": (b"\xff\xd8\xff",), "BMP": (b"BM",),
              "GIF": (b"GIF87a", b"GIF89a"), "TIFF": (b"II*\x00", b"MM\x00*"), "WEBP": (b"RIFF",)}
PROGRESS_FROM = 20_000  # a folder this large says what it is doing while its files are read
MAX_CLASSES = 256  # labels are stored as uint8
MAX_PIXELS = 50_000_000  # per image, checked before decoding: a larger one is refused (a decompression bomb)
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # grey modes whose samples run to 65535


def sniff(path: Path) -> str | None:
    """The image format ``path``'s first bytes announce, or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read it ({exc.strerror or exc.__class__.__name__})") from None
    for fmt, magics in SIGNATURES.items():
        if any(head.startswith(m) for m in magics) and (fmt != "WEBP" or head[8:12] == b"WEBP"):
            return fmt
    return None


def to_8bit(img, channels: int):
    """``img`` as 8-bit grey or RGB. 16-bit samples are scaled (65535 -> 255), not clipped."""
    from PIL import Image

    if img.mode in SIXTEEN_BIT:
        samples = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.round(samples / 257.0), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        raise ValueError("32-bit float samples have no defined 8-bit scale")
    return img.convert("L" if channels == 1 else "RGB")


def inspect(path: Path) -> bytes:
    """The sha256 of the image file at ``path`` (already sniffed by the folder scan or the manifest),
    after its header (read, not decoded) is checked: one line for an unreadable header, more pixels
    than MAX_PIXELS, or float samples."""
    from PIL import Image, UnidentifiedImageError

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        with Image.open(path) as img:
            width, height = img.size
            mode = img.mode
    except Image.DecompressionBombError:
        raise PipelineError(f"{path}: more pixels than an image may have (a decompression bomb)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise PipelineError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
    if width * height > MAX_PIXELS:
        raise PipelineError(f"{path}: {width}x{height} pixels is more than the {MAX_PIXELS:,} an image "
                            "may have (a decompression bomb, or a photo to shrink first)")
    if mode == "F":
        raise PipelineError(f"{path}: not a readable image (32-bit float samples have no defined 8-bit scale)")
    return digest.digest()


def read_image(path: Path, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise PipelineError(f"{path}: {width}x{height} pixels is more than the {MAX_PIXELS:,} an image "
                                    "may have (a decompression bomb, or a photo to shrink first)")
            img = to_8bit(img, channels)
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise PipelineError(f"{path}: more pixels than an image may have (a decompression bomb)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise PipelineError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
    return array[..., None] if channels == 1 else array


def scan(root: Path) -> dict[str, list[Path]]:
    """Class name -> image files. Refuses a file that is not an image, empty classes and a single class."""
    if not root.is_dir():
        raise PipelineError(f"data.dir {root} is not a directory (expected one subfolder per class)")
    classes: dict[str, list[Path]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in sub.iterdir() if p.is_file() and not p.name.startswith("."))
        for path in files:
            if sniff(path) is None:
                raise PipelineError(f"{path}: not an image ({', '.join(SIGNATURES)}); an image folder may hold "
                                    "only images")
        if not files:
            raise PipelineError(f"{sub}: class folder holds no images")
        classes[sub.name] = files
    if not 2 <= len(classes) <= MAX_CLASSES:
        raise PipelineError(f"{root}: found {len(classes)} class folder(s); a classifier here has 2 to "
                            f"{MAX_CLASSES} (one subfolder per class)")
    return classes


def hashed_splits(keys: list[str], strata: np.ndarray, seed: int, val_fraction: float, test_fraction: float
                  ) -> np.ndarray:
    """0 (train), 1 (validation) or 2 (test) per key, from a hash of the key and the seed: adding images
    never moves the ones already there between splits, so gates keep judging the same test images. Of
    the images not in test, ``val_fraction`` go to validation. A class (``strata``) that the hash leaves
    without a test or a validation image gets its training image of lowest hash moved there: only such
    a small class can see an image change split when images are added."""
    draws = np.empty((len(keys), 2))
    for i, key in enumerate(keys):
        digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
        draws[i] = [int.from_bytes(digest[k:k + 8], "big") / 2**64 for k in (0, 8)]
    found = np.where(draws[:, 0] < test_fraction, 2, np.where(draws[:, 1] < val_fraction, 1, 0)).astype(np.uint8)
    for label in np.unique(strata):
        for code, draw in ((2, 0), (1, 1)):
            members = np.flatnonzero(strata == label)
            training = members[found[members] == 0]
            if not (found[members] == code).any() and len(training):
                found[training[np.argmin(draws[training, draw])]] = code
    return found


def decode_split(paths: list[Path], keys: list[str], y: np.ndarray, names: list[str], tasks: tuple[str, ...],
                 params: DataParams, seed: int):
    """(x_train, y_train, x_val, y_val, x_test, y_test) of the images at ``paths`` (``keys``: what their
    split is hashed on), each x an :class:`~pipeline.data.stream.ImageFiles` of one size, held as
    ``data.cache`` says. The class counts of every split are checked, and every file's header read and
    hashed (:func:`inspect`), before anything is decoded."""
    from . import check_class_counts
    from .stream import ImageFiles, hold, threads

    split = hashed_splits(keys, y if y.ndim == 1 else y[:, 0], seed, params.val_fraction, params.test_fraction)
    for name, code in (("training", 0), ("validation", 1), ("test", 2)):
        check_class_counts(name, y[split == code], names, tasks)
    if len(paths) >= PROGRESS_FROM:
        print(f"data: checking and hashing {len(paths):,} image files", flush=True)
    with ThreadPoolExecutor(threads()) as pool:
        digests = np.asarray(list(pool.map(inspect, paths)), dtype="S32")
    size = tuple(params.image_size) if params.image_size else None
    if size is None:  # the first image sets the size for the rest, within data.image_size's range
        size = read_image(paths[0], None, params.channels).shape[:2]
        if not all(8 <= side <= 4096 for side in size):
            raise PipelineError(f"{paths[0]}: {size[1]}x{size[0]} pixels; without data.image_size the first image "
                                "sets the input size, and each side must be 8 to 4096: set data.image_size")
    x = hold(ImageFiles(np.asarray([str(p) for p in paths]), digests, size, params.channels), params.cache)
    return tuple(a for code in (0, 1, 2) for a in (x[split == code], y[split == code]))


def load_folder(params: DataParams, seed: int):
    """Every image of the folder, split by :func:`hashed_splits` on its path within the folder."""
    if not params.dir:
        raise PipelineError("data.source is 'folder' but data.dir is not set; --set data.dir=PATH")
    root = Path(params.dir)
    classes = scan(root)
    files = [path for paths in classes.values() for path in paths]
    y = np.asarray([label for label, paths in enumerate(classes.values()) for _ in paths], np.uint8)
    keys = [path.relative_to(root).as_posix() for path in files]
    return (*decode_split(files, keys, y, list(classes), (), params, seed), list(classes), (), f"folder ({root})")
