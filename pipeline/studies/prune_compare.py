"""`mobiledeploy prune-compare`: what each kind of pruning buys on one trained model, in one run.

Rows: the unpruned model; TF-MOT magnitude pruning (the prune stage's model); structured pruning (the
shrink stage's model); structured then magnitude pruning; the same structured ratio removed in one
shot; and each ranking criterion removing that ratio in one shot. Every model is converted to
full-integer int8 and run in LiteRT for test accuracy, bytes, gzipped bytes and p50 latency (1 thread),
all measured one after another at the end.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..compression.channels.graph import ChannelGraph
from ..compression.channels.ranking import CRITERIA, rank, refuse_ties
from ..compression.channels.search import one_shot
from ..core.artifacts import (
    OUT_DIR,
    check_writable,
    pruned_path,
    read_record,
    require,
    shrunk_path,
    trained_path,
    write_bytes,
    write_json,
    write_text,
)
from ..core.errors import PipelineError
from ..core.keras_io import load_model
from ..core.params import Params
from ..core.tables import count, markdown_table, pct
from ..data import load_dataset
from ..export.costs import model_costs, totals
from ..export.measure import measure
from ..export.tflite import representative_data, to_tflite
from ..stages.base import fed, refuse_foreign, teacher_for
from ..stages.prune import prune

COMPARE_DIR = OUT_DIR / "prune_compare"


def removed_fraction(before, after) -> float:
    """Share of the prunable channels that ``after`` no longer has."""
    count = lambda m: sum(s.channels for s in ChannelGraph(m).prunable())  # noqa: E731
    return 1 - count(after) / count(before)


def prune_compare(params: Params, out_dir: Path = COMPARE_DIR) -> Path:
    name = params.name
    if params.structured.enabled:
        raise PipelineError("prune-compare sets magnitude pruning of the trained model beside structured pruning; with "
                            "structured.enabled the config prunes the shrunk model instead: run it with "
                            "--set structured.enabled=false")
    check_writable(out_dir / "prune_compare.json")  # before any fine-tuning
    files = [require(trained_path(name), "mobiledeploy train"), require(pruned_path(name), "mobiledeploy prune"),
             require(shrunk_path(name), "mobiledeploy shrink")]
    for path in files:  # all made by these params, from the trained model on disk now
        refuse_foreign(path, params)
    trained, magnitude, shrunk = (load_model(path) for path in files)
    shrunk_file = files[2]
    data = fed(params, trained, load_dataset(params.data, params.seed), files[0])  # augmented as shrink's rounds
    s = params.structured
    rounds = max(h["round"] for h in read_record(shrunk_file)["metrics"]["history"] if h["within_budget"])
    fraction = removed_fraction(trained, shrunk)
    if rounds == 0 or fraction == 0:
        raise PipelineError(f"prune-compare: {shrunk_file} has every channel of {files[0]} (shrink kept round 0), so "
                            "there is no structured cut to compare; make shrink remove channels first (README, "
                            "Structured pruning)")
    left_out = {}  # before any fine-tuning: a criterion that cannot rank this model is left out, and said so
    for criterion in CRITERIA:
        try:
            refuse_ties(trained, rank(trained, criterion, data.contract.apply(data.x_val), data.labels(data.y_val)), criterion)
        except PipelineError as exc:
            print(f"prune-compare: leaving out one shot by {criterion}: {exc}", flush=True)
            left_out[criterion] = str(exc)
    teacher = teacher_for(params, shrunk_file, files[0], data)[0]  # the shrink stage's, for a fair one shot
    both = load_model(prune(params, shrunk_file))  # TF-MOT on the narrower model (reused when current)
    one_shot_params = dataclasses.replace(s, finetune_epochs=max(1, rounds) * s.finetune_epochs)
    structured = f"structured ({s.criterion}, {rounds} round{'s' if rounds != 1 else ''})"
    models = {"unpruned": trained, f"magnitude ({params.prune.final_sparsity:.0%})": magnitude,
              structured: shrunk, "structured + magnitude": both}
    for criterion in (c for c in CRITERIA if c not in left_out):
        print(f"prune-compare: one shot to the structured model's widths, ranked by {criterion}", flush=True)
        models[f"one shot ({criterion})"] = one_shot(trained, data, one_shot_params, params.train, params.seed,
                                                     shrunk, criterion, teacher)
    representative = representative_data(data, params.convert, params.seed)
    v = params.validate
    rows = []
    for i, (label, model) in enumerate(models.items()):
        path = out_dir / f"{i}.int8.tflite"
        write_bytes(path, to_tflite(model, "int8", representative))
        entry = measure(path, data, v, threads=[1])
        cost = totals(model_costs(model))
        rows.append({"model": label, "test_accuracy": entry["accuracy"], "bytes": entry["size_bytes"],
                     "gzip_bytes": entry["gzip_bytes"], "params": cost["params"], "macs": cost["macs"],
                     "sparsity": round(cost["sparsity"], 4), "p50_ms": entry["latency_ms"]["p50"]})
        print(f"prune-compare: {label}: int8 {rows[-1]['test_accuracy']:.4f}, p50 {rows[-1]['p50_ms']:.3f} ms",
              flush=True)
    result = {"model": name, "removed_channels": round(fraction, 4), "latency_runs": v.latency_runs, "rows": rows,
              "left_out": left_out}
    write_json(out_dir / "prune_compare.json", result)
    write_text(out_dir / "prune_compare.md", markdown(result))
    print(f"prune-compare: {len(rows)} models -> {out_dir / 'prune_compare.md'}", flush=True)
    return out_dir / "prune_compare.json"


def markdown(result: dict) -> str:
    base = result["rows"][0]
    intro = (f"# Pruning compared on {result['model']}\n\nAll int8 (full-integer). Structured pruning removed "
             f"{result['removed_channels']:.0%} of the prunable channels; the one-shot rows cut the unpruned model "
             "to the same layer widths at once and fine-tune as long as all rounds together. Accuracy in % (test "
             f"set); latency: one image, 1 thread, median of {result['latency_runs']} runs.\n\n")
    rows = [[r["model"], pct(r["test_accuracy"]), f"{100 * (r['test_accuracy'] - base['test_accuracy']):+.2f}",
             count(r["bytes"]), count(r["gzip_bytes"]), count(r["params"]), count(r["macs"]),
             f"{pct(r['sparsity'], 1)}%", f"{r['p50_ms']:.3f}", f"{base['p50_ms'] / r['p50_ms']:.2f}x"]
            for r in result["rows"]]
    left_out = "".join(f"\nLeft out: one shot by {c}: {why}\n" for c, why in result.get("left_out", {}).items())
    return intro + markdown_table(["model", "accuracy", "vs unpruned", "bytes", "gzip bytes", "params", "MACs",
                                   "sparsity", "p50 ms", "speed-up"], rows) + left_out
