import dataclasses
import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.errors import PipelineError
from pipeline.core.params import DataParams, load_params
from pipeline.data import fashion_mnist, load_dataset, split_train_val
from pipeline.data.fashion_mnist import FILES, IMAGES_MAGIC, LABELS_MAGIC


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_fashion(directory, n_train=60, n_test=20, size=28, gz=True, **replace):
    """Four IDX files of random data; ``replace`` swaps in raw bytes for a named file."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 255, (n_train, size, size)), "y_train": np.arange(n_train) % 10,
              "x_test": rng.integers(0, 255, (n_test, size, size)), "y_test": np.arange(n_test) % 10}
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in FILES.items():
        data = replace.get(key) or idx_bytes(arrays[key], IMAGES_MAGIC if key.startswith("x") else LABELS_MAGIC)
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)
    return directory


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "raw"])
def test_reads_idx_files_and_splits(tmp_path, gz):
    write_fashion(tmp_path / "d", n_train=100, gz=gz)
    data = load_dataset(DataParams(dir=str(tmp_path / "d"), val_fraction=0.2), seed=1)
    assert data.input_shape == (28, 28, 1)
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (80, 20, 20)


def test_idx_files_are_decoded_once_per_process_until_one_changes(tmp_path):
    directory = write_fashion(tmp_path / "d")
    first = fashion_mnist.read_directory(directory)
    again = fashion_mnist.read_directory(directory)
    assert again["x_train"] is first["x_train"]  # not decoded again
    with pytest.raises(ValueError, match="read-only"):
        first["x_train"][0, 0, 0] = 1  # so no caller can change what the next one gets
    write_fashion(directory, n_train=70)
    assert len(fashion_mnist.read_directory(directory)["x_train"]) == 70
    (directory / "train-labels-idx1-ubyte.gz").write_bytes(b"damaged")
    with pytest.raises(PipelineError, match="train-labels"):
        fashion_mnist.read_directory(directory)


def test_validation_split_is_deterministic_stratified_and_disjoint():
    x = np.arange(1000)[:, None]
    y = np.arange(1000) % 10
    a = split_train_val(x, y, 0.1, seed=3)
    b = split_train_val(x, y, 0.1, seed=3)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    x_train, _, x_val, y_val = a
    assert np.bincount(y_val).tolist() == [10] * 10
    assert not set(x_train[:, 0]) & set(x_val[:, 0])


@pytest.mark.bad_input("dataset files")
@pytest.mark.parametrize("replace, message", [
    ({"x_train": b"\x00\x00\x08\x03\x00\x00"}, "truncated"),
    ({"x_train": idx_bytes(np.zeros((60, 28, 28)), 0x0803)[:-100]}, "truncated or corrupt"),
    ({"y_train": idx_bytes(np.zeros(60), 0x0803)}, "wrong magic number"),
    ({"y_train": idx_bytes(np.zeros(59), LABELS_MAGIC)}, "60 images but 59 labels"),
    ({"x_test": idx_bytes(np.zeros((20, 27, 27)), IMAGES_MAGIC)}, "test images are"),
])
def test_bad_idx_files_are_refused_with_a_clear_message(tmp_path, replace, message):
    write_fashion(tmp_path / "d", **replace)
    with pytest.raises(PipelineError, match=message):
        load_dataset(DataParams(dir=str(tmp_path / "d")), seed=0)


@pytest.mark.bad_input("dataset files")
def test_truncated_gzip_is_refused(tmp_path):
    directory = write_fashion(tmp_path / "d")
    path = directory / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(PipelineError, match="corrupt or truncated"):
        load_dataset(DataParams(dir=str(directory)), seed=0)


def test_sources_are_tried_in_order(tmp_path, monkeypatch):
    env_dir, cache_dir = write_fashion(tmp_path / "env"), write_fashion(tmp_path / "cache", n_train=30)
    monkeypatch.setattr(fashion_mnist, "keras_cache_dir", lambda: cache_dir)
    monkeypatch.setenv(fashion_mnist.ENV_VAR, str(env_dir))
    assert fashion_mnist.locate(None) == env_dir
    monkeypatch.delenv(fashion_mnist.ENV_VAR)
    assert fashion_mnist.locate(None) == cache_dir


def test_no_source_names_every_way_to_get_the_data(tmp_path, monkeypatch):
    monkeypatch.delenv(fashion_mnist.ENV_VAR, raising=False)
    monkeypatch.setattr(fashion_mnist, "keras_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setattr(fashion_mnist, "_download_with_keras", lambda: False)
    with pytest.raises(PipelineError) as info:
        fashion_mnist.locate(None)
    for way in ("data.dir", fashion_mnist.ENV_VAR, "Keras cache", "dataset-fashion-mnist", "make data",
                "network"):
        assert way in str(info.value)


@pytest.mark.bad_input("dataset files")
def test_configured_dir_without_files_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(PipelineError, match="does not hold the four Fashion-MNIST IDX files"):
        fashion_mnist.locate(str(tmp_path))


def write_folder(root, classes=("cat", "dog"), per_class=10, size=(20, 16)):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def test_image_folder_is_resized_and_split_per_class(tmp_path):
    root = write_folder(tmp_path / "imgs")
    data = load_dataset(DataParams(source="folder", dir=str(root), image_size=[12, 12], channels=3,
                                   val_fraction=0.2, test_fraction=0.2), seed=0)
    assert data.input_shape == (12, 12, 3)
    assert data.class_names == ["cat", "dog"]
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 20
    assert sorted(set(data.y_test.tolist())) == [0, 1]


@pytest.mark.bad_input("image folders")
@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "cat" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken"), "not a readable image"),
    (lambda root: (root / "cat" / "4.png").write_bytes(b"not a png"), "not an image"),
    (lambda root: (root / "dog" / "notes.png").write_text("hi"), "not an image"),
    (lambda root: (root / "empty").mkdir(), "holds no images"),
])
def test_bad_image_folders_are_refused(tmp_path, damage, message):
    root = write_folder(tmp_path / "imgs")
    damage(root)
    with pytest.raises(PipelineError, match=message):
        load_dataset(DataParams(source="folder", dir=str(root)), seed=0)


@pytest.mark.bad_input("image folders")
def test_a_single_class_folder_is_refused(tmp_path):
    root = write_folder(tmp_path / "imgs", classes=("only",))
    with pytest.raises(PipelineError, match="a classifier here has 2 to 256"):
        load_dataset(DataParams(source="folder", dir=str(root)), seed=0)


def folder_params(root, **extra):
    return DataParams(source="folder", dir=str(root), **extra)


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path, cache):
    root = write_folder(tmp_path / "imgs")
    ramp = (np.arange(20 * 16, dtype=np.uint16).reshape(20, 16) * 200)  # 0 .. 63,800 of 65,535
    Image.fromarray(ramp).save(root / "cat" / "0.png")
    assert Image.open(root / "cat" / "0.png").mode == "I;16"
    data = load_dataset(folder_params(root, image_size=[20, 16], test_fraction=0.3, cache=cache), seed=0)
    assert (data.x_train.pixels is None) == (cache == "none")
    expected = np.round(ramp / 257).astype(np.uint8)[..., None]
    x = np.concatenate([data.x_train, data.x_val, data.x_test])
    assert any(np.array_equal(image, expected) for image in x)


def test_images_are_recognised_by_content_not_by_name(tmp_path):
    root = write_folder(tmp_path / "imgs")
    (root / "cat" / "0.jpg").rename(root / "cat" / "photo.data")  # a JPEG without its extension
    data = load_dataset(folder_params(root), seed=0)
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 20


@pytest.mark.bad_input("image folders")
@pytest.mark.parametrize("cache", ["memory", "none"])
def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path, cache):
    root = write_folder(tmp_path / "imgs")
    Image.new("1", (20000, 20000)).save(root / "cat" / "bomb.png")  # 20000x20000 declared, ~50 KB on disk
    with pytest.raises(PipelineError, match="decompression bomb"):  # streamed too: headers are read on load
        load_dataset(folder_params(root, cache=cache), seed=0)


def test_a_streamed_folder_gives_the_pixels_batches_and_fingerprint_of_the_folder_held_in_memory(tmp_path,
                                                                                                monkeypatch):
    from pipeline.data import stream
    from pipeline.training.fit import as_dataset

    root = write_folder(tmp_path / "imgs", per_class=12)
    held = load_dataset(folder_params(root, channels=3, image_size=[12, 10], cache="memory"), seed=0)
    streamed = load_dataset(folder_params(root, channels=3, image_size=[12, 10], cache="none"), seed=0)
    assert held.x_train.pixels is not None and streamed.x_train.pixels is None
    assert held.fingerprint == streamed.fingerprint and held.describe() == streamed.describe()
    for a, b in ((held.x_train, streamed.x_train), (held.x_val, streamed.x_val), (held.x_test, streamed.x_test)):
        assert np.array_equal(np.asarray(a), np.asarray(b)) and np.asarray(a).shape == (len(a), 12, 10, 3)
    batches = [[(x.numpy(), y.numpy()) for x, y in as_dataset(d.x_train, d.y_train, 5, shuffle_seed=3)]
               for d in (held, streamed)]
    assert len(batches[0]) == len(batches[1]) == -(-len(held.y_train) // 5)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(*batches))
    assert load_dataset(folder_params(root), seed=0).x_train.pixels is not None  # auto: small enough to hold
    monkeypatch.setattr(stream, "AUTO_MEMORY_BYTES", 100)
    assert load_dataset(folder_params(root), seed=0).x_train.pixels is None


@pytest.mark.bad_input("image folders")
def test_an_image_that_breaks_while_it_streams_is_one_line_naming_it(tmp_path):
    from pipeline.data.stream import decode_errors
    from pipeline.training.fit import as_dataset

    root = write_folder(tmp_path / "imgs", per_class=12)
    data = load_dataset(folder_params(root, channels=3, cache="none"), seed=0)
    broken = Path(data.x_train.paths[-1])
    broken.write_bytes(broken.read_bytes()[:80])  # truncated after its header was read
    with pytest.raises(PipelineError, match=rf"^{broken}: not a readable image \(OSError\)$"):
        with decode_errors():
            for _ in as_dataset(data.x_train, data.y_train, 4):
                pass


@pytest.mark.bad_input("image folders")
@pytest.mark.parametrize("per_class, message", [
    (1, "class 'cat' has 0 training example"),
    (2, "class 'cat' has 0 training example"),
    (6, "class 'cat' has 4 training example"),
])
def test_a_class_with_too_few_images_is_refused_naming_it(tmp_path, per_class, message):
    root = write_folder(tmp_path / "imgs", per_class=per_class)
    with pytest.raises(PipelineError, match=message):
        load_dataset(folder_params(root), seed=0)


@pytest.mark.bad_input("dataset files")
def test_a_limit_that_leaves_a_class_out_of_a_split_is_refused(tmp_path):
    write_fashion(tmp_path / "d", n_train=100)
    with pytest.raises(PipelineError, match="test example.*data.limit_test"):
        load_dataset(DataParams(dir=str(tmp_path / "d"), limit_test=10), seed=0)


@pytest.mark.bad_input("image folders")
def test_images_too_small_to_set_the_input_size_are_refused(tmp_path):
    root = write_folder(tmp_path / "imgs", size=(4, 4))
    with pytest.raises(PipelineError, match="4x4 pixels; without data.image_size"):
        load_dataset(folder_params(root), seed=0)


def test_adding_images_to_a_folder_moves_none_of_the_others_between_splits(tmp_path):
    def splits(data, root):
        found = {}
        for name, x in (("train", data.x_train), ("val", data.x_val), ("test", data.x_test)):
            for image in x:
                found[image.tobytes()] = name
        return found

    root = write_folder(tmp_path / "imgs", per_class=40)
    before = splits(load_dataset(folder_params(root, channels=3), seed=0), root)
    rng = np.random.default_rng(1)
    for i in range(40, 80):
        Image.fromarray(rng.integers(0, 255, (20, 16, 3), dtype=np.uint8)).save(root / "cat" / f"{i}.png")
    after = splits(load_dataset(folder_params(root, channels=3), seed=0), root)
    assert all(after[image] == split for image, split in before.items())
    assert {"train", "val", "test"} == set(after.values())


def write_manifest(tmp_path, header, rows):
    root = write_folder(tmp_path / "imgs", per_class=15)
    lines = [header] + [",".join(r) for r in rows]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return DataParams(source="manifest", manifest=str(tmp_path / "labels.csv"), dir=str(root), channels=3)


def manifest_rows(columns=1):
    colours = ["red", "blue", "green"]
    return [[f"{kind}/{i}.{'png' if i % 2 else 'jpg'}", *[colours[(i + k) % 3] for k in range(columns)]]
            for kind in ("cat", "dog") for i in range(15)]


def test_a_manifest_with_one_label_column_or_a_column_per_task(tmp_path):
    single = load_dataset(write_manifest(tmp_path / "a", "path,colour", manifest_rows()), seed=0)
    assert single.class_names == ["blue", "green", "red"] and single.tasks == () and single.y_train.ndim == 1
    assert len(single.y_train) + len(single.y_val) + len(single.y_test) == 30
    multi = load_dataset(write_manifest(tmp_path / "b", "path,front,back", manifest_rows(2)), seed=0)
    assert multi.tasks == ("front", "back") and multi.y_train.shape[1] == 2
    one = load_dataset(dataclasses.replace(write_manifest(tmp_path / "c", "path,front,back", manifest_rows(2)),
                                           tasks=["back"]), seed=0)
    assert one.tasks == ("back",) and one.y_train.shape[1] == 1
    spreadsheet = write_manifest(tmp_path / "d", "\ufeffpath,colour", manifest_rows())  # a byte-order mark first
    assert load_dataset(spreadsheet, seed=0).class_names == ["blue", "green", "red"]


@pytest.mark.bad_input("manifests")
def test_a_manifest_that_is_not_text_or_not_there_is_refused(tmp_path):
    params = write_manifest(tmp_path, "path,label", manifest_rows())
    Path(params.manifest).write_bytes(b"path,label\ncat/0.jpg,r\xffed\n")  # not UTF-8
    with pytest.raises(PipelineError, match="cannot read it as UTF-8 CSV"):
        load_dataset(params, seed=0)
    with pytest.raises(PipelineError, match="data.manifest .*nothere.csv: not found"):
        load_dataset(dataclasses.replace(params, manifest=str(tmp_path / "nothere.csv")), seed=0)
    with pytest.raises(PipelineError, match="is read only with data.source manifest"):
        load_params("params.yaml", ["data.manifest=x.csv"])


@pytest.mark.bad_input("manifests")
@pytest.mark.parametrize("header, edit, message", [
    ("file,label", None, "the first line must be a header 'path,<label column>"),
    ("path", None, "the first line must be a header"),
    ("path,a b,c", None, "cannot name a task"),
    ("path,label", lambda rows: rows.append(["cat/0.jpg", "red"]), "is listed twice"),
    ("path,label", lambda rows: rows.append(["cat/nope.png", "red"]), "not found"),
    ("path,label", lambda rows: rows.append(["cat/0.jpg"]), "line 32: expected 2 non-empty cells"),
    ("path,label", lambda rows: rows.append(["../labels.csv", "red"]), "is not an image"),
    ("path,label", lambda rows: rows.__setitem__(slice(None), [[r[0], "one"] for r in rows]), "1 class(es)"),
    ("path,front,back", lambda rows: rows[0].__setitem__(2, "purple"), "task back's classes"),
])
def test_bad_manifests_are_refused_naming_the_line(tmp_path, header, edit, message):
    rows = manifest_rows(header.count(",") if header.startswith("path,") else 1)
    if edit:
        edit(rows)
    with pytest.raises(PipelineError, match=re.escape(message)):
        load_dataset(write_manifest(tmp_path, header, rows), seed=0)


def test_task_weights_for_a_column_the_manifest_does_not_have_are_refused(tmp_path):
    from pipeline.core.params import TrainParams
    from pipeline.training.fit import fit_target
    from pipeline import architectures

    data = load_dataset(write_manifest(tmp_path, "path,front,back", manifest_rows(2)), seed=0)
    model = architectures.build("tiny", data.input_shape, data.num_classes, tasks=data.tasks)
    with pytest.raises(PipelineError, match="train.task_weights.middle: not a task of the data; its tasks: front, back"):
        fit_target(model, data, TrainParams(task_weights={"middle": 1.0}), 1e-3)
