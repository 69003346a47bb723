"""`mobiledeploy quant-compare`: every way to quantize one config's model, in one run and one table.

From the config's trained model (its shrunk one with ``structured.enabled``) and its pruned model:
post-training int8 (PTQ), int16x8 and ai-edge-quantizer's recipes on the trained model; QAT; the pruned
model through PTQ and PQAT; the pruned model clustered (zeros kept) through PTQ and PCQAT. Fine-tuning
uses the config's ``quantize`` and ``cluster`` sections (their epochs, learning rates, clusters) whether or
not the config turns those stages on, without a teacher. Every file is measured by the one measurement
of ``validate`` (test accuracy, bytes, gzipped bytes, p50 at one thread, and the zeros and distinct
values read from the file itself), one after another at the end."""

from __future__ import annotations

import dataclasses
import time
from contextlib import ExitStack
from pathlib import Path

from ..compression.clustering import cluster_model
from ..compression.qat import qat_model
from ..core.artifacts import OUT_DIR, atomic_path, chain, check_writable, require, write_bytes, write_json, write_text
from ..core.errors import PipelineError
from ..core.keras_io import load_model
from ..core.params import Params
from ..core.tables import count, markdown_table, pct
from ..data import load_dataset
from ..export.measure import measure
from ..export.tflite import Exporter, representative_data
from ..stages.base import fed, refuse_foreign

COMPARE_DIR = OUT_DIR / "quant_compare"
# (row, which model, format): the files of the table, in its order
ON_TRAINED = (("float32 (baseline)", "float32"), ("PTQ int8", "int8"), ("PTQ int16x8", "int16x8"),
              ("ai-edge-quantizer int8", "aeq_int8"), ("ai-edge-quantizer int16x8", "aeq_int16x8"),
              ("ai-edge-quantizer dynamic int8", "aeq_dynamic_int8"),
              ("ai-edge-quantizer weight-only int8", "aeq_weight_only_int8"))


def write_model(path: Path, model) -> None:
    with atomic_path(path) as tmp:
        model.save(tmp)


def quant_compare(params: Params, out_dir: Path = COMPARE_DIR) -> Path:
    if not params.prune.enabled:
        raise PipelineError("quant-compare compares pruned rows too: it needs prune.enabled (the config's pruned model)")
    check_writable(out_dir / "quant_compare.json")  # before any fine-tuning
    models = chain(params)
    trained_file = models.get("shrink", models["train"])
    files = [require(trained_file, "mobiledeploy shrink" if "shrink" in models else "mobiledeploy train"),
             require(models["prune"], "mobiledeploy prune")]
    for path in files:
        refuse_foreign(path, params)
    start = time.perf_counter()
    trained, pruned = (load_model(path) for path in files)
    data = fed(params, trained, load_dataset(params.data, params.seed), files[0])
    q, seed = params.quantize, params.seed

    def aware(model, scheme: str):
        print(f"quant-compare: {scheme} on {model.name}, {q.epochs} epochs", flush=True)
        return qat_model(model, data, dataclasses.replace(q, aware=scheme), seed, train_p=params.train)[0]

    print(f"quant-compare: clustering {files[1]} ({params.cluster.clusters} clusters, zeros kept), "
          f"{params.cluster.epochs} epochs", flush=True)
    # saved and reloaded as the cluster stage's model is: PCQAT finds each kernel by the name it is saved under
    clustered_file = out_dir / "clustered.keras"
    write_model(clustered_file, cluster_model(pruned, data, params.cluster, seed, True, train_p=params.train)[0])
    clustered = load_model(clustered_file)
    rows = [(label, "trained", trained, fmt) for label, fmt in ON_TRAINED]
    rows += [("QAT int8", "trained", aware(trained, "qat"), "int8"),
             ("prune → PTQ int8", "pruned", pruned, "int8"), ("PQAT int8", "pruned", aware(pruned, "pqat"), "int8"),
             ("prune → cluster → PTQ int8", "pruned + clustered", clustered, "int8"),
             ("PCQAT int8", "pruned + clustered", aware(clustered, "pcqat"), "int8")]
    representative = representative_data(data, params.convert, seed)
    paths, exporters = [], {}
    with ExitStack() as stack:  # each model exported once for all its rows (seven rows of the trained one)
        for i, (label, _, model, fmt) in enumerate(rows):  # converted, then all measured one after another
            if id(model) not in exporters:
                exporters[id(model)] = stack.enter_context(Exporter(model))
            paths.append(out_dir / f"{i:02d}.{fmt}.tflite")
            write_bytes(paths[-1], exporters[id(model)].convert(fmt, representative))
    results = []
    for (label, source, _, fmt), path in zip(rows, paths):
        entry = measure(path, data, params.validate, threads=[1])
        weights = entry["file_weights"]
        results.append({"row": label, "model": source, "format": fmt, "file": path.name,
                        "accuracy": entry["accuracy"], "bytes": entry["size_bytes"], "gzip_bytes": entry["gzip_bytes"],
                        "p50_ms": entry["latency_ms"]["p50"], "zero_share": weights["zero_share"],
                        "max_unique_per_channel": weights["max_unique_per_channel"]})
        if "tasks" in entry:  # a multi-task model: its accuracy above is the mean over these
            results[-1]["tasks"] = {task: found["accuracy"] for task, found in entry["tasks"].items()}
        print(f"quant-compare: {label}: {entry['accuracy']:.4f}, {entry['gzip_bytes']:,} gzip bytes, "
              f"p50 {entry['latency_ms']['p50']:.3f} ms", flush=True)
    result = {"config": params.name, "trained": files[0].as_posix(), "pruned": files[1].as_posix(),
              "quantize_epochs": q.epochs, "cluster": {"clusters": params.cluster.clusters,
                                                       "epochs": params.cluster.epochs},
              "latency_runs": params.validate.latency_runs, "rows": results,
              "wall_seconds": round(time.perf_counter() - start, 1)}
    write_json(out_dir / "quant_compare.json", result)
    write_text(out_dir / "quant_compare.md", markdown(result))
    print(f"quant-compare: {len(results)} files in {result['wall_seconds']:.0f}s -> {out_dir / 'quant_compare.md'}",
          flush=True)
    return out_dir / "quant_compare.json"


