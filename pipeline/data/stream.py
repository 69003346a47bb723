"""Image files that stand in for a uint8 (N, H, W, C) array: decoded when read, so a folder larger than
memory can train. Indexing with a slice, a mask or indices gives another :class:`ImageFiles`; one
index, or ``np.asarray``, decodes. :func:`pipeline.training.fit.as_dataset` streams them through
tf.data, decoding in parallel. With ``data.cache: memory`` (or ``auto`` on a folder that fits
:data:`AUTO_MEMORY_BYTES`), they are decoded once, in parallel, and held as one array instead.

Every image is decoded by the one function the in-memory path uses (:func:`folder.read_image`), so the
two paths give the same pixels, and the same batches for the same seed."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..core.errors import PipelineError

AUTO_MEMORY_BYTES = 1 << 30  # data.cache auto: decoded images up to this size are held in memory
DRAIN_SECONDS = 0.5
FAILED = "image decoding failed: "  # how a decoding error raised inside tf.data is recognised outside it


_streamed = threading.Event()  # set once a stream has been built, until a stage ending early drains it
_closing = threading.Event()  # set while it drains


def threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class ImageFiles:
    """The images at ``paths`` (with their files' sha256 ``digests``), each decoded to ``size`` (height,
    width) and ``channels``; ``pixels`` holds them decoded when they are cached in memory."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, paths: np.ndarray, digests: np.ndarray, size: tuple[int, int], channels: int,
                 pixels: np.ndarray | None = None):
        self.paths, self.digests, self.size, self.channels, self.pixels = paths, digests, size, channels, pixels

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), *self.size, self.channels)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.pixels[key] if self.pixels is not None else self.decode(int(key))
        return ImageFiles(self.paths[key], self.digests[key], self.size, self.channels,
                          None if self.pixels is None else self.pixels[key])

    def __array__(self, dtype=None, copy=None):
        pixels = self.pixels if self.pixels is not None else self.decode_all()
        return pixels if dtype is None else pixels.astype(dtype)

    def decode(self, index: int) -> np.ndarray:
        from .folder import read_image

        return read_image(Path(self.paths[index]), self.size, self.channels)

    def decode_all(self) -> np.ndarray:
        """Every image, decoded on :func:`threads` threads (Pillow releases the GIL while it decodes)."""
        out = np.empty(self.shape, np.uint8)

        def one(i: int) -> None:
            out[i] = self.decode(i)

        with ThreadPoolExecutor(threads()) as pool:
            list(pool.map(one, range(len(self))))
        return out

    def cached(self) -> "ImageFiles":
        """The same images, decoded once and held in memory."""
        return self if self.pixels is not None else ImageFiles(self.paths, self.digests, self.size, self.channels,
                                                               self.decode_all())

    def content_hash(self) -> bytes:
        """What the images are: the files' digests in order, and the decoded shape."""
        digest = hashlib.sha256(str(self.shape).encode())
        for d in self.digests:
            digest.update(d)
        return digest.digest()

    def tf_images(self, indices):
        """A tf.data map function: an index tensor -> that image as a uint8 tensor."""
        from ..core.framework import tf

        def read(i):
            if _closing.is_set():  # the stage is ending: what is left in flight returns at once
                return np.zeros(self.shape[1:], np.uint8)
            try:
                return self.decode(int(i))
            except PipelineError as exc:  # tf.data re-raises it as its own error; decode_errors() finds it
                raise ValueError(f"{FAILED}{exc}\n") from None

        _streamed.set()
        image = tf.numpy_function(read, [indices], tf.uint8, stateful=False)
        image.set_shape(self.shape[1:])
        return image


def hold(x, cache: str):
    """``x`` as it should be held: decoded in memory for ``memory``, or for ``auto`` when it is small."""
    if isinstance(x, ImageFiles) and (cache == "memory" or (cache == "auto" and x.nbytes <= AUTO_MEMORY_BYTES)):
        return x.cached()
    return x


def failure(exc: BaseException) -> PipelineError | None:
    """The one-line error a decoding failure inside tf.data carries, or None for any other error."""
    text = str(exc)
    if FAILED not in text:
        return None
    return PipelineError(text.split(FAILED, 1)[1].split("\n", 1)[0].strip())


class decode_errors:
    """Around a stage: an image that fails to decode while streaming becomes its one-line PipelineError.
    And whatever ends the stage early (that error, Ctrl-C, SIGTERM), the decoding calls tf.data still
    has in flight are drained first: an iterator destroyed while they wait for the GIL (at the
    interpreter's exit, say) would wait for them forever."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> None:
        if exc is None:
            return None
        if _streamed.is_set():
            _closing.set()
            try:
                time.sleep(DRAIN_SECONDS)  # lets the calls in flight take the GIL and return
            finally:
                _streamed.clear()
                _closing.clear()
        found = failure(exc) if not isinstance(exc, PipelineError) else None
        if found is None:
            return None
        raise found from None
