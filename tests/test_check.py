import copy

import pytest
import yaml

from pipeline.check import check, gates_from_report, load_gates, violations
from pipeline.errors import PipelineError
from pipeline.params import CheckParams

REPORT = {"dataset": "synthetic", "test_examples": 100, "artefacts": [
    {"file": "tflite_out/m.int8.tflite", "accuracy": 0.90, "keras_accuracy": 0.91, "keras_agreement": 0.99,
     "size_bytes": 1000, "gzip_bytes": 800},
    {"file": "tflite_out/m.float32.tflite", "accuracy": 0.91, "keras_accuracy": 0.91, "keras_agreement": 1.0,
     "size_bytes": 4000, "gzip_bytes": 3600},
]}
GATES = gates_from_report(REPORT, CheckParams(accuracy_margin=0.01, drop_margin=0.005, size_margin=0.05))


def test_gates_written_from_a_report_pass_on_that_report():
    assert violations(REPORT, GATES) == []


def test_an_accuracy_regression_fails_the_gate():
    worse = copy.deepcopy(REPORT)
    worse["artefacts"][0]["accuracy"] = 0.85
    found = violations(worse, GATES)
    assert {(v.file, v.gate) for v in found} == {("tflite_out/m.int8.tflite", "min_accuracy"),
                                                 ("tflite_out/m.int8.tflite", "max_drop")}


def test_a_bigger_file_fails_the_size_gate():
    bigger = copy.deepcopy(REPORT)
    bigger["artefacts"][1]["size_bytes"] = 5000
    assert [(v.gate, v.limit, v.value) for v in violations(bigger, GATES)] == [("max_size_bytes", 4200, 5000)]


def test_an_artefact_missing_from_the_report_fails():
    partial = {**REPORT, "artefacts": REPORT["artefacts"][:1]}
    assert [v.gate for v in violations(partial, GATES)] == ["present in report"]


def test_unknown_gate_in_the_gates_file_is_an_error(tmp_path):
    path = tmp_path / "gates.yaml"
    path.write_text(yaml.safe_dump({"artefacts": {"a.tflite": {"min_acc": 0.5}}}))
    with pytest.raises(PipelineError, match="unknown gate 'min_acc'; known: min_accuracy"):
        load_gates(path)


def test_missing_gates_file_says_how_to_write_one(tmp_path):
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(PipelineError, match="check --update"):
        check(tmp_path / "report.json", tmp_path / "none.yaml")
