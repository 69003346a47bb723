"""Data augmentation of training batches (the ``augment`` params), inside the tf.data pipeline.

Each batch of training images, still in pixel values (0-255, before the input contract), gets its
own random transformations, drawn from a seed that tf.data hands to the batch: the same seed and
params give the same images, and every epoch draws anew. Validation, test, calibration and ranking
images are never augmented: only the training split of :func:`pipeline.training.fit.split_dataset`.

- ``shift``: each image moves by up to ``shift`` pixels up or down and left or right (the same as
  padding by ``shift`` with zeros and cropping at random), whole pixels, so nothing is interpolated.
- ``flip``: half of the images are mirrored left to right.
- ``erase``: with probability ``erase``, a rectangle of 2-25% of the image (aspect ratio 0.3-3.3)
  is filled with random pixel values (random erasing, Zhong et al. 2017).
"""

from __future__ import annotations

import math

from ..core.errors import PipelineError
from ..core.framework import tf
from ..core.params import AugmentParams

ERASE_AREA = (0.02, 0.25)  # share of the image an erased rectangle covers
ERASE_ASPECT = (0.3, 1 / 0.3)  # its height / width


def describe(p: AugmentParams) -> str:
    """``p`` in a few words for a stage's log line: "shift 2, flip, erase 0.5", or "none"."""
    parts = [f"shift {p.shift}" if p.shift else "", "flip" if p.flip else "", f"erase {p.erase:g}" if p.erase else ""]
    return ", ".join(part for part in parts if part) or "none"


def check(p: AugmentParams, image_shape: tuple[int, ...]) -> None:
    """One line if ``p`` cannot apply to images of ``image_shape`` (height, width, channels)."""
    height, width = image_shape[:2]
    if 2 * p.shift >= min(height, width):
        raise PipelineError(f"augment.shift {p.shift}: a shift must stay under half of the {height}x{width} images' "
                            f"smaller side, or an image can move out of its frame (try {max(1, min(height, width) // 8)})")


def seeded(dataset, seed: int):
    """``dataset``'s elements each paired with a stateless seed for :func:`images`, from a random
    dataset seeded by ``seed`` that draws anew each time ``dataset`` is iterated (each epoch)."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((dataset, seeds))


def images(x, p: AugmentParams, seed):
    """A float batch [n, height, width, channels] of pixels augmented by ``p``, from the stateless ``seed``."""
    shift_seed, flip_seed, erase_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    if p.shift:
        x = _shift(x, p.shift, shift_seed)
    if p.flip:
        mirror = tf.random.stateless_uniform([tf.shape(x)[0]], flip_seed) < 0.5
        x = tf.where(mirror[:, None, None, None], tf.reverse(x, axis=[2]), x)
    if p.erase:
        x = _erase(x, p.erase, erase_seed)
    return x


def _shift(x, most: int, seed):
    n = tf.shape(x)[0]
    moves = tf.cast(tf.random.stateless_uniform([n, 2], seed, minval=-most, maxval=most + 1, dtype=tf.int32),
                    tf.float32)
    one, zero = tf.ones([n, 1]), tf.zeros([n, 1])
    # output pixel (col, row) reads input pixel (col + dx, row + dy); outside the image reads 0
    transforms = tf.concat([one, zero, moves[:, :1], zero, one, moves[:, 1:], zero, zero], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(images=x, transforms=transforms, output_shape=tf.shape(x)[1:3],
                                                 fill_value=0.0, interpolation="NEAREST", fill_mode="CONSTANT")


def _erase(x, probability: float, seed):
    n, height, width = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    area_seed, aspect_seed, place_seed, on_seed, fill_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 5))
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = tf.random.stateless_uniform([n], area_seed, *ERASE_AREA) * h * w
    aspect = tf.exp(tf.random.stateless_uniform([n], aspect_seed, math.log(ERASE_ASPECT[0]),
                                                math.log(ERASE_ASPECT[1])))
    rows = tf.clip_by_value(tf.round(tf.sqrt(area * aspect)), 1.0, h)
    cols = tf.clip_by_value(tf.round(tf.sqrt(area / aspect)), 1.0, w)
    place = tf.random.stateless_uniform([n, 2], place_seed)
    top, left = tf.floor(place[:, 0] * (h - rows + 1)), tf.floor(place[:, 1] * (w - cols + 1))
    on = tf.random.stateless_uniform([n], on_seed) < probability
    r = tf.range(h)[None, :, None]
    c = tf.range(w)[None, None, :]
    inside = ((r >= top[:, None, None]) & (r < (top + rows)[:, None, None]) &
              (c >= left[:, None, None]) & (c < (left + cols)[:, None, None]) & on[:, None, None])
    noise = tf.floor(tf.random.stateless_uniform(tf.shape(x), fill_seed, 0.0, 256.0))
    return tf.where(inside[..., None], noise, x)
