"""Shared fixtures: tiny synthetic data, and one smoke run of the whole pipeline through the CLI."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest

# tiny models time in microseconds: the suite may ask for fewer latency runs than users can (20, not 200);
# set before the pipeline is imported, and inherited by the CLI processes the tests start
os.environ["MOBILEDEPLOY_TEST_LATENCY_FLOOR"] = "20"
# two test workers share two cores: one TensorFlow thread each, instead of two fighting over each core
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import pipeline  # noqa: E402,F401  (selects Keras 2 before anything imports TensorFlow)
from pipeline.data import Dataset, fingerprint  # noqa: E402

KERAS_3_LOADED = None  # whether importing the pipeline, TF-MOT included, loaded Keras 3 (test_layout)


def pytest_sessionstart(session):
    """TensorFlow in the processes that run tests, before any test module is imported: not in
    pytest-xdist's controller, which only hands out tests (its import cost 5 s before any worker started)."""
    global KERAS_3_LOADED
    config = session.config
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return
    from pipeline.core.framework import tf

    KERAS_3_LOADED = "keras" in sys.modules
    # two logical CPU devices, for train.distribute: mirrored (one device unless a strategy asks for both);
    # possible only before TensorFlow initialises its devices
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                               [tf.config.LogicalDeviceConfiguration()] * 2)


ROOT = Path(__file__).resolve().parents[1]


def tiny_dataset(n: int = 240, size: int = 12, classes: int = 3, seed: int = 0) -> Dataset:
    """Images whose class is which third of the picture is bright: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n).astype(np.uint8)
    x = rng.integers(0, 60, (n, size, size, 1)).astype(np.uint8)
    band = size // classes
    for i, label in enumerate(y):
        x[i, :, label * band:(label + 1) * band] += 180
    parts = np.split(np.arange(n), [int(n * 0.7), int(n * 0.85)])
    arrays = [a for idx in parts for a in (x[idx], y[idx])]
    return Dataset(*arrays, class_names=[f"c{i}" for i in range(classes)], source="synthetic",
                   fingerprint=fingerprint(x, y))


def run_cli(*args: str, cwd: Path, check: bool = True, own_process: bool = False) -> subprocess.CompletedProcess:
    """Run ``mobiledeploy ...`` in ``cwd`` as a user would: in this process through click's test runner
    (a TensorFlow import costs ~10 s per process), or with ``own_process`` as `python -m pipeline` in a
    process of its own, for what needs one (signals, exit codes of the interpreter, a fresh import)."""
    if own_process:
        proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=900)
    else:
        from click.testing import CliRunner

        from pipeline.cli import cli

        here = os.getcwd()
        os.chdir(cwd)
        try:
            result = CliRunner().invoke(cli, list(args), prog_name="mobiledeploy")
        finally:
            os.chdir(here)
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            stderr += "".join(traceback.format_exception(result.exception))  # as the interpreter would print it
        proc = subprocess.CompletedProcess(args, result.exit_code, result.stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def new_project(tmp: Path) -> Path:
    """A fresh project folder holding the committed params and configs. Its ``.cache`` (composed
    MultiFashion arrays, keyed by source data, seed and recipe) is the repository's, so the composition
    is paid once, not in every test."""
    shutil.copy(ROOT / "params.yaml", tmp / "params.yaml")
    shutil.copytree(ROOT / "configs", tmp / "configs")
    (tmp / "gates").mkdir()
    (ROOT / ".cache").mkdir(exist_ok=True)
    (tmp / ".cache").symlink_to(ROOT / ".cache", target_is_directory=True)
    return tmp


SMOKE = ("--params", "configs/smoke.yaml")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> its hash: to prove a failed command changed nothing. (The project
    lock's file is left out: it holds the PID of the last command that ran, whatever it did.)"""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".mobiledeploy.lock"}


