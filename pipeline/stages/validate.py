"""Stage 4: a config's .tflite files through LiteRT: accuracy, agreement with Keras, size, latency.

The report it writes is bound to what it judged (:mod:`pipeline.export.report`): each file's sha256 and
record key, the test set's fingerprint and the params that made the artefacts."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import numpy as np

from ..core.artifacts import (
    OUT_DIR,
    USER_DIR,
    check_writable,
    is_config_model,
    model_stem,
    place,
    read_record,
    report_path,
    shipped_tflite,
    write_bytes,
    write_json,
    write_text,
)
from ..core.contract import declared
from ..core.errors import PipelineError
from ..core.params import Params
from ..core.plots import confusion_png, curves_png, layer_error_png
from ..data import Dataset, load_dataset
from ..export.layer_error import layer_markdown, layer_report
from ..export.measure import KerasParents, chance_warning, file_contract, measure
from ..export.micro import MICRO_FORMATS, arena, c_paths, check
from ..export.report import make_report, markdown
from .base import refuse_foreign


def discover(params: Params, keras_model: Path | None = None, out_dir: Path = OUT_DIR) -> list[Path]:
    """The .tflite files to validate: this config's (its trained and pruned models in every format
    of params), or all those converted from ``keras_model``."""
    if keras_model is None:
        files = [f for path in shipped_tflite(params) if (f := out_dir / path.name).is_file()]
        what, made_by = f"of {params.name}", "mobiledeploy convert"
    else:
        wanted = keras_model.resolve()
        folder = out_dir if is_config_model(keras_model, params.name) else out_dir / USER_DIR
        files = [f for f in sorted(folder.glob("*.tflite"))
                 if Path((read_record(f) or {}).get("keras_model", "")).resolve() == wanted]
        what, made_by = f"converted from {keras_model}", f"mobiledeploy convert --model {keras_model}"
    if not files:
        raise PipelineError(f"no .tflite files {what} in {folder if keras_model else out_dir}; they are made by "
                            f"`{made_by}`")
    return files


def tflite_files(paths: list[Path]) -> list[Path]:
    """``validate --tflite``: the files as given, whatever their names; one line for one that is missing,
    not a file, or given twice."""
    for path in paths:
        if not path.is_file():
            raise PipelineError(f"--tflite {path}: {'not a file' if path.exists() else 'not found'}")
    if len({p.resolve() for p in paths}) != len(paths):
        raise PipelineError("--tflite: a file is given twice")
    return list(paths)


def validate(params: Params, keras_model: Path | None = None, out_dir: Path = OUT_DIR,
             tflite: list[Path] | None = None, report_to: Path | None = None) -> Path:
    """Validate the .tflite files and write ``<model>.report.json`` and ``.md`` beside them (``tflite``:
    any files by path instead, reported to ``report_to``)."""
    files = tflite_files(tflite) if tflite else discover(params, keras_model, out_dir)
    if keras_model is None and not tflite:  # the config's own files must be what these params make
        for path in files:
            refuse_foreign(path, params)
    if tflite:
        json_path = report_to or out_dir / USER_DIR / "tflite.report.json"
    elif keras_model is None:
        json_path = out_dir / report_path(params.name).name
    else:
        json_path = place(out_dir / report_path(model_stem(keras_model)).name, keras_model, params.name)
    if not json_path.name.endswith(".report.json"):
        raise PipelineError(f"--report {json_path}: a report's name ends in .report.json (its .md goes beside it)")
    check_writable(json_path)
    data = load_dataset(params.data, params.seed)
    contracts = {path: file_contract(path, declared(params.input, data.input_shape[-1])) for path in files}
    parents = KerasParents(data.x_test)
    entries = []
    for path in files:
        start = time.perf_counter()
        entry = measure(path, data.with_contract(contracts[path]), params.validate, parents)
        entries.append(entry)
        print(f"validate: {path.name}: accuracy {entry['accuracy']:.4f}, p50 {entry['latency_ms']['p50']:.3f} ms "
              f"({time.perf_counter() - start:.0f}s)", flush=True)
        if params.validate.micro_images:
            entry["micro"] = on_micro(path, entry["format"], data, contracts[path], params.validate.micro_images,
                                      own=keras_model is None and not tflite)
        if warning := chance_warning(entry, data.num_classes):
            print(warning, file=sys.stderr, flush=True)
    report = make_report(params, data, entries)
    md_path = json_path.with_name(json_path.name.removesuffix(".json") + ".md")
    write_json(json_path, report)
    write_text(md_path, markdown(report))
    pictures = draw(report, data, json_path)
    print(f"validate: {len(entries)} artefacts -> {json_path}, {md_path}; {', '.join(map(str, pictures))}")
    if params.validate.layer_error_images:
        layer_errors(entries, contracts, data, params.validate.layer_error_images, json_path)
    return json_path


def on_micro(path: Path, fmt: str, data: Dataset, contract, images: int, own: bool) -> dict:
    """LiteRT Micro on ``path``: for an int8 file its C array, checked against LiteRT
    (:func:`pipeline.export.micro.check`; the config's own must have one, which convert writes); for
    every file the arena it needs, or why Micro cannot run it."""
    source = c_paths(path)[0]
    x = np.asarray(data.x_test[:images])
    if fmt not in MICRO_FORMATS or not source.is_file():
        if fmt in MICRO_FORMATS and own:
            raise PipelineError(f"{source} is missing; `mobiledeploy convert` writes it beside {path.name}")
        try:
            return {"arena_bytes": arena(path, x, contract)}
        except PipelineError as exc:
            return {"arena_bytes": None,
                    "not_run": str(exc).removeprefix(f"{path}: ").removeprefix("cannot run in LiteRT Micro: ")}
    start = time.perf_counter()
    found = {"source": source.as_posix(), **check(source, path, x, contract)}
    print(f"validate: {source.name}: LiteRT Micro on {found['images']} images: {found['same_labels']} with LiteRT's "
          f"labels, {found['identical']} bit-identical to its reference kernels (at most {found['max_steps_reference']} "
          f"steps off), arena {found['arena_bytes']:,} bytes ({time.perf_counter() - start:.0f}s)", flush=True)
    if found["same_labels"] < found["images"]:
        print(f"warning: {source.name}: LiteRT Micro labels {found['images'] - found['same_labels']} of "
              f"{found['images']} images otherwise than LiteRT", file=sys.stderr, flush=True)
    return found


def layer_errors(entries: list[dict], contracts: dict, data: Dataset, images: int, json_path: Path) -> None:
    """Beside the report: ``<name>.layers.json``, ``.md`` and ``.png``, each quantized file's error op by op
    against its float32 sibling (:mod:`pipeline.export.layer_error`), when there are such pairs."""
    start = time.perf_counter()
    x = np.asarray(data.x_test[:images])  # an image folder's test split is decoded from its files here
    found = layer_report(entries, contracts, x)
    if not found:
        return
    stem = json_path.with_name(json_path.name.removesuffix(".report.json"))
    paths = [Path(f"{stem}.layers.{ext}") for ext in ("json", "md", "png")]
    write_json(paths[0], {"images": len(x), "files": found})
    write_text(paths[1], layer_markdown(found, len(x)))
    write_bytes(paths[2], layer_error_png({name: [(r["layer"], r["error"]) for r in f["rows"]]
                                           for name, f in found.items()}))
    for name, f in found.items():
        top = f["worst"][0] if f["worst"] else None
        print(f"validate: {name}: output error {f['rows'][-1]['error']:.2%} against {f['reference']}"
              + (f"; adds the most: {top['layer']} (+{top['added']:.2%})" if top and top["added"] > 0 else ""))
    print(f"validate: per-layer error of {len(found)} files on {len(x)} images -> {', '.join(map(str, paths))} "
          f"({time.perf_counter() - start:.0f}s)", flush=True)


def draw(report: dict, data: Dataset, json_path: Path) -> list[Path]:
    """Beside the report: the confusion matrix of every file (per task), and the training curves of
    every Keras model behind them whose record holds its history (trained, pruned, fine-tuned)."""
    stem = json_path.name.removesuffix(".report.json")
    matrices = [(f"{Path(e['file']).name}{f' ({task})' if task else ''}", scores["confusion"])
                for e in report["artefacts"]
                for task, scores in (e["tasks"].items() if "tasks" in e else [(None, e)])]
    written = [json_path.with_name(f"{stem}.confusion.png")]
    write_bytes(written[0], confusion_png(matrices, data.class_names))
    histories = {}
    for parent in dict.fromkeys(e["keras_model"] for e in report["artefacts"] if e["keras_model"]):
        with contextlib.suppress(PipelineError):  # a parent that is gone or has no record: nothing to draw
            history = ((read_record(Path(parent)) or {}).get("metrics") or {}).get("history")
            if isinstance(history, dict) and history.get("accuracy"):
                histories[Path(parent).name] = history
    if histories:
        written.append(json_path.with_name(f"{stem}.curves.png"))
        write_bytes(written[-1], curves_png(histories))
    return written
