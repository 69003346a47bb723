"""The gate: limits, and everything that binds a report to the files, data and params it judges."""

import copy
import io
import json
import math

import numpy as np
import pytest
import yaml
from conftest import ROOT, tiny_dataset

from pipeline.core.artifacts import file_hash, write_json
from pipeline.core.errors import PipelineError
from pipeline.core.params import CheckParams, load_params
from pipeline.export.report import load_report, make_report
from pipeline.stages.check import (
    check,
    gates_from_report,
    load_gates,
    update_gates,
    violations,
)

MARGINS = CheckParams(accuracy_margin=0.01, drop_margin=0.005, size_margin=0.05)
PARAMS = load_params(ROOT / "params.yaml")
LATENCY = {"threads": 1, "p50": 0.1, "p90": 0.2, "p99": 0.3, "runs": 200}


def entry(path, accuracy, keras_accuracy):
    record = {"key": f"sha256:{'ab' * 32}"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(range(256)) * (int(accuracy * 10)))
    write_json(path.with_name(path.name + ".json"), record)
    size = path.stat().st_size
    return {"file": path.as_posix(), "sha256": file_hash(path), "record_key": record["key"], "accuracy": accuracy,
            "keras_accuracy": keras_accuracy, "keras_agreement": 0.99, "size_bytes": size, "gzip_bytes": size // 2,
            "latency_ms": LATENCY, "latency_by_threads": [LATENCY]}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder with two small files, a report on them, and gates written from it."""
    monkeypatch.chdir(tmp_path)
    from pathlib import Path

    entries = [entry(Path("tflite_out/m.int8.tflite"), 0.90, 0.91), entry(Path("tflite_out/m.float32.tflite"), 0.91, 0.91)]
    write_json(tmp_path / "report.json", make_report(PARAMS, tiny_dataset(), entries))
    update_gates(tmp_path / "report.json", tmp_path / "gates.yaml", MARGINS, "test")
    return tmp_path


def edit_report(project, change):
    report = json.loads((project / "report.json").read_text())
    change(report)
    (project / "report.json").write_text(json.dumps(report))


def problems(project):
    return [(v.file, v.gate, v.kind) for v in check(project / "report.json", project / "gates.yaml")[0]]


def test_gates_written_from_a_report_pass_on_that_report(project):
    found, count = check(project / "report.json", project / "gates.yaml")
    assert found == [] and count == 9  # 4 per file, and the int8 file's latency relative to float32


def slower(report, file, factor):
    for e in report["artefacts"]:
        if e["file"] == file:
            e["latency_ms"] = {**e["latency_ms"], "p50": e["latency_ms"]["p50"] * factor}


def test_a_file_slower_than_its_float32_sibling_fails_the_latency_gate_and_a_slower_machine_does_not(project):
    edit_report(project, lambda r: [slower(r, e["file"], 3) for e in r["artefacts"]])  # every file 3x slower
    assert problems(project) == []
    edit_report(project, lambda r: slower(r, "tflite_out/m.int8.tflite", 1.5))  # int8 alone 1.5x slower
    assert problems(project) == [("tflite_out/m.int8.tflite", "max_p50_vs_float32", "gate")]


def test_the_latency_margin_is_the_measured_spread_when_that_is_larger(tmp_path):
    report = {"artefacts": [{"file": f"out/m.{fmt}.tflite", "accuracy": 0.9, "size_bytes": 10, "gzip_bytes": 5,
                             "latency_ms": {"p50": p50, "spread": spread}}
                            for fmt, p50, spread in (("float32", 2.0, 0.05), ("int8", 1.0, 0.25))]}
    steady = gates_from_report(report, CheckParams(latency_margin=0.15))["out/m.int8.tflite"]
    assert steady["max_p50_vs_float32"] == pytest.approx(0.5 * (1 + 2 * 0.30))
    assert "max_p50_vs_float32" not in gates_from_report(report, CheckParams(latency_gates=False))["out/m.int8.tflite"]


def test_one_collapsing_class_fails_its_gate_while_the_mean_holds(tmp_path):
    def make(cat):
        return {"artefacts": [{"file": "out/m.int8.tflite", "accuracy": 0.9, "size_bytes": 10, "gzip_bytes": 5,
                               "latency_ms": LATENCY, "per_class": {"cat": cat, "dog": 0.9}}]}

    limits = gates_from_report(make(0.9), CheckParams(class_margin=0.03))
    assert limits["out/m.int8.tflite"]["min_class_accuracy:cat"] == 0.87
    assert [v.gate for v in violations(make(0.6), limits)] == ["min_class_accuracy:cat"]
    assert "min_class_accuracy:cat" not in gates_from_report(make(0.9), CheckParams())["out/m.int8.tflite"]


def test_an_accuracy_regression_fails_the_gate(project):
    report = load_report(project / "report.json")
    worse = copy.deepcopy(report)
    worse["artefacts"][0]["accuracy"] = 0.85
    found = violations(worse, load_gates(project / "gates.yaml").limits)
    assert {(v.file, v.gate) for v in found} == {("tflite_out/m.int8.tflite", "min_accuracy"),
                                                 ("tflite_out/m.int8.tflite", "max_drop")}


def test_a_bigger_file_fails_the_size_gate(project):
    report = load_report(project / "report.json")
    report["artefacts"][1]["size_bytes"] *= 2
    assert [v.gate for v in violations(report, load_gates(project / "gates.yaml").limits)] == ["max_size_bytes"]


def test_an_artefact_missing_from_the_report_fails(project):
    edit_report(project, lambda r: r["artefacts"].pop())  # the float32 file, which int8's latency gate reads too
    assert sorted(problems(project)) == [("tflite_out/m.float32.tflite", "present in report", "gate"),
                                         ("tflite_out/m.int8.tflite", "max_p50_vs_float32", "gate")]


@pytest.mark.bad_input("tampered verdicts")
def test_a_file_replaced_after_validation_fails_even_with_its_old_modification_time(project):
    path = project / "tflite_out" / "m.int8.tflite"
    stat = path.stat()
    path.write_bytes(b"\x00" * stat.st_size)
    import os

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert problems(project) == [("tflite_out/m.int8.tflite", "file", "file")]


@pytest.mark.bad_input("tampered verdicts")
def test_a_deleted_file_fails(project):
    (project / "tflite_out" / "m.float32.tflite").unlink()
    found = check(project / "report.json", project / "gates.yaml")[0]
    assert [(v.file, v.value) for v in found] == [("tflite_out/m.float32.tflite", "missing")]


@pytest.mark.bad_input("tampered verdicts")
def test_a_record_swapped_after_validation_fails(project):
    write_json(project / "tflite_out" / "m.int8.tflite.json", {"key": "sha256:" + "cd" * 32})
    assert problems(project) == [("tflite_out/m.int8.tflite", "file", "file")]


@pytest.mark.bad_input("tampered verdicts")
@pytest.mark.parametrize("change, message", [
    (lambda r: r["artefacts"][0].update(accuracy=math.nan), "NaN is not a number a report may hold"),
    (lambda r: r["artefacts"][0].update(accuracy=math.inf), "Infinity is not a number"),
    (lambda r: r["artefacts"][0].update(accuracy=1.5), r"accuracy: expected a number in \[0, 1\], got 1.5"),
    (lambda r: r["artefacts"][0].update(accuracy="0.9"), "accuracy: expected a number"),
    (lambda r: r["artefacts"][0].pop("sha256"), "sha256: expected 'sha256:'"),
    (lambda r: r["artefacts"].append(copy.deepcopy(r["artefacts"][0])), "appears twice"),
    (lambda r: r.pop("test_set"), "test_set"),
    (lambda r: r.update(schema=1), "schema is 1, this version reads 2"),
    (lambda r: r["params"]["train"].update(epochs=2), "params_hash does not match params"),
    (lambda r: r.update(artefacts={"a": 1}), "artefacts: expected a non-empty list"),
], ids=["nan", "inf", "out of range", "string", "no hash", "duplicate", "no test set", "old schema",
        "params edited", "wrong type"])
def test_a_report_that_breaks_the_schema_is_refused_by_check_and_update(project, change, message):
    edit_report(project, change)
    with pytest.raises(PipelineError, match=message):
        check(project / "report.json", project / "gates.yaml")
    before = (project / "gates.yaml").read_text()
    with pytest.raises(PipelineError, match=message):
        update_gates(project / "report.json", project / "gates.yaml", MARGINS, "test")
    assert (project / "gates.yaml").read_text() == before


@pytest.mark.bad_input("tampered verdicts")
def test_a_report_on_another_test_set_fails(project):
    other = make_report(PARAMS, tiny_dataset(seed=1), [])
    edit_report(project, lambda r: r.update(test_set=other["test_set"]))
    assert problems(project) == [("(report)", "test set", "binding")]


@pytest.mark.bad_input("tampered verdicts")
def test_a_report_made_with_other_params_fails_naming_the_keys(project):
    other = make_report(load_params(ROOT / "params.yaml", ["train.epochs=2", "seed=7"]), tiny_dataset(), [])
    edit_report(project, lambda r: r.update(params=other["params"], params_hash=other["params_hash"]))
    assert problems(project) == [("(report)", "params seed", "binding"), ("(report)", "params train.epochs", "binding")]


def test_the_data_folder_is_not_part_of_the_binding(project):
    other = make_report(load_params(ROOT / "params.yaml", ["data.dir=/elsewhere"]), tiny_dataset(), [])
    edit_report(project, lambda r: r.update(params=other["params"], params_hash=other["params_hash"]))
    assert problems(project) == []


@pytest.mark.bad_input("gates files")
@pytest.mark.parametrize("edit, message", [
    (lambda g: g["artefacts"]["tflite_out/m.int8.tflite"].update(min_acc=0.5), "unknown gate 'min_acc'; known: min_accuracy"),
    (lambda g: g["artefacts"]["tflite_out/m.int8.tflite"].update(min_accuracy=math.nan), "expected a finite number"),
    (lambda g: g.pop("made_with"), "no 'made_with' block"),
    (lambda g: g.update(artefacts=[]), "non-empty 'artefacts' mapping"),
], ids=["unknown gate", "nan limit", "no binding", "wrong type"])
def test_a_bad_gates_file_is_refused(project, edit, message):
    gates = yaml.safe_load((project / "gates.yaml").read_text())
    edit(gates)
    (project / "gates.yaml").write_text(yaml.safe_dump(gates))
    with pytest.raises(PipelineError, match=message):
        check(project / "report.json", project / "gates.yaml")


@pytest.mark.bad_input("gates files")
def test_a_gates_file_with_a_duplicate_key_is_refused(project):
    text = (project / "gates.yaml").read_text()
    (project / "gates.yaml").write_text(text + "artefacts: {}\n")
    with pytest.raises(PipelineError, match="duplicate key 'artefacts'"):
        check(project / "report.json", project / "gates.yaml")


def test_missing_gates_file_says_how_to_write_one(project):
    with pytest.raises(PipelineError, match="check --update"):
        check(project / "report.json", project / "none.yaml")


def test_update_refuses_a_report_whose_files_changed(project):
    (project / "tflite_out" / "m.int8.tflite").write_bytes(b"other")
    with pytest.raises(PipelineError, match="changed since it was validated"):
        update_gates(project / "report.json", project / "gates.yaml", MARGINS, "test")


def test_gates_record_what_they_were_measured_on(project):
    made_with = yaml.safe_load((project / "gates.yaml").read_text())["made_with"]
    report = load_report(project / "report.json")
    assert made_with["test_set"] == report["test_set"] and made_with["params"] == report["params"]
    assert made_with["params"]["train"]["epochs"] == PARAMS.train.epochs and "dir" not in made_with["params"]["data"]


def test_margins_leave_room_for_noise():
    report = {"artefacts": [{"file": "a", "accuracy": 0.9, "keras_accuracy": 0.91, "size_bytes": 100, "gzip_bytes": 50}]}
    assert gates_from_report(report, MARGINS) == {"a": {"min_accuracy": 0.89, "max_drop": 0.015, "max_size_bytes": 105,
                                                        "max_gzip_bytes": 52}}


@pytest.mark.parametrize("config", [ROOT / "params.yaml", *sorted((ROOT / "configs").glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_each_committed_gates_file_was_made_with_its_configs_current_params(config):
    from pipeline.export.report import bound_params, params_difference

    params = load_params(config)
    gates = ROOT / params.gates_path
    if not gates.is_file():
        pytest.skip(f"{config.name} has no committed gates file")
    # a params edit that changes what is shipped must come with gates rewritten on purpose (a key added
    # since, at its default, changes nothing: check's binding judges the same way)
    assert params_difference(load_gates(gates).made_with["params"], bound_params(params)) == []


def test_a_key_added_later_binds_only_at_its_default():
    from pipeline.export.report import bound_params, params_difference

    now = bound_params(load_params(ROOT / "params.yaml"))
    before = copy.deepcopy(now)
    del before["prune"]["enabled"], before["input"]
    assert params_difference(before, now) == []
    changed = bound_params(load_params(ROOT / "params.yaml", ["prune.enabled=false"]))
    assert params_difference(before, changed) == [("prune.enabled", None, False)]


@pytest.mark.bad_input("tampered verdicts")
def test_a_report_that_is_not_a_regular_file_is_refused(project):
    (project / "dev.json").symlink_to("/dev/zero")
    with pytest.raises(PipelineError, match="not a regular file"):
        check(project / "dev.json", project / "gates.yaml")


@pytest.mark.bad_input("tampered verdicts")
def test_the_params_of_a_report_are_checked_against_the_records_behind_its_files(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    model = Path("models/m.keras")
    model.parent.mkdir()
    model.write_bytes(b"a model")
    write_json(Path("models/m.keras.json"), {"stage": "train", "seed": 42, "key": "sha256:" + "00" * 32,
                                              "params": {"name": "m", "train": {**PARAMS.section("train"), "epochs": 2}}})
    e = entry(Path("tflite_out/m.int8.tflite"), 0.9, 0.91)
    record = {"stage": "convert", "keras_model": str(model), "key": e["record_key"], "params": {"format": "int8"}}
    write_json(Path("tflite_out/m.int8.tflite.json"), record)
    write_json(tmp_path / "report.json", make_report(PARAMS, tiny_dataset(), [e]))  # claims train.epochs 12
    update_gates(tmp_path / "report.json", tmp_path / "gates.yaml", MARGINS, "test")
    found = check(tmp_path / "report.json", tmp_path / "gates.yaml")[0]
    assert {(v.gate, v.kind) for v in found} == {("params train.epochs", "records"), ("params name", "records")}


def test_diff_shows_old_new_and_delta_per_metric_and_names_what_differs(project):
    from pipeline.export.report import diff

    old = load_report(project / "report.json")
    new = copy.deepcopy(old)
    new["artefacts"][0]["accuracy"] = 0.88
    new["artefacts"].pop()
    new["params"]["train"]["epochs"] = 2
    lines = diff(old, new).splitlines()
    assert lines[0] == "params differ: train.epochs 12 -> 2"
    assert any(line.split() == ["tflite_out/m.int8.tflite", "accuracy", "0.9000", "0.8800", "-0.0200"] for line in lines)
    assert any(line.split()[:4] == ["tflite_out/m.float32.tflite", "(whole", "file)", "present"] for line in lines)
    assert old["environment"]["versions"]["tensorflow"] and old["environment"]["cpu_count"] >= 1


def test_a_violation_shows_its_baseline_and_the_change(project):
    from pipeline.stages.check import table

    edit_report(project, lambda r: r["artefacts"][0].update(accuracy=0.85))  # was 0.90 when the gates were written
    text = table(check(project / "report.json", project / "gates.yaml")[0])
    row = next(line.split() for line in text.splitlines() if "min_accuracy" in line)
    assert row == ["tflite_out/m.int8.tflite", "min_accuracy", "0.8900", "0.8500", "0.9000", "-0.0500"]


@pytest.mark.bad_input("tampered verdicts")
def test_a_shipped_file_without_records_down_to_its_trained_model_fails(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    e = entry(Path(f"tflite_out/{PARAMS.name}.int8.tflite"), 0.9, 0.91)  # the config's own name, a bare record
    write_json(tmp_path / "report.json", make_report(PARAMS, tiny_dataset(), [e]))
    update_gates(tmp_path / "report.json", tmp_path / "gates.yaml", MARGINS, "test")
    found = check(tmp_path / "report.json", tmp_path / "gates.yaml")[0]
    assert [(v.gate, v.value, v.kind) for v in found] == [("records", "incomplete or missing", "records")]


def test_the_confusion_picture_stays_a_readable_size_for_the_most_classes_a_folder_may_have():
    from PIL import Image

    from pipeline.core.plots import confusion_png

    matrix = (np.eye(256, dtype=int) * 3).tolist()
    image = Image.open(io.BytesIO(confusion_png([(f"m{i}.int8.tflite", matrix) for i in range(2)],
                                                [f"class {i}" for i in range(256)])))
    assert max(image.size) <= 4000