def fails_cleanly(proc, *fragments):
    """Exit 1, one line on stderr starting with 'error:' and naming the problem, no traceback."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A project folder that ``build(folder)`` fills, made once per test run: under pytest-xdist the
    first worker to ask builds it, under a lock, and the others wait and share it (so it must only be
    read, or copied). Without xdist it is an ordinary temporary folder."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        project = new_project(tmp_path_factory.mktemp(name))
        build(project)
        return project
    shared = tmp_path_factory.getbasetemp().parent  # this run's folder, the same for every worker
    project, done = shared / name, shared / f"{name}.built"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            shutil.rmtree(project, ignore_errors=True)
            project.mkdir()
            build(new_project(project))
            done.touch()
    return project


def _run_smoke(project: Path) -> None:
    for stage in ("train", "prune", "convert", "validate"):
        run_cli(stage, *SMOKE, cwd=project)


@pytest.fixture(scope="session")
def smoke_project(tmp_path_factory) -> Path:
    """The smoke config run once through every stage of the CLI, in a throw-away project folder."""
    return built_once(tmp_path_factory, "smoke", _run_smoke)


# --- the bad-input table: each test marked @pytest.mark.bad_input("class") counts its cases ---------

BAD_INPUT: dict[str, dict[str, int]] = {}
BAD_INPUT_TABLE = ROOT / ".build" / "bad_input.md"


# The end-to-end tier: tests on a trained smoke project, and those marked e2e (whole stages, several
# trainings or conversions). `make test-fast` runs the rest, the unit tier.
SMOKE_FIXTURES = {"smoke_project", "copy_of_smoke"}  # (a test's fixture names include those its fixtures use)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SMOKE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
    # `--dist worksteal` gives the first half of this order to one worker and the second half to the
    # other, and an idle worker then takes tests from the end of the other's queue. So: the tests on the
    # smoke project open the first half (its worker builds the project), the other end-to-end tests open
    # the second (its worker does not wait for that build), and the many short tests end both halves.
    # Each of the two opening groups starts with its long tests: a long test started last would keep one
    # worker busy while the other has nothing left to take
    def first(group):
        return sorted(group, key=lambda item: item.get_closest_marker("long") is None)

    smoke = first(item for item in items if SMOKE_FIXTURES & set(getattr(item, "fixturenames", ())))
    e2e = first(item for item in items if item.get_closest_marker("e2e") is not None and item not in smoke)
    short = [item for item in items if item.get_closest_marker("e2e") is None]
    fill = max(0, len(items) // 2 - len(smoke))
    items[:] = smoke + short[:fill] + e2e + short[fill:]


IN_WORKER = False  # under pytest-xdist, workers run the tests and the controller writes the table


def pytest_configure(config):
    global IN_WORKER
    IN_WORKER = hasattr(config, "workerinput")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Label the report of a bad-input test with its class; the label travels with the report."""
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("bad_input")
    if marker is not None and report.when == "call":
        report.user_properties.append(("bad_input", marker.args[0]))


def pytest_runtest_logreport(report):
    properties = dict(report.user_properties)
    if IN_WORKER or report.when != "call" or "bad_input" not in properties:
        return
    cases, loaded = properties.get("cases", 1), properties.get("loaded", 0)  # loaded: valid after all
    row = BAD_INPUT.setdefault(properties["bad_input"], {"cases": 0, "refused": 0, "loaded": 0, "failed": 0})
    row["cases"] += cases
    if report.passed:
        row["refused"] += cases - loaded
        row["loaded"] += loaded
    else:
        row["failed"] += cases


def pytest_sessionfinish(session):
    """Write the table docs/reliability.md quotes (`make bad-input-table`): class of bad input, cases, outcome."""
    if IN_WORKER or not BAD_INPUT:
        return
    lines = ["| bad input | cases tried | refused cleanly | valid after all (loaded) | not handled |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {r['cases']} | {r['refused']} | {r['loaded']} | {r['failed']} |"
              for name, r in sorted(BAD_INPUT.items())]
    BAD_INPUT_TABLE.parent.mkdir(exist_ok=True)
    BAD_INPUT_TABLE.write_text("\n".join(lines) + "\n")


@pytest.fixture
def copy_of_smoke(smoke_project, tmp_path):
    """A private copy of the smoke project, for tests that add or break files."""
    project = tmp_path / "p"
    shutil.copytree(smoke_project, project, symlinks=True)
    return project
