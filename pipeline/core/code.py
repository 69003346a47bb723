"""The hash of the code a stage runs: the package modules it imports, directly or not.

A stage's record key includes it (:func:`pipeline.core.artifacts.make_record`), so a change to the code
that makes an artefact remakes it, while an edit to a module the stage never imports (a study, the
CLI) does not retrain anything. The closure is found by reading the import statements of the source
(including those inside functions), not by importing anything.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "pipeline"
ROOT = Path(__file__).resolve().parents[1]  # the package folder (this module is in pipeline/core)


def _module_file(name: str, root: Path) -> Path | None:
    parts = name.split(".")[1:]
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(name: str, path: Path) -> frozenset[str]:
    """The package modules that the module ``name`` (its source at ``path``) imports."""
    return _imports_in(name if path.name == "__init__.py" else name.rpartition(".")[0], path.read_bytes())


@functools.lru_cache(maxsize=1024)  # parsing is the cost of a record (0.3 s); the source is the key, so an edit is seen
def _imports_in(package: str, source: bytes) -> frozenset[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == PACKAGE:
                target = node.module
            else:
                continue
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from . import x` names modules
    return frozenset(found)


def closure(module: str, root: Path = ROOT) -> list[Path]:
    """The source files of ``module`` and of every package module it imports, transitively."""
    seen: dict[str, Path] = {}
    todo = [module, PACKAGE]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name, root)
        if path is None:  # a name imported from a module (a function, a class), not a module
            continue
        seen[name] = path
        parent = name.rpartition(".")[0]
        todo.extend(_imports(name, path) | ({parent} if parent else set()))
    return sorted(seen.values())


def code_hash(module: str, root: Path = ROOT) -> str:
    """sha256 over the relative paths and contents of :func:`closure`'s files."""
    digest = hashlib.sha256()
    for path in closure(module, root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return "sha256:" + digest.hexdigest()