def markdown(result: dict) -> str:
    rows = {r["row"]: r for r in result["rows"]}
    base = result["rows"][0]
    intro = (f"# Quantization compared on {result['config']}\n\nFrom {result['trained']} and {result['pruned']}; "
             f"QAT, PQAT and PCQAT fine-tune {result['quantize_epochs']} epochs, clustering "
             f"{result['cluster']['clusters']} clusters for {result['cluster']['epochs']} epochs. Accuracy in % "
             f"(test set); *vs float32* in points; *smaller*: float32's gzipped bytes over the file's; latency: one "
             f"image, 1 thread, median of {result['latency_runs']} runs. *Zeros* and *distinct values* (the most in "
             f"one output channel of one weight tensor) are read from the file.\n\n")
    tasks = list(base.get("tasks", {}))
    table = markdown_table(
        ["quantization", "format", "accuracy" + (" (mean)" if tasks else ""), *tasks, "vs float32", "bytes",
         "gzip bytes", "smaller", "p50 ms", "zeros", "distinct values"],
        [[r["row"], f"`{r['format']}`", pct(r["accuracy"]), *(pct(r["tasks"][task]) for task in tasks),
          f"{100 * (r['accuracy'] - base['accuracy']):+.2f}", count(r["bytes"]), count(r["gzip_bytes"]),
          f"{base['gzip_bytes'] / r['gzip_bytes']:.1f}×", f"{r['p50_ms']:.3f}", f"{pct(r['zero_share'], 1)}%",
          count(r["max_unique_per_channel"])]
         for r in result["rows"]])
    ptq, qat = rows["PTQ int8"], rows["QAT int8"]
    notes = [f"- QAT int8 against PTQ int8: {100 * (qat['accuracy'] - ptq['accuracy']):+.2f} points; PTQ loses "
             f"{100 * (base['accuracy'] - ptq['accuracy']):.2f} against float32.",
             f"- PQAT keeps {pct(rows['PQAT int8']['zero_share'], 1)}% zeros in its file (the pruned model's PTQ file: "
             f"{pct(rows['prune → PTQ int8']['zero_share'], 1)}%).",
             f"- Wall time of the whole comparison: {result['wall_seconds']:.0f} s."]
    return intro + table + "\n" + "\n".join(notes) + "\n"
