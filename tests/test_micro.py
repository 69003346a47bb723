"""LiteRT Micro: the C array of an int8 file, read back and run in the Micro interpreter."""

import json

import pytest
from conftest import SMOKE, fails_cleanly, run_cli, snapshot, tiny_dataset

from pipeline import architectures
from pipeline.core.contract import InputContract
from pipeline.core.errors import PipelineError
from pipeline.core.params import ConvertParams
from pipeline.export import micro
from pipeline.export.tflite import representative_data, to_tflite

DATA = tiny_dataset()
RAW = InputContract()


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory):
    model = architectures.build("tiny", DATA.input_shape, DATA.num_classes)  # untrained weights will do
    path = tmp_path_factory.mktemp("micro") / "my-model v2.int8.tflite"
    path.write_bytes(to_tflite(model, "int8", representative_data(DATA, ConvertParams(representative_samples=30), 0)))
    return path


def test_the_c_pair_embeds_the_file_aligned_with_its_length_and_io(int8_file):
    source, header = micro.c_pair(int8_file)
    assert micro.symbol_for(int8_file) == "g_my_model_v2_int8_model"
    assert "alignas(16) const unsigned char g_my_model_v2_int8_model[] = {" in source
    assert f"const unsigned int g_my_model_v2_int8_model_len = {int8_file.stat().st_size};" in source
    assert '#include "my-model v2.int8.h"' in source
    assert "extern const unsigned char g_my_model_v2_int8_model[];" in header and "#ifndef G_MY_MODEL_V2" in header
    assert "int8 [1, 12, 12, 1], real = (q + 128) * " in header  # raw pixels 0-255 on int8: zero point -128
    assert micro.array_bytes(source) == int8_file.read_bytes()


@pytest.mark.bad_input(".tflite files")
def test_a_tampered_or_stale_array_is_refused_in_one_line(int8_file, tmp_path):
    source, _ = micro.c_pair(int8_file)
    cut = tmp_path / "cut.cc"
    cut.write_text(source.replace("0x", "0X", 1).replace(", 0x", ", ", 3))  # three bytes gone
    with pytest.raises(PipelineError, match=r"cut\.cc: its array holds [\d,]+ bytes, its length constant says"):
        micro.check(cut, int8_file, DATA.x_test[:2], RAW)
    stale = tmp_path / "stale.cc"
    stale.write_text(source.replace("0x1c, 0x00", "0x1d, 0x00", 1))
    with pytest.raises(PipelineError, match=r"stale\.cc: its array is not the bytes of .* \(stale"):
        micro.check(stale, int8_file, DATA.x_test[:2], RAW)
    junk = tmp_path / "junk.cc"
    junk.write_text("int main() { return 0; }")
    with pytest.raises(PipelineError, match=r"junk\.cc: not a model array written by mobiledeploy"):
        micro.check(junk, int8_file, DATA.x_test[:2], RAW)


def test_micro_gives_litert_labels_in_the_smallest_arena_it_reports(int8_file, tmp_path):
    source = tmp_path / "m.cc"
    source.write_text(micro.c_pair(int8_file)[0])
    found = micro.check(source, int8_file, DATA.x_test[:6], RAW)
    assert found["images"] == found["same_labels"] == 6 and found["max_steps_reference"] <= 2
    from ai_edge_litert.interpreter import Interpreter

    blob = int8_file.read_bytes()
    (inp,) = Interpreter(model_content=blob).get_input_details()
    image = micro._quantize(DATA.x_test[:1], inp)
    assert micro._runs_in(blob, found["arena_bytes"], image)
    assert not micro._runs_in(blob, found["arena_bytes"] - micro.ALIGNMENT, image)


def test_convert_writes_the_c_pair_and_validate_reports_micro(smoke_project):
    out = smoke_project / "tflite_out"
    report = json.loads((out / "smoke.report.json").read_text())
    runs = {e["file"]: e.get("micro") for e in report["artefacts"]}
    assert {f for f, m in runs.items() if "source" in m} == {"tflite_out/smoke.int8.tflite",
                                                             "tflite_out/smoke.pruned.int8.tflite"}
    assert runs["tflite_out/smoke.float32.tflite"]["arena_bytes"] > runs["tflite_out/smoke.int8.tflite"]["arena_bytes"]
    assert runs["tflite_out/smoke.dynamic_int8.tflite"] == {  # hybrid ops: Micro has no kernel, and says so
        "arena_bytes": None, "not_run": "Input type: FLOAT32 with filter type: INT8 not supported."}
    for name in ("smoke.int8", "smoke.pruned.int8"):
        assert micro.array_bytes((out / f"{name}.cc").read_text()) == (out / f"{name}.tflite").read_bytes()
        found = runs[f"tflite_out/{name}.tflite"]
        assert found["images"] == 10 and found["same_labels"] >= 9 and found["identical"] >= 5, found
        assert found["max_steps_reference"] <= 2 and found["arena_bytes"] > 0
    assert "LiteRT Micro" in (out / "smoke.report.md").read_text()


@pytest.mark.bad_input("missing upstream artefacts")
def test_validate_without_the_c_array_says_which_stage_writes_it(copy_of_smoke):
    (copy_of_smoke / "tflite_out" / "smoke.int8.cc").unlink()
    before = snapshot(copy_of_smoke)
    proc = run_cli("validate", *SMOKE, cwd=copy_of_smoke, check=False)
    fails_cleanly(proc, "smoke.int8.cc is missing", "mobiledeploy convert")
    assert snapshot(copy_of_smoke) == before
