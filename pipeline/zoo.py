"""`mobiledeploy zoo`: train registered variants on the same data and budget, and compare what each
costs on a device (params, MACs, int8 bytes, int8 latency) against what it scores.

Each variant is trained by the train stage (as ``models/zoo_<variant>.keras``, so a finished variant is
not trained again), converted to full-integer int8 under ``tflite_out/zoo/``, and run in LiteRT. All
latencies are measured one after another at the end, so that they share the machine's conditions.
"""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np

from . import litert
from .architectures import resolve
from .artifacts import OUT_DIR, read_record, write_bytes, write_json, write_text
from .convert import convert_file, representative_data
from .costs import model_costs, totals
from .data import load_dataset
from .keras_io import load_model
from .params import Params
from .train import train

ZOO_DIR = OUT_DIR / "zoo"


def variant_params(params: Params, variant: str) -> Params:
    """``params`` with the registered variant's own hyperparameters and a name of its own."""
    model = dataclasses.replace(params.model, architecture=variant, width=None, options={})
    return dataclasses.replace(params, name=f"zoo_{variant}", model=model)


def zoo(params: Params, out_dir: Path = ZOO_DIR) -> Path:
    """Train, convert and measure every variant in ``params.zoo.variants``; write zoo.json/.md/.png."""
    variants = params.zoo.variants
    data = load_dataset(params.data, params.seed)
    representative = representative_data(data.x_train, params.convert.representative_samples, params.seed)
    built = []
    for i, variant in enumerate(variants, start=1):
        print(f"zoo: [{i}/{len(variants)}] {variant}", flush=True)
        path = train(variant_params(params, variant))
        model = load_model(path)
        out = convert_file(model, path, "int8", out_dir / f"{variant}.int8.tflite", params, data, representative,
                           pruned=False)
        built.append((variant, path, out, totals(model_costs(model))))
    v = params.validate
    rows = []
    for variant, path, out, cost in built:
        predictions, (latency,) = litert.evaluate(out, data.x_test, v.batch_size, [1], v.warmup_runs, v.latency_runs)
        (labels,) = predictions.values()
        metrics = read_record(path)["metrics"]
        hp = resolve(variant)
        blob = out.read_bytes()
        rows.append({
            "variant": variant, "block": hp["block"], "pooling": hp["pooling"], "width": hp["width"],
            "params": cost["params"], "macs": cost["macs"],
            "float_accuracy": metrics["test_accuracy"], "int8_accuracy": round(float(np.mean(labels == data.y_test)), 5),
            "int8_bytes": len(blob), "int8_gzip_bytes": len(gzip.compress(blob, 9)), "p50_ms": latency["p50"],
            "p90_ms": latency["p90"], "train_accuracy": metrics["train_accuracy"],
            "val_accuracy": metrics["val_accuracy"], "gap": round(metrics["train_accuracy"] - metrics["val_accuracy"], 5),
            "best_epoch": metrics["best_epoch"], "train_seconds": metrics["train_seconds"],
        })
        print(f"zoo: {variant}: float {rows[-1]['float_accuracy']:.4f}, int8 {rows[-1]['int8_accuracy']:.4f}, "
              f"p50 {latency['p50']:.3f} ms", flush=True)
    result = {"dataset": data.source, "epochs": params.train.epochs, "test_examples": len(data.y_test),
              "latency_runs": v.latency_runs, "variants": rows}
    write_json(out_dir / "zoo.json", result)
    write_text(out_dir / "zoo.md", markdown(result))
    write_bytes(out_dir / "zoo.png", plot(rows))
    print(f"zoo: {len(rows)} variants -> {out_dir / 'zoo.md'}, {out_dir / 'zoo.png'}", flush=True)
    return out_dir / "zoo.json"


def markdown(result: dict) -> str:
    lines = [f"# Architecture comparison\n\n{result['dataset']}, every variant trained for {result['epochs']} "
             f"epochs with the same data, optimiser and seed; test set of {result['test_examples']:,}. "
             "Accuracy in %. Latency: int8, one image, 1 thread, median of "
             f"{result['latency_runs']} runs. Gap: train minus validation accuracy of the kept epoch.\n",
             "| variant | block | pooling | params | MACs | float acc | int8 acc | int8 bytes | p50 ms "
             "| train acc | val acc | gap | train s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["variants"]:
        pooling = r["pooling"] if isinstance(r["pooling"], str) else "/".join(r["pooling"])
        lines.append(f"| {r['variant']} | {r['block']} | {pooling} | {r['params']:,} | {r['macs'] / 1e6:.2f}M "
                     f"| {100 * r['float_accuracy']:.2f} | {100 * r['int8_accuracy']:.2f} | {r['int8_bytes']:,} "
                     f"| {r['p50_ms']:.3f} | {100 * r['train_accuracy']:.2f} | {100 * r['val_accuracy']:.2f} "
                     f"| {100 * r['gap']:.2f} | {r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict]) -> bytes:
    """Int8 test accuracy against MACs (log scale); marker area proportional to int8 bytes. PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    biggest = max(r["int8_bytes"] for r in rows)
    for r in rows:
        ax.scatter(r["macs"], 100 * r["int8_accuracy"], s=40 + 900 * r["int8_bytes"] / biggest, alpha=0.55)
        ax.annotate(f"{r['variant']}\n{r['int8_bytes'] / 1024:.0f} KiB, {r['p50_ms']:.3f} ms",
                    (r["macs"], 100 * r["int8_accuracy"]), textcoords="offset points", xytext=(8, 6), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("multiply-accumulates per image (log scale)")
    ax.set_ylabel("int8 test accuracy (%)")
    ax.set_title("Accuracy against compute; marker area = int8 .tflite bytes")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
