"""augment: seeded random shifts, flips and erasing of training batches only, anew each epoch; with the
recipe keys, through training and fine-tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT, SMOKE, fails_cleanly, new_project, run_cli, tiny_dataset

from pipeline.core.errors import PipelineError
from pipeline.core.params import AugmentParams, ParamsError, load_params
from pipeline.training.fit import as_dataset, split_dataset

SIZE = 16


def dots(n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Black images with one pixel of value 100 + i at (6, 5); the label i says which image it is."""
    x = np.zeros((n, SIZE, SIZE, 1), np.uint8)
    x[:, 6, 5, 0] = 100 + np.arange(n)
    return x, np.arange(n)


def epochs(p: AugmentParams, seed: int = 1, count: int = 2, x=None, y=None) -> list[dict[int, np.ndarray]]:
    """Each epoch's augmented images keyed by label, from one pipeline iterated ``count`` times."""
    if x is None:
        x, y = dots()
    ds = as_dataset(x, y, 8, shuffle_seed=seed, augment=p)
    return [{int(label): image[..., 0] for images, labels in ds for image, label in zip(images.numpy(), labels.numpy())}
            for _ in range(count)]


def test_shift_moves_each_image_by_whole_pixels_within_the_range_anew_each_epoch():
    first, second = epochs(AugmentParams(shift=2))
    moves = []
    for seen in (first, second):
        for label, image in seen.items():
            (row, col), = np.argwhere(image > 0)
            assert image[row, col] == 100 + label  # moved, not interpolated
            assert abs(row - 6) <= 2 and abs(col - 5) <= 2
            moves.append((row - 6, col - 5))
    assert len(set(moves)) >= 10  # most of the 25 moves occur among 64 images
    assert any(not np.array_equal(first[k], second[k]) for k in first)  # the next epoch draws anew


def test_flip_mirrors_about_half_of_the_images():
    seen = epochs(AugmentParams(flip=True), count=1)[0]
    cols = [int(np.argwhere(image > 0)[0][1]) for image in seen.values()]
    assert set(cols) == {5, SIZE - 1 - 5}
    assert 8 <= cols.count(5) <= 24


def test_erase_fills_one_rectangle_of_2_to_25_percent_with_noise():
    x = np.full((32, SIZE, SIZE, 1), 7, np.uint8)
    seen = epochs(AugmentParams(erase=1.0), count=1, x=x, y=np.arange(32))[0]
    for image in seen.values():
        rows, cols = np.nonzero(image != 7)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert 0.02 * SIZE * SIZE * 0.5 <= box <= 0.25 * SIZE * SIZE * 1.5  # rounding of the sides
        assert np.mean(image != 7) > 0
    untouched = epochs(AugmentParams(erase=0.0, shift=0), count=1, x=x, y=np.arange(32))[0]
    assert all((image == 7).all() for image in untouched.values())


def test_the_same_seed_gives_the_same_images_and_another_seed_others():
    p = AugmentParams(shift=3, flip=True, erase=0.5)
    a, b, c = epochs(p, seed=5, count=1)[0], epochs(p, seed=5, count=1)[0], epochs(p, seed=6, count=1)[0]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_only_the_training_split_is_augmented():
    data = tiny_dataset().with_augment(AugmentParams(shift=2, flip=True, erase=1.0))
    plain = tiny_dataset()
    for split in ("val", "train"):
        changed = [not np.array_equal(a.numpy(), b.numpy()) for (a, _), (b, _) in
                   zip(split_dataset(data, split, 16, 3 if split == "train" else None),
                       split_dataset(plain, split, 16, 3 if split == "train" else None))]
        assert any(changed) == (split == "train"), split


def test_augmentation_that_cannot_hold_is_refused_in_one_line(tmp_path):
    x, y = dots()
    with pytest.raises(PipelineError, match=r"augment.shift 8: a shift must stay under half of the 16x16 images' "
                                            r"smaller side.*\(try 2\)"):
        as_dataset(x, y, 8, shuffle_seed=1, augment=AugmentParams(shift=8))
    with pytest.raises(ParamsError, match="augment.flip: multifashion's labels name places"):
        load_params(ROOT / "params.yaml", ["data.source=multifashion", "augment.flip=true"])
    with pytest.raises(ParamsError, match="augment.erase"):
        load_params(ROOT / "params.yaml", ["augment.erase=1.5"])


@pytest.mark.e2e
def test_training_and_fine_tuning_augment_and_follow_the_recipe_keys(tmp_path):
    project = new_project(tmp_path)
    small = ("--set", "data.limit_train=600", "--set", "train.epochs=2", "--set", "train.warmup_epochs=1")
    augment = ("--set", "augment.shift=2", "--set", "augment.flip=true", "--set", "augment.erase=0.5",
               "--set", "train.label_smoothing=0.1", "--set", "train.weight_decay=0.0001", "--set", "train.ema=0.9")
    fails_cleanly(run_cli("train", *SMOKE, *small, "--set", "augment.shift=14", cwd=project, check=False),
                  "augment.shift 14: a shift must stay under half of the 28x28 images' smaller side")
    assert not (project / "models" / "smoke.keras").exists()
    out = run_cli("train", *SMOKE, *small, *augment, cwd=project)
    assert "augmentation: shift 2, flip, erase 0.5" in out.stdout
    run_cli("prune", *SMOKE, *small, *augment, cwd=project)
    for artefact in ("smoke.keras", "smoke.pruned.keras"):
        record = json.loads((project / "models" / f"{artefact}.json").read_text())
        assert record["params"]["augment"] == {"shift": 2, "flip": True, "erase": 0.5}, artefact
    trained = json.loads((project / "models" / "smoke.keras.json").read_text())
    assert [trained["params"]["train"][key] for key in ("label_smoothing", "weight_decay", "ema")] == [0.1, 1e-4, 0.9]
    pruned = json.loads((project / "models" / "smoke.pruned.keras.json").read_text())
    assert pruned["params"]["recipe"] == {"label_smoothing": 0.1, "weight_decay": 1e-4}
