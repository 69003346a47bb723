"""The house rules of the package, checked on its source: one home for each concern."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import KERAS_3_LOADED, ROOT

PACKAGE = ROOT / "pipeline"


def imported_modules(path) -> set[str]:
    """Absolute names of the package modules ``path`` imports (``from . import x`` counts as ``x``)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module.rpartition(".")[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[:len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {target} | {f"{target}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_a_stage_never_imports_another_stage():
    stages = {p.stem for p in (PACKAGE / "stages").glob("*.py")} - {"__init__", "base"}
    for path in (PACKAGE / "stages").glob("*.py"):
        others = {f"pipeline.stages.{s}" for s in stages - {path.stem}}
        assert not imported_modules(path) & others, f"{path.name} imports another stage"


def test_only_the_one_measurement_runs_litert():
    users = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
             if "pipeline.export.litert" in imported_modules(p)}
    # measure for every score; layer_error for validate's op-by-op view; micro for its LiteRT reference
    assert users == {"export/measure.py", "export/layer_error.py", "export/micro.py"}


def test_markdown_tables_come_from_the_one_renderer():
    writers = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if "---:|" in p.read_text()}
    assert writers == {"core/tables.py"}


def test_cheap_commands_do_not_import_tensorflow():
    """paths, keys and check answer in a fraction of a second: they must not pay for TensorFlow."""
    code = ("import sys, pipeline.cli, pipeline.stages.check, pipeline.core.params; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_importing_the_pipeline_does_not_load_keras_3():
    """TF-MOT's import reaches for the `keras` package and so loaded all of Keras 3 at every command's
    start (0.7 to 1.3 s), to no use; the conftest imported the pipeline before any test ran."""
    assert not KERAS_3_LOADED
