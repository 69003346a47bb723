"""`mobiledeploy recipe-compare`: the same student on the same budget trained plain, with the config's
augmentation, with its teacher (distillation), and with both.

Each variant is trained by the train stage as ``models/<name>_<variant>.keras`` (both: the config's own
``models/<name>.keras``) and converted to int8 under ``tflite_out/recipes/`` (:mod:`pipeline.studies.variants`). The teacher is trained once, first,
if ``distill.teacher`` names a params file whose model is not current; its time is not in the table.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..core.artifacts import OUT_DIR, write_json, write_text
from ..core.errors import PipelineError
from ..core.params import AugmentParams, Params
from ..core.tables import count, markdown_table, pct_sd
from ..training import augment as augmentation
from .variants import measure_variants, seeds_text

RECIPES_DIR = OUT_DIR / "recipes"
OFF = {"augment": dataclasses.asdict(AugmentParams()), "distill": {"teacher": "", "teacher_pixels": "auto"}}


def variants(params: Params) -> dict[str, Params]:
    """plain, augment, distill and both: the config with its augmentation and its teacher each on or off.
    both is the config itself, with its own name: its model is the config's, reused when current."""
    changes = {"plain": OFF, "augment": {"distill": OFF["distill"]}, "distill": {"augment": OFF["augment"]}}
    found = {name: params.overlay({**change, "name": f"{params.name}_{name}"}) for name, change in changes.items()}
    return {**found, "both": params}


def recipe_compare(params: Params, out_dir: Path = RECIPES_DIR) -> Path:
    """Train and measure the four variants; write recipes.json and recipes.md under ``out_dir``."""
    if not params.augment.active or not params.distill.teacher:
        missing = [what for what, given in (("augment (e.g. --set augment.shift=2)", params.augment.active),
                                            ("distill.teacher (a model file or a params file)",
                                             bool(params.distill.teacher))) if not given]
        raise PipelineError(f"recipe-compare compares the config's augmentation and teacher with neither; these "
                            f"params set no {' and no '.join(missing)}")
    rows = measure_variants(variants(params), out_dir, "recipe-compare")
    result = {"epochs": params.train.epochs, "seeds": params.studies.seeds, "architecture": params.model.architecture,
              "augment": augmentation.describe(params.augment), "teacher": params.distill.teacher,
              "temperature": params.distill.temperature, "weight": params.distill.weight,
              "latency_runs": params.validate.latency_runs, "variants": rows}
    write_json(out_dir / "recipes.json", result)
    write_text(out_dir / "recipes.md", markdown(result))
    print(f"recipe-compare: {len(rows)} variants -> {out_dir / 'recipes.md'}", flush=True)
    return out_dir / "recipes.json"


def markdown(result: dict) -> str:
    first = result["variants"][0]
    tasks = list(first["tasks"])

    def acc(r: dict, key: str) -> str:  # per task, side by side, for a multi-task student
        return " / ".join(pct_sd(r["tasks"][t], key) for t in tasks)

    per_task = f" For each task ({' / '.join(tasks)}), side by side." if len(tasks) > 1 else ""
    intro = (f"# Training recipes compared\n\n{result['architecture']} ({count(first['params'])} params) trained "
             f"for {result['epochs']} epochs with the same data, optimiser and {seeds_text(result.get('seeds'))}. "
             f"Augmentation: {result['augment']}. Teacher: {result['teacher']} (temperature {result['temperature']:g}, "
             f"weight {result['weight']:g}). Accuracy in % on the test set." + per_task + " Gap: train minus "
             "validation accuracy of the kept epoch (on unaugmented images). Train s: the fit and its evaluation, "
             "the teacher's forward passes included, its own training not.\n\n")
    header = ["variant", "float acc", "int8 acc", "train acc", "val acc", "gap", "best epoch", "train s"]
    rows = [[r["variant"], acc(r, "float_accuracy"), acc(r, "int8_accuracy"), acc(r, "train_accuracy"),
             acc(r, "val_accuracy"), acc(r, "gap"), f"{r['best_epoch']:g}", f"{r['train_seconds']:.0f}"]
            for r in result["variants"]]
    return intro + markdown_table(header, rows, "l" + "r" * 7)
