"""Shared fixtures: tiny synthetic data, and one smoke run of the whole pipeline through the CLI."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pipeline  # noqa: F401  (selects Keras 2 before anything imports TensorFlow)
from pipeline.data import Dataset, fingerprint

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


def run_cli(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m pipeline ...` in ``cwd`` as a user would."""
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def new_project(tmp: Path) -> Path:
    """A fresh project folder holding the committed params and configs."""
    shutil.copy(ROOT / "params.yaml", tmp / "params.yaml")
    shutil.copytree(ROOT / "configs", tmp / "configs")
    (tmp / "gates").mkdir()
    return tmp


SMOKE = ("--params", "configs/smoke.yaml")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> its hash: to prove a failed command changed nothing."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fails_cleanly(proc, *fragments):
    """Exit 1, one line on stderr starting with 'error:' and naming the problem, no traceback."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="session")
def smoke_project(tmp_path_factory) -> Path:
    """The smoke config run once through every stage of the CLI, in a throw-away project folder."""
    project = new_project(tmp_path_factory.mktemp("smoke"))
    for stage in ("train", "prune", "convert", "validate"):
        run_cli(stage, *SMOKE, cwd=project)
    return project


# --- the bad-input table: each test marked @pytest.mark.bad_input("class") counts its cases ---------

BAD_INPUT: dict[str, dict[str, int]] = {}
BAD_INPUT_TABLE = ROOT / ".build" / "bad_input.md"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("bad_input")
    if marker is None or report.when != "call":
        return
    properties = dict(item.user_properties)
    cases, loaded = properties.get("cases", 1), properties.get("loaded", 0)  # loaded: valid after all
    row = BAD_INPUT.setdefault(marker.args[0], {"cases": 0, "refused": 0, "loaded": 0, "failed": 0})
    row["cases"] += cases
    if report.passed:
        row["refused"] += cases - loaded
        row["loaded"] += loaded
    else:
        row["failed"] += cases


def pytest_sessionfinish(session):
    """Write the table the README quotes (`make bad-input-table`): class of bad input, cases, outcome."""
    if not BAD_INPUT:
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
    shutil.copytree(smoke_project, project)
    return project
