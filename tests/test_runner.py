"""The stage runner: one run per project folder, SIGTERM like Ctrl-C, children that die with their
parent, one LiteRT child per command (replaced after a crash or a timeout), a full disk that damages
nothing, and validate's refusal of files that are not classifiers."""

import errno
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT, SMOKE, fails_cleanly, new_project, run_cli, snapshot

from pipeline import architectures
from pipeline.core.errors import PipelineError
from pipeline.core.framework import keras
from pipeline.core.runner import (
    CHILD_PREFIX,
    child_tempdir,
    project_lock,
    run_child,
    session,
    sweep_leftovers,
)
from pipeline.export.tflite import to_tflite

HOLD_LOCK = "import sys, time; from pathlib import Path; from pipeline.core.runner import project_lock\n" \
            "with project_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)\n"


@pytest.mark.bad_input("concurrent runs")
def test_a_second_run_in_the_same_project_stops_naming_the_first(tmp_path):
    project = new_project(tmp_path)
    with project_lock(project):
        fails_cleanly(run_cli("train", *SMOKE, cwd=project, check=False),
                      f"another mobiledeploy run (PID {os.getpid()}) is working in this project folder")
    assert not (project / "models").exists()


def test_the_lock_of_a_killed_run_is_released_by_the_kernel(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    with project_lock(tmp_path):  # no stale lock to remove by hand
        pass


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_a_killed_validate_takes_its_litert_child_with_it_and_the_next_run_sweeps_its_folder(copy_of_smoke):
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "validate", *SMOKE, "--set",
                             "validate.latency_runs=1000000"], cwd=copy_of_smoke, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 120
    while not (children := children_of(proc.pid)) and time.time() < deadline:
        time.sleep(0.2)
    assert children, "validate never started its LiteRT child"
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while any(Path(f"/proc/{c}").exists() for c in children) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{c}").exists() and "Z" not in Path(f"/proc/{c}/stat").read_text().split()[2]
                   for c in children), "the LiteRT child outlived its parent"
    sweep_leftovers()  # what the next run does first (another test's run may have done it already)
    assert not list(Path(tempfile.gettempdir()).glob(f"{CHILD_PREFIX}{proc.pid}-*"))


def test_the_sweep_removes_the_folders_of_dead_runs_only():
    code = "import time; from pipeline.core.runner import child_tempdir\nwith child_tempdir() as d:\n" \
           "    print(d, flush=True); time.sleep(600)\n"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    dead = Path(holder.stdout.readline().strip())
    with child_tempdir() as alive:
        holder.kill()
        holder.wait()
        assert dead.exists()  # killed: it could not clean up
        sweep_leftovers()
        assert not dead.exists() and Path(alive).exists()


@pytest.mark.bad_input("concurrent runs")
def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path):
    (tmp_path / "precious").write_text("precious")
    (tmp_path / ".mobiledeploy.lock").symlink_to(tmp_path / "precious")
    with pytest.raises(PipelineError, match="cannot open the run lock"):
        with project_lock(tmp_path):
            pass
    assert (tmp_path / "precious").read_text() == "precious"


@pytest.mark.e2e
def test_sigterm_stops_a_stage_like_ctrl_c_with_exit_143(tmp_path):
    project = new_project(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", *SMOKE, "--set", "train.epochs=50",
                             "--set", "data.limit_train=1000"],
                            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("Epoch 2/"):
            proc.send_signal(signal.SIGTERM)
            break
    output = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, output
    assert "terminated (SIGTERM)" in output and "Traceback" not in output
    assert not (project / "models" / "smoke.keras").exists()
    assert not [p for p in (project / "models").rglob("*") if p.is_file() and ".tmp" in p.name]


@pytest.mark.bad_input("the disk")
@pytest.mark.parametrize("failing", [".tmp.tflite", ".tmp.json"], ids=["artefact", "its record"])
def test_a_full_disk_gives_one_line_and_leaves_every_artefact_with_its_record(copy_of_smoke, monkeypatch, failing):
    write_bytes = Path.write_bytes

    def full_disk(self, data):
        if self.name.endswith(failing):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    before = snapshot(copy_of_smoke)
    fails_cleanly(run_cli("convert", *SMOKE, "--set", "convert.representative_samples=99", cwd=copy_of_smoke,
                          check=False), "cannot write tflite_out/smoke", "No space left on device", "is unchanged")
    after = snapshot(copy_of_smoke)
    assert {k: v for k, v in after.items() if k != ".mobiledeploy.lock"} == \
        {k: v for k, v in before.items() if k != ".mobiledeploy.lock"}


def spatial_model():
    inputs = keras.Input((28, 28, 1))
    return keras.Model(inputs, keras.layers.Conv2D(10, 1, activation="softmax")(inputs))


@pytest.mark.bad_input(".tflite files")
@pytest.mark.parametrize("model, message", [
    (lambda: architectures.build("tiny", (28, 28, 1), 5), "output 'predictions' predicts 5 classes, the data has 10"),
    (spatial_model, "gives (28, 28, 10) values per image; a classifier gives one score per class"),
], ids=["5 classes on 10-class data", "spatial output"])
def test_validate_refuses_a_file_that_does_not_fit_the_data(copy_of_smoke, model, message):
    (copy_of_smoke / "tflite_out" / "smoke.float32.tflite").write_bytes(to_tflite(model(), "float32"))
    before = snapshot(copy_of_smoke)
    fails_cleanly(run_cli("validate", *SMOKE, cwd=copy_of_smoke, check=False), "smoke.float32.tflite", message)
    assert snapshot(copy_of_smoke) == before


def test_a_sessions_child_runs_job_after_job_and_is_replaced_after_a_crash_or_a_timeout(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests"))  # where the child finds child_jobs
    path = tmp_path / "m.tflite"
    named = re.escape(str(path))

    def run(do: str, timeout: float = 60) -> int:
        return run_child("child_jobs", {"do": do}, path, timeout)["pid"]

    with session():
        first = run("ok")
        assert run("ok") == first  # one process for the session's jobs
        with pytest.raises(PipelineError, match=f"^{named}: cannot run in LiteRT: refused$"):
            run("refuse")
        assert run("ok") == first  # a refused file is an answer, not a failure of the child
        with pytest.raises(PipelineError, match=rf"^{named}: the LiteRT interpreter crashed \(SIGSEGV\) on this file"):
            run("crash")
        second = run("ok")
        assert second != first
        with pytest.raises(PipelineError, match=f"^{named}: RuntimeError: an unexpected failure$"):
            run("raise")
        with pytest.raises(PipelineError, match=f"^{named}: LiteRT did not finish within 1s$"):
            run("hang", timeout=1)
        third = run("ok")
        assert third not in (first, second)
        os.kill(third, signal.SIGKILL)  # killed between jobs (the OOM killer): the next file is not blamed
        while Path(f"/proc/{third}/stat").read_text().split()[2] != "Z":  # dead, not yet reaped
            time.sleep(0.01)
        fourth = run("ok")
        assert fourth != third
        assert run("die_after") == fourth
        assert run("nap") != fourth  # the last file's crash, during this one: rerun in a new child, not blamed
        with pytest.raises(PipelineError, match=f"^{named}: LiteRT's child process answered something that is not"):
            run("garbage")
        fourth = run("ok")
    assert not Path(f"/proc/{fourth}").exists() or "Z" in Path(f"/proc/{fourth}/stat").read_text().split()[2]
    assert run("ok") != fourth  # outside a session, a child of its own
