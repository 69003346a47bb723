"""Image folders streamed through tf.data against the same folder decoded into memory.

    python benchmarks/streaming.py write DIR --count 100000 --size 96
        writes an image folder of COUNT RGB JPEG files (Fashion-MNIST's images, enlarged to SIZE x
        SIZE and tinted a random colour each; one subfolder per class; a file once written is kept,
        so a second run only adds what is missing)
    python benchmarks/streaming.py measure DIR [DIR...] --cache none --cache memory [--epochs 1]
        trains the tiny model on each folder with each data.cache setting, each run a `mobiledeploy
        train` process of its own in a throw-away project, and prints one markdown row per run: images,
        decoded size, wall time, training images per second (from the train record's fit time), the
        process's peak resident memory (from the kernel's rusage of the finished child), and the
        highest of the once-a-second samples in each half of the run (does memory grow with time?)

The folders hold about 30% more images than Fashion-MNIST has (70,000): past that, an image is
written again with another tint, so train and test may share a garment. The accuracy column is for
seeing that training happened, not for comparing models.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write(folder: Path, count: int, size: int, seed: int = 0) -> None:
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from pipeline.data.fashion_mnist import load_fashion_mnist

    x, y, x_test, y_test, names, _ = load_fashion_mnist(None)
    images, labels = np.concatenate([x, x_test])[..., 0], np.concatenate([y, y_test])
    tints = np.random.default_rng(seed).uniform(0.3, 1.0, size=(count, 3))
    for name in names:
        (folder / name.replace("/", "-")).mkdir(parents=True, exist_ok=True)
    start, written = time.perf_counter(), 0
    for i in range(count):
        k = i % len(images)
        path = folder / names[labels[k]].replace("/", "-") / f"{i:06d}.jpg"
        if path.exists():
            continue
        grey = np.asarray(Image.fromarray(images[k]).resize((size, size), Image.BILINEAR), np.float32)
        Image.fromarray((grey[..., None] * tints[i]).astype(np.uint8), "RGB").save(path, quality=90)
        written += 1
        if written % 10_000 == 0:
            print(f"write: {written:,} images ({time.perf_counter() - start:.0f}s)", flush=True)
    print(f"write: {folder} holds {count:,} images of {size}x{size}x3 ({written:,} written now)", flush=True)


def sample_rss(pid: int, samples: list[int]) -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    while True:
        try:
            samples.append(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page)
        except (OSError, IndexError, ValueError):
            return
        time.sleep(1)


def measure(folder: Path, cache: str, epochs: int, batch: int, env: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yaml"
        config.write_text(json.dumps({  # JSON is YAML
            "name": "bench", "seed": 0,
            "data": {"source": "folder", "dir": str(folder.resolve()), "channels": 3, "cache": cache},
            "model": {"architecture": "tiny"}, "train": {"epochs": epochs, "batch_size": batch}}))
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", "--params", str(config)], cwd=tmp,
                                env={**os.environ, "PYTHONPATH": str(ROOT), **env})
        samples: list[int] = []  # resident pages every second, to see whether memory grows with time
        sampler = threading.Thread(target=sample_rss, args=(proc.pid, samples), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"measure: training on {folder} with data.cache {cache} failed")
        record = json.loads((Path(tmp) / "models" / "bench.keras.json").read_text())
    metrics, shape = record["metrics"], record["input_shape"]
    images = sum(1 for _ in folder.rglob("*.jpg"))
    return {"folder": folder.name, "images": images, "decoded_gb": images * int(np.prod(shape)) / 1e9,
            "cache": cache, "wall_s": wall, "fit_s": metrics["fit_seconds"],
            "images_per_s": metrics["train_images_per_second"], "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,
            "rss_halves_gb": [max(half, default=0) / 1e9 for half in (samples[:len(samples) // 2],
                                                                     samples[len(samples) // 2:])],
            "test_accuracy": metrics["test_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write")
    w.add_argument("folder", type=Path)
    w.add_argument("--count", type=int, default=100_000)
    w.add_argument("--size", type=int, default=96)
    m = sub.add_parser("measure")
    m.add_argument("folders", type=Path, nargs="+")
    m.add_argument("--cache", action="append", choices=["none", "memory", "auto"])
    m.add_argument("--epochs", type=int, default=1)
    m.add_argument("--batch", type=int, default=128)
    m.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for the training process (e.g. MALLOC_ARENA_MAX=2)")
    args = parser.parse_args()
    if args.command == "write":
        if not 1 <= args.count <= 10_000_000 or not 8 <= args.size <= 1024:
            raise SystemExit("write: --count must be 1 to 10,000,000 and --size 8 to 1024")
        write(args.folder, args.count, args.size)
        return
    env = dict(item.split("=", 1) for item in args.env if "=" in item)
    if len(env) != len(args.env):
        raise SystemExit("measure: --env takes NAME=VALUE")
    print("| folder | images | decoded GB | data.cache | wall s | fit s | train images/s | peak RSS GB | "
          "peak RSS GB, 1st / 2nd half of the run | test acc |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---|---:|")
    for folder in args.folders:
        for cache in args.cache or ["none", "memory"]:
            r = measure(folder, cache, args.epochs, args.batch, env)
            print(f"| {' '.join([r['folder'], *args.env])} | {r['images']:,} | {r['decoded_gb']:.2f} | {r['cache']} | {r['wall_s']:.0f} | "
                  f"{r['fit_s']:.0f} | {r['images_per_s']:,.0f} | {r['peak_rss_gb']:.2f} | "
                  f"{r['rss_halves_gb'][0]:.2f} / {r['rss_halves_gb'][1]:.2f} | {r['test_accuracy']:.4f} |",
                  flush=True)


if __name__ == "__main__":
    main()
