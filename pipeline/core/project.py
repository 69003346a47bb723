"""`mobiledeploy init`: what a user's own repository needs to run and gate the pipeline on its model,
without working inside a clone of this one: a params file, a gates folder, a Makefile fragment and a
CI workflow. Nothing that exists is overwritten."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from .artifacts import write_text
from .errors import PipelineError
from .params import Params, load_params

PARAMS_FILE = "mobiledeploy.yaml"
FRAGMENT = "mobiledeploy.mk"
WORKFLOW = ".github/workflows/mobiledeploy.yml"

HEADER = """\
# mobiledeploy params for this repository, written by `mobiledeploy init`. Every key is checked on load;
# `mobiledeploy keys --params {params}` lists them with what each accepts. Run the whole job with
# `mobiledeploy run --params {params}` (or `make mobiledeploy`), then write the gates once, on purpose,
# with `mobiledeploy check --update --params {params}` and commit gates/{name}.yaml: CI then fails
# when a change makes a shipped file worse.
"""

MAKE = """\
# mobiledeploy: `include {fragment}` in your Makefile, then `make mobiledeploy` (the whole job and its
# gates) or `make mobiledeploy-gates` (rewrite the gates from the last report, on purpose).
MOBILEDEPLOY ?= mobiledeploy
MOBILEDEPLOY_PARAMS ?= {params}
.PHONY: mobiledeploy mobiledeploy-gates
mobiledeploy:
\t$(MOBILEDEPLOY) run --params $(MOBILEDEPLOY_PARAMS)
mobiledeploy-gates:
\t$(MOBILEDEPLOY) check --update --params $(MOBILEDEPLOY_PARAMS)
"""

WORKFLOW_TEXT = """\
# Gate the model's .tflite files on every push: fails when accuracy, size or latency ratios regress
# past gates/{name}.yaml. Install mobiledeploy from where you keep it (a wheel, a git URL or a path).
name: mobiledeploy
on: [push, pull_request]
jobs:
  gate:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
      - run: pip install mobiledeploy  # or: pip install path/to/mobiledeploy-0.1.0-py3-none-any.whl
      - run: mobiledeploy run --params {params}
"""


def init_project(folder: Path, model_file: str | None, name: str | None, pixels: str) -> list[Path]:
    """Write the starting files into ``folder``; PipelineError (nothing written) if one exists already."""
    if not folder.is_dir():
        raise PipelineError(f"init: {folder} is not a folder")
    name = name or "".join(c if c.isalnum() or c in "_-" else "_" for c in folder.resolve().name)[:64] or "model"
    files = {folder / PARAMS_FILE: None, folder / FRAGMENT: MAKE, folder / WORKFLOW: WORKFLOW_TEXT,
             folder / "gates" / ".gitkeep": ""}
    existing = [str(p) for p in files if p.exists()]
    if existing:
        raise PipelineError(f"init: {existing[0]} exists; init writes only new files (move it away first)")
    defaults = Params()
    params = dataclasses.replace(defaults, name=name, model=dataclasses.replace(defaults.model, file=model_file),
                                 input=dataclasses.replace(defaults.input, pixels=pixels))
    params.check_all()  # the name and the choices, before anything is written
    text = HEADER.format(params=PARAMS_FILE, name=name) + yaml.safe_dump(params.to_dict(), sort_keys=False)
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text if template is None else
                   template.format(params=PARAMS_FILE, name=name, fragment=FRAGMENT))
    load_params(folder / PARAMS_FILE)  # what was written loads
    return list(files)
