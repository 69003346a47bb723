"""The smoke config end to end through the CLI, and what users get wrong, as a user would meet it."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, SMOKE, fails_cleanly, new_project, run_cli, snapshot

from pipeline.core.artifacts import atomic_path

FORMATS = {"float32", "float16", "dynamic_int8", "int8"}


def report(project: Path, name: str = "smoke") -> dict:
    return json.loads((project / "tflite_out" / f"{name}.report.json").read_text())


def test_smoke_run_writes_every_artefact_and_a_complete_report(smoke_project):
    entries = report(smoke_project)["artefacts"]
    assert {(e["model"], e["format"], e["pruned"]) for e in entries} == (
        {("smoke", f, False) for f in FORMATS} | {("smoke.pruned", f, True) for f in FORMATS})
    for e in entries:
        assert (smoke_project / e["file"]).is_file()
        assert 0 < e["gzip_bytes"] <= e["size_bytes"] == (smoke_project / e["file"]).stat().st_size
        assert 0.5 < e["accuracy"] <= 1 and 0.9 <= e["keras_agreement"] <= 1
        lat = e["latency_ms"]
        assert lat["threads"] == 1 and lat["runs"] >= 200 and 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert e["params"] > 0 and e["macs"] > 0
    assert "| smoke.int8.tflite |" in (smoke_project / "tflite_out" / "smoke.report.md").read_text()


def test_int8_tflite_agrees_with_keras_on_98_percent_of_smoke_inputs(smoke_project):
    for e in report(smoke_project)["artefacts"]:
        if e["format"] == "int8":
            assert e["keras_agreement"] >= 0.98, e
        if e["format"] == "float32":
            assert e["keras_agreement"] >= 0.999, e


def test_pruning_reaches_the_configured_sparsity_in_every_layer(smoke_project):
    record = json.loads((smoke_project / "models" / "smoke.pruned.keras.json").read_text())
    assert record["stage"] == "prune" and record["parent"] == "models/smoke.keras"
    for layer, value in record["metrics"]["layer_sparsity"].items():
        assert value == pytest.approx(0.5, abs=0.02), layer


def test_records_say_what_produced_each_artefact(smoke_project):
    record = json.loads((smoke_project / "models" / "smoke.keras.json").read_text())
    assert record["seed"] == 42 and record["params"]["name"] == "smoke"
    assert record["versions"]["tensorflow"] and record["inputs"]["dataset"].startswith("sha256:")
    assert record["artefact"]["hash"].startswith("sha256:")
    tflite = json.loads((smoke_project / "tflite_out" / "smoke.pruned.int8.tflite.json").read_text())
    assert tflite["keras_model"] == "models/smoke.pruned.keras" and tflite["pruned"] is True


def test_committed_smoke_gates_pass_on_a_fresh_smoke_run(smoke_project):
    proc = run_cli("check", *SMOKE, "--gates", str(ROOT / "gates" / "smoke.yaml"), cwd=smoke_project)
    assert "gates" in proc.stdout and "pass" in proc.stdout


def test_check_passes_on_the_real_report_and_fails_on_an_injected_regression(smoke_project, tmp_path):
    gates = tmp_path / "gates.yaml"
    run_cli("check", *SMOKE, "--update", "--gates", str(gates), cwd=smoke_project)
    run_cli("check", *SMOKE, "--gates", str(gates), cwd=smoke_project)
    worse = report(smoke_project)
    worse["artefacts"][0]["accuracy"] -= 0.05
    (tmp_path / "worse.json").write_text(json.dumps(worse))
    proc = run_cli("check", *SMOKE, "--gates", str(gates), "--report", str(tmp_path / "worse.json"),
                   cwd=smoke_project, check=False)
    assert proc.returncode == 1
    assert "min_accuracy" in proc.stderr and worse["artefacts"][0]["file"] in proc.stderr


FOLDER = ["--set", "name=mine", "--set", "data.source=folder", "--set", "data.dir=images",
          "--set", "data.image_size=[16, 16]", "--set", "data.limit_test=null"]


@pytest.mark.e2e
def test_an_image_folder_streams_through_the_same_pipeline_and_trains_as_if_held_in_memory(tmp_path):
    from test_data import write_folder

    from pipeline.core.keras_io import load_model

    project = new_project(tmp_path)
    write_folder(project / "images", classes=("a", "b", "c"), per_class=20, size=(18, 14))
    streamed = [*FOLDER, "--set", "data.cache=none", "--set", "convert.formats=[float32, int8]"]
    for stage in ("train", "prune", "convert", "validate"):
        run_cli(stage, *SMOKE, *streamed, cwd=project)
    entries = report(project, "mine")["artefacts"]
    assert {Path(e["file"]).name for e in entries} == {
        "mine.float32.tflite", "mine.int8.tflite", "mine.pruned.float32.tflite", "mine.pruned.int8.tflite"}
    assert all(0 <= e["accuracy"] <= 1 and e["keras_agreement"] is not None for e in entries)
    # how the images are held is not a result: the same model, bit for bit, and the files stay current
    shutil.copy(project / "models" / "mine.keras", tmp_path / "streamed.keras")
    (project / "models" / "mine.keras").unlink()
    run_cli("train", *SMOKE, *FOLDER, "--set", "data.cache=memory", cwd=project)
    for a, b in zip(load_model(tmp_path / "streamed.keras").get_weights(),
                    load_model(project / "models" / "mine.keras").get_weights()):
        assert a.tobytes() == b.tobytes()


@pytest.mark.e2e
@pytest.mark.bad_input("image folders")
def test_an_image_that_breaks_while_training_streams_is_one_line_and_the_process_exits(tmp_path):
    from test_data import write_folder

    project = new_project(tmp_path)
    write_folder(project / "images", classes=("a", "b", "c"), per_class=40, size=(18, 14))
    broken = project / "images" / "c" / "9.png"  # decoded after the first 32 (the output check) and the header
    broken.write_bytes(broken.read_bytes()[:100])
    # in a process of its own, with a timeout: a failed stream must not leave the interpreter unable to exit
    proc = subprocess.run([os.sys.executable, "-m", "pipeline", "train", *SMOKE, *FOLDER, "--set", "data.cache=none"],
                          cwd=project, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    fails_cleanly(proc, "images/c/9.png: not a readable image (OSError)")
    assert "Epoch 1/" in proc.stdout and not (project / "models" / "mine.keras").exists()
    # that line alone: TensorFlow, imported and training by then, wrote none of its start-up lines
    assert len(proc.stderr.splitlines()) == 1, proc.stderr


@pytest.mark.bad_input("missing upstream artefacts")
def test_missing_upstream_artefact_names_the_command_that_makes_it(tmp_path):
    project = new_project(tmp_path)
    fails_cleanly(run_cli("prune", *SMOKE, cwd=project, check=False), "models/smoke.keras", "mobiledeploy train")
    fails_cleanly(run_cli("convert", *SMOKE, cwd=project, check=False), "mobiledeploy train")
    fails_cleanly(run_cli("validate", *SMOKE, cwd=project, check=False), "mobiledeploy convert")


@pytest.mark.bad_input("params")
def test_bad_params_stop_before_any_work(tmp_path):
    project = new_project(tmp_path)
    # in a process of its own: the installed entry point, its exit status and stderr, as a shell sees them
    fails_cleanly(run_cli("train", *SMOKE, "--set", "prune.final_sparsity=1.5", cwd=project, check=False,
                          own_process=True), "prune.final_sparsity")
    assert not (project / "models").exists()


@pytest.mark.bad_input("model files")
def test_a_file_that_is_not_a_keras_model_is_refused_and_nothing_changes(copy_of_smoke):
    bogus = copy_of_smoke / "mine.keras"
    bogus.write_bytes(b"\x00garbage" * 100)
    before = snapshot(copy_of_smoke)
    fails_cleanly(run_cli("convert", *SMOKE, "--model", "mine.keras", cwd=copy_of_smoke, check=False),
                  "mine.keras", "not a Keras model file")
    assert snapshot(copy_of_smoke) == before


@pytest.mark.bad_input("model files")
def test_a_pruned_model_is_refused_where_a_trained_one_is_expected(copy_of_smoke):
    fails_cleanly(run_cli("prune", *SMOKE, "--model", "models/smoke.pruned.keras", cwd=copy_of_smoke,
                          check=False), "already a pruned model")


@pytest.mark.bad_input(".tflite files")
@pytest.mark.parametrize("content", [b"TFL3" + bytes(range(256)) * 4, b""], ids=["random", "empty"])
def test_a_broken_tflite_fails_validation_cleanly_and_keeps_the_report(copy_of_smoke, content):
    (copy_of_smoke / "tflite_out" / "smoke.pruned.int8.tflite").write_bytes(content)
    before = snapshot(copy_of_smoke)
    fails_cleanly(run_cli("validate", *SMOKE, cwd=copy_of_smoke, check=False), "smoke.pruned.int8.tflite")
    assert snapshot(copy_of_smoke) == before


@pytest.mark.bad_input("the disk")
def test_an_unwritable_output_location_is_reported(copy_of_smoke):
    shutil.rmtree(copy_of_smoke / "tflite_out")
    (copy_of_smoke / "tflite_out").write_text("a file where the output folder should be")
    fails_cleanly(run_cli("convert", *SMOKE, cwd=copy_of_smoke, check=False), "cannot write", "tflite_out")


def test_debug_shows_the_traceback(tmp_path):
    proc = run_cli("prune", *SMOKE, "--debug", cwd=new_project(tmp_path), check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_a_failed_write_leaves_the_previous_artefact_and_no_temporary_file(tmp_path):
    target = tmp_path / "model.keras"
    target.write_text("previous")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half writ")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_your_own_model_goes_through_prune_convert_and_validate_without_touching_the_configs(copy_of_smoke):
    # named like the config's own model on purpose: its artefacts must not overwrite the config's
    (copy_of_smoke / "other").mkdir()
    shutil.copy(copy_of_smoke / "models" / "smoke.keras", copy_of_smoke / "other" / "smoke.keras")  # no record
    shipped = {k: v for k, v in snapshot(copy_of_smoke).items() if k.startswith(("models/", "tflite_out/"))}
    for stage in ("prune", "convert", "validate"):
        run_cli(stage, *SMOKE, "--model", "other/smoke.keras", "--set", "data.limit_train=2000", cwd=copy_of_smoke)
    after = snapshot(copy_of_smoke)
    assert all(after[k] == v for k, v in shipped.items())
    assert (copy_of_smoke / "models" / "user" / "smoke.pruned.keras").is_file()
    entries = report(copy_of_smoke, "user/smoke")["artefacts"]
    assert {(e["file"], e["model"], e["format"]) for e in entries} == {
        (f"tflite_out/user/smoke.{f}.tflite", "smoke", f) for f in FORMATS}
    assert all(e["keras_agreement"] >= 0.98 for e in entries)


@pytest.mark.bad_input("params strings into Make")
def test_params_strings_cannot_inject_commands_into_make_and_odd_paths_still_work(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import cli

    folder = tmp_path / "my configs #1"
    folder.mkdir()
    shutil.copy(ROOT / "params.yaml", folder / "base $(x) ;v1.yaml")
    (folder / "c.yaml").write_text("extends: 'base $(x) ;v1.yaml'\nname: c\n"
                                   "check: {gates: 'gates/g.yaml$(shell touch injected)'}\n")
    result = CliRunner().invoke(cli, ["paths", "--params", str(folder / "c.yaml")])
    assert result.exit_code == 0, result.output
    (tmp_path / "paths.mk").write_text(result.output)
    (tmp_path / "Makefile").write_text("include paths.mk\n"
                                       "ok: $(PARAM_FILES)\n\t@echo 'gates=$(GATES)'\n")
    proc = subprocess.run(["make", "--no-print-directory", "ok"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr  # both params files found under their real names
    assert not (tmp_path / "injected").exists()
    assert proc.stdout.strip().replace("\\ ", " ") == "gates=gates/g.yaml$(shell touch injected)"


@pytest.mark.bad_input("params strings into Make")
def test_a_path_make_cannot_name_is_refused(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import cli

    result = CliRunner().invoke(cli, ["paths", "--set", "check.gates=a|b.yaml"])
    assert result.exit_code == 1 and "Make cannot name a file containing '|'" in result.output


def invoke(*args):
    from click.testing import CliRunner

    from pipeline.cli import cli

    return CliRunner().invoke(cli, list(args))


@pytest.mark.bad_input("tampered verdicts")
def test_check_fails_on_a_shipped_file_replaced_after_validation(copy_of_smoke, monkeypatch):
    monkeypatch.chdir(copy_of_smoke)
    assert invoke("check", *SMOKE, "--update", "--gates", "g.yaml").exit_code == 0
    path = copy_of_smoke / "tflite_out" / "smoke.int8.tflite"
    stat = path.stat()
    path.write_bytes(os.urandom(stat.st_size))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = invoke("check", *SMOKE, "--gates", "g.yaml")
    assert result.exit_code == 1
    assert "tflite_out/smoke.int8.tflite" in result.output and "changed since it was validated" in result.output
    assert "re-run `mobiledeploy validate --params configs/smoke.yaml`" in result.output


@pytest.mark.bad_input("tampered verdicts")
def test_check_recompute_rederives_every_accuracy_from_the_files(copy_of_smoke, monkeypatch):
    monkeypatch.chdir(copy_of_smoke)
    assert invoke("check", *SMOKE, "--update", "--gates", "g.yaml").exit_code == 0
    result = invoke("check", *SMOKE, "--gates", "g.yaml", "--recompute")
    assert result.exit_code == 0 and "every accuracy measured again from the files" in result.output
    path = copy_of_smoke / "tflite_out" / "smoke.report.json"
    report = json.loads(path.read_text())
    claimed = report["artefacts"][0]["accuracy"] = round(report["artefacts"][0]["accuracy"] - 0.2, 5)
    path.write_text(json.dumps(report))  # a hand-edited report: the plain check cannot tell ...
    assert "min_accuracy" in invoke("check", *SMOKE, "--gates", "g.yaml").output
    result = invoke("check", *SMOKE, "--gates", "g.yaml", "--recompute")  # ... --recompute can
    assert result.exit_code == 1 and "recomputed accuracy" in result.output and f"{claimed:.4f}" in result.output
    assert "min_accuracy" not in result.output  # the gates judged the measured numbers, which pass


@pytest.mark.e2e
def test_verbose_lets_native_output_through(tmp_path, monkeypatch, capfd):
    from pipeline.core.framework import VERBOSE_ENV, native_output_silenced

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    run_cli("summary", *SMOKE, "--untrained", "--verbose", cwd=new_project(tmp_path))
    assert os.environ[VERBOSE_ENV] == "1"  # what the TensorFlow import of a fresh process reads
    for value, seen in (("0", False), ("1", True)):
        monkeypatch.setenv(VERBOSE_ENV, value)
        with native_output_silenced():
            os.write(2, b"a line from native code\n")
        assert ("a line from native code" in capfd.readouterr().err) == seen


@pytest.mark.bad_input("stale artefacts")
def test_validate_refuses_files_made_with_a_set_experiment_unless_given_the_same_set(copy_of_smoke):
    experiment = ("--set", "convert.representative_samples=99")
    run_cli("convert", *SMOKE, *experiment, cwd=copy_of_smoke)
    before = snapshot(copy_of_smoke)
    fails_cleanly(run_cli("validate", *SMOKE, cwd=copy_of_smoke, check=False),
                  "smoke.int8.tflite was made with convert.representative_samples=99", "these params say 100")
    assert snapshot(copy_of_smoke) == before
    run_cli("validate", *SMOKE, *experiment, cwd=copy_of_smoke)
    assert report(copy_of_smoke)["params"]["convert"]["representative_samples"] == 99
