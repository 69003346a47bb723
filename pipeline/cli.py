"""The ``mobiledeploy`` command line: argument parsing only; each stage lives in its own module."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

import click

from .core.artifacts import (
    chain,
    report_path,
    require,
    shipped_tflite,
    trained_path,
    trained_source,
)
from .core.errors import PipelineError, clip, short
from .core.params import load_params, param_files, parse_override

# Commands that only read the project: they run beside a stage without taking its lock.
READ_ONLY = {"paths", "keys", "data", "summary", "check", "architectures"}

# The params each command reads (a section, or one key). A --set outside them has no effect there: a
# warning, so that an experiment is never believed to have changed something it did not. The stages
# read the sections of the stages before them too: they check that their inputs were made with them.
CHAIN = ("name", "seed", "data", "input", "model", "train", "augment", "distill")
STAGES = ("structured", "prune", "cluster", "quantize")  # the optional stages between training and conversion
READS = {
    "data": ("seed", "data"), "train": CHAIN, "prune": (*CHAIN, "structured", "prune"),
    "shrink": (*CHAIN, "structured", "convert.representative_samples", "validate"),
    "cluster": (*CHAIN, "structured", "prune", "cluster"), "qat": (*CHAIN, "structured", "prune", "cluster", "quantize"),
    "sensitivity": (*CHAIN, "structured.criterion"), "convert": (*CHAIN, *STAGES, "convert"),
    "validate": (*CHAIN, *STAGES, "convert", "validate"), "check": (*CHAIN, *STAGES, "convert", "validate", "check"),
    "summary": ("seed", "data", "model"), "samples": ("seed", "data"), "pictures": ("name", "seed", "data"),
    "prune_compare": (*CHAIN, "prune", "structured", "convert", "validate"),
    "quant_compare": (*CHAIN, *STAGES, "convert", "validate"),
    "zoo": ("seed", "data", "model.dropout", "train", "augment", "distill", "convert", "validate", "zoo", "studies"),
    "mtl_compare": (*CHAIN, "convert", "validate", "studies"),
    "recipe_compare": (*CHAIN, "convert", "validate", "studies"),
}
# Keys a study sets itself, per variant: a --set of one of them is refused, since it would be overwritten.
OVERRIDDEN = {
    "zoo": ("name", "model.architecture", "model.width", "model.options"),
    "mtl_compare": ("data.tasks", "model.options.sharing", "train.loss_weighting", "train.sharing_penalty"),
}


def _covers(prefixes: tuple[str, ...], key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def unread_overrides(command: str, overrides: tuple[str, ...]) -> list[str]:
    """The --set keys ``command`` does not read (warned about); PipelineError for one it overrides."""
    unread = []
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if _covers(OVERRIDDEN.get(command, ()), key):
            raise PipelineError(f"{command.replace('_', '-')}: --set {clip(key, 60)} has no effect: the study sets "
                                f"it per variant ({', '.join(OVERRIDDEN[command])})")
        if command in READS and not _covers(READS[command], key):
            unread.append(key)
    return unread


def stage_options(fn):
    """--params, --set and --debug for every command; errors become one line and exit status 1.

    Every command runs inside the stage runner (:mod:`pipeline.core.runner`): SIGTERM unwinds like Ctrl-C,
    and a command that writes into the project holds the project folder's lock. Its LiteRT jobs share one
    child process (:func:`pipeline.core.runner.session`)."""

    @click.option("--params", "params_file", default="params.yaml", show_default=True,
                  type=click.Path(dir_okay=False), help="Params file; a config may `extends:` another.")
    @click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                  help="Override one param (repeatable), e.g. --set train.epochs=3")
    @click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
    @click.option("--verbose", is_flag=True, help="Also show TensorFlow's start-up lines and converter output.")
    @functools.wraps(fn)
    def wrapper(params_file, overrides, debug, verbose, workers=None, **kwargs):
        from .core.runner import (
            Terminated,
            project_lock,
            session,
            sigterm_as_interrupt,
            sweep_leftovers,
        )
        from .data.stream import decode_errors

        if verbose:
            os.environ["MOBILEDEPLOY_VERBOSE"] = "1"  # read by pipeline.core.framework when TensorFlow is imported

        try:
            with sigterm_as_interrupt():
                params = load_params(params_file, overrides)
                for key in unread_overrides(fn.__name__, overrides):
                    click.echo(f"warning: {fn.__name__.replace('_', '-')} does not read {clip(key, 60)}; "
                               "that --set has no effect here", err=True)
                lock = contextlib.nullcontext() if fn.__name__ in READ_ONLY else project_lock()
                with lock as lock_fd, decode_errors(), session():
                    sweep_leftovers()
                    if workers is not None:
                        return launch_workers(fn.__name__, params, workers, lock_fd, params_file=params_file,
                                              overrides=overrides, debug=debug, verbose=verbose, **kwargs)
                    return fn(params=params, params_file=params_file, overrides=overrides, **kwargs)
        except PipelineError as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except Terminated:
            click.echo("terminated (SIGTERM): artefacts written before this stage are unchanged", err=True)
            sys.exit(143)
        except KeyboardInterrupt:
            click.echo("interrupted: artefacts written before this stage are unchanged", err=True)
            sys.exit(130)

    return wrapper


WORKERS_OPTION = click.option("--workers", type=click.IntRange(1, 64), metavar="N",
                              help="Run the stage as N local workers of one multi-worker run (needs "
                                   "train.distribute: multi_worker); worker 0 writes the artefacts.")


def launch_workers(command: str, params, workers: int, lock_fd: int, params_file, overrides, debug, verbose,
                   model_path=None) -> None:
    """``--workers N``: the same command, without ``--workers``, run by N local workers."""
    from .core.launch import launch

    if params.train.distribute != "multi_worker":
        raise PipelineError(f"--workers {workers} runs a multi-worker fit, but train.distribute is "
                            f"{params.train.distribute!r}: set it to multi_worker (in the config, or "
                            "--set train.distribute=multi_worker)")
    argv = [command, "--params", str(params_file), *(a for o in overrides for a in ("--set", o))]
    argv += ["--model", str(model_path)] if model_path is not None else []
    argv += ["--debug"] * debug + ["--verbose"] * verbose
    launch(argv, workers, lock_fd)


MODEL_OPTION = click.option("--model", "model_path", type=click.Path(path_type=Path),
                            help="Your own model instead of the pipeline's: a tf_keras .keras or .h5 file (every "
                                 "command), a Keras 3 .keras file or a SavedModel folder (convert, validate).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Train, prune, convert, validate and gate Keras CNNs for mobile (TFLite / LiteRT).

    Stages read their inputs from disk and write their outputs atomically:
    train -> models/<name>.keras, prune -> models/<name>.pruned.keras, cluster -> models/<name>.clustered.keras,
    qat -> models/<name>.<aware>.h5,
    convert -> tflite_out/<model>.<format>.tflite, validate -> tflite_out/<name>.report.{json,md},
    check -> exit status 0 or a table of regressions.
    """


@cli.command()
@stage_options
def data(params, **_):
    """Find and load the dataset; print its splits (a quick check that data is in place)."""
    from .data import load_dataset

    click.echo(load_dataset(params.data, params.seed).describe())


@cli.command()
@WORKERS_OPTION
@stage_options
def train(params, **_):
    """Train the architecture named in params; keep the best epoch by validation accuracy."""
    from .stages.train import train as run

    run(params)


@cli.command()
@WORKERS_OPTION
@MODEL_OPTION
@stage_options
def prune(params, model_path, **_):
    """Magnitude-prune with TF-MOT, fine-tune, strip the masks; write the pruned model."""
    from .stages.prune import prune as run

    run(params, model_path)


@cli.command()
@WORKERS_OPTION
@MODEL_OPTION
@stage_options
def cluster(params, model_path, **_):
    """Weight clustering (cluster.enabled) of the pruned model, or the trained one; write the clustered model."""
    from .stages.cluster import cluster as run

    run(params, model_path)


@cli.command()
@WORKERS_OPTION
@MODEL_OPTION
@stage_options
def qat(params, model_path, **_):
    """Quantization-aware training (quantize.aware: qat, pqat, cqat, pcqat); write the model."""
    from .stages.qat import qat as run

    run(params, model_path)


@cli.command()
@WORKERS_OPTION
@MODEL_OPTION
@stage_options
def shrink(params, model_path, **_):
    """Structured pruning: remove channels in rounds with fine-tuning; write models/<name>.shrunk.keras."""
    from .stages.shrink import shrink as run

    run(params, model_path)


@cli.command()
@MODEL_OPTION
@stage_options
def sensitivity(params, model_path, **_):
    """Validation accuracy after removing 10-75% of each layer's channels alone, without retraining."""
    from .studies.sensitivity import sensitivity_report

    sensitivity_report(params, model_path)


@cli.command("prune-compare")
@stage_options
def prune_compare(params, **_):
    """Unpruned, magnitude, structured, structured + magnitude and one-shot pruning, all int8, in one table."""
    from .studies.prune_compare import prune_compare as run

    run(params)


@cli.command("quant-compare")
@stage_options
def quant_compare(params, **_):
    """PTQ, int16x8, ai-edge-quantizer, QAT, PQAT, clustering and PCQAT on the config's models, in one table."""
    from .studies.quant_compare import quant_compare as run

    run(params)


@cli.command()
@MODEL_OPTION
@stage_options
def convert(params, model_path, **_):
    """Convert the trained and pruned models (or --model) to the TFLite formats in params."""
    from .stages.convert import convert as run

    run(params, model_path)


@cli.command()
@MODEL_OPTION
@click.option("--tflite", "tflite", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Any .tflite file, whatever its name (repeatable): validated with a report of its own.")
@click.option("--report", "report_to", type=click.Path(path_type=Path, dir_okay=False),
              help="With --tflite: where the report goes (default tflite_out/user/tflite.report.json).")
@stage_options
def validate(params, model_path, tflite, report_to, **_):
    """Run this config's .tflite files (or those from --model, or --tflite files) in LiteRT; write a report."""
    from .stages.validate import validate as run

    if tflite and model_path:
        raise PipelineError("validate: give --model or --tflite, not both")
    if report_to and not tflite:
        raise PipelineError("validate: --report names the report of --tflite files; the others have fixed names")
    run(params, model_path, tflite=list(tflite), report_to=report_to)


@cli.command()
@click.option("--report", type=click.Path(path_type=Path, dir_okay=False),
              help="Report to check (default: tflite_out/<name>.report.json).")
@click.option("--gates", "gates_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Gates file (default: params check.gates, or gates/<name>.yaml).")
@click.option("--update", is_flag=True, help="Rewrite the gates file from the report instead of checking.")
@click.option("--recompute", is_flag=True,
              help="Measure every accuracy again from the files themselves instead of trusting the report.")
@stage_options
def check(params, report, gates_path, update, recompute, params_file, overrides, **_):
    """Fail (exit 1, with a table) if the report breaks any gate, or no longer describes the files."""
    run_check(params, report, gates_path, update, recompute, params_file, overrides)


def run_check(params, report, gates_path, update, recompute, params_file, overrides) -> None:
    """The check command's work; exits 1 with a table if a gate is broken."""
    from .stages.check import check as run
    from .stages.check import recomputer, table, update_gates

    gates_path = gates_path or params.gates_path
    report = report or report_path(params.name)
    again = " ".join(["--params", params_file, *[f"--set {o}" for o in overrides]])
    if update:
        update_gates(report, gates_path, params.check, f"mobiledeploy check --update {again}")
        click.echo(f"check: wrote gates for the artefacts in {report} to {gates_path}")
        return
    found, count = run(report, gates_path, recomputer(params) if recompute else None)
    if found:
        fixes = {"file": f"the files on disk are not those the report judged: re-run `mobiledeploy validate {again}`"
                         " (make validate)",
                 "binding": f"the report was made for other data or params than {gates_path}: if the change is "
                            f"intended, rewrite the gates on purpose (`mobiledeploy check --update {again}`) and "
                            "commit them",
                 "records": "the records beside the files say they were made with other params than the report "
                            "claims: re-make them with these params (make validate re-runs what is stale)",
                 "recomputed": "the report's numbers are not what the files give: the report was edited or is "
                               "stale; re-run `mobiledeploy validate`"}
        notes = "".join(f"\n{fixes[kind]}" for kind in dict.fromkeys(v.kind for v in found) if kind in fixes)
        click.echo(f"check: {len(found)} problem(s), {count} gates in {gates_path}:\n{table(found)}{notes}", err=True)
        sys.exit(1)
    how = ", every accuracy measured again from the files" if recompute else ""
    click.echo(f"check: all {count} gates in {gates_path} pass ({report}: every file on disk as validated{how})")


@cli.command("run")
@stage_options
def run_all(params, params_file, overrides, **_):
    """The whole job, as `make all` does it: train (unless model.file), shrink (if structured.enabled),
    prune (unless prune.enabled is false), cluster and qat (if cluster.enabled and quantize.aware ask), convert, validate and check; each stage does nothing if its output
    is current."""
    from .stages.cluster import cluster
    from .stages.convert import convert
    from .stages.prune import prune
    from .stages.qat import qat
    from .stages.shrink import shrink
    from .stages.train import train
    from .stages.validate import validate

    if not params.model.file:
        train(params)
    if params.structured.enabled:
        shrink(params)
    if params.prune.enabled:
        prune(params)
    if params.cluster.enabled:
        cluster(params)
    if params.quantize.aware != "none":
        qat(params)
    convert(params)
    validate(params)
    run_check(params, None, None, False, False, params_file, overrides)


@cli.command()
@click.option("--model", "model_file", help="Your ready-made model (model.file), relative to the repository.")
@click.option("--name", help="The name of your artefacts (default: the folder's name).")
@click.option("--pixels", type=click.Choice(["auto", "raw", "unit", "symmetric"]), default="auto", show_default=True,
              help="How your model expects its pixels (input.pixels).")
@click.option("--dir", "folder", type=click.Path(path_type=Path, file_okay=False), default=".", show_default=True,
              help="The repository to write into.")
def init(model_file, name, pixels, folder):
    """Write a starting params file, a gates folder, a Makefile fragment and a CI workflow into your repository."""
    from .core.project import init_project

    try:
        for path in init_project(folder, model_file, name, pixels):
            click.echo(f"init: wrote {path}")
    except PipelineError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@cli.command()
@click.argument("old", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("new", type=click.Path(path_type=Path, dir_okay=False))
def diff(old, new):
    """Old, new and delta per metric and artefact of two validation reports (e.g. main's and yours)."""
    from .export.report import diff as compare
    from .export.report import load_report

    try:
        click.echo(compare(load_report(old), load_report(new)))
    except PipelineError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@cli.command()
@MODEL_OPTION
@click.option("--untrained", is_flag=True, help="Build the architecture in params instead of loading a model.")
@stage_options
def summary(params, model_path, untrained, **_):
    """Per-layer output shape, parameters, MACs and zero weights, with totals."""
    from .core.keras_io import load_model
    from .export.costs import model_costs, summary_table

    if untrained:
        from .architectures import build
        from .data import load_dataset

        data = load_dataset(params.data, params.seed)
        m = params.model
        model = build(m.architecture, data.input_shape, data.num_classes, width=m.width, dropout=m.dropout,
                      options=m.options, tasks=data.tasks)
    else:
        model = load_model(model_path or require(trained_source(params), "mobiledeploy train"))
    click.echo(summary_table(model_costs(model)))


@cli.command()
@stage_options
def keys(params, **_):
    """Every params key with its value in this config and what it accepts (type, choices, range)."""
    from .core.params import key_table

    rows = [("key", "value", "accepts")] + key_table(params)
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for key, value, accepts in rows:
        click.echo(f"{key.ljust(widths[0])}  {value.ljust(widths[1])}  {accepts}")


@cli.command()
def architectures():
    """List the registered architectures and their default hyperparameters."""
    from .architectures import describe

    for name, arch in describe().items():
        settings = ", ".join(f"{k}={v}" for k, v in arch.hyperparameters.items())
        click.echo(f"{name}\n  {arch.doc}\n  {settings}")


@cli.command()
@stage_options
def zoo(params, **_):
    """Train every variant in params zoo.variants with the same budget; compare costs and accuracy."""
    from .studies.zoo import zoo as run

    run(params)


@cli.command("mtl-compare")
@stage_options
def mtl_compare(params, **_):
    """Single-task baselines, hard and soft sharing (L2, trace norm), uncertainty weighting: one table."""
    from .studies.mtl_compare import mtl_compare as run

    run(params)


@cli.command("recipe-compare")
@stage_options
def recipe_compare(params, **_):
    """The same student trained plain, with the config's augmentation, its teacher, and both: one table."""
    from .studies.recipe_compare import recipe_compare as run

    run(params)


@cli.command()
@click.option("--count", type=int, default=24, show_default=True, help="How many training images to draw.")
@stage_options
def samples(params, count, **_):
    """A PNG grid of training images with their labels (one per task), to look at the data."""
    from .data import load_dataset
    from .studies.pictures import samples as run

    if not 1 <= count <= 200:
        raise PipelineError(f"--count {count}: draw between 1 and 200 images")
    click.echo(f"samples: wrote {run(load_dataset(params.data, params.seed), count, params.name)}")


@cli.command()
@MODEL_OPTION
@click.option("--image", "index", type=int, default=0, show_default=True, help="Index of the test image to draw.")
@stage_options
def pictures(params, model_path, index, **_):
    """PNGs of the first convolution's filters and of a test image's feature maps after each stage."""
    from .data import load_dataset
    from .studies.pictures import pictures as run

    path = model_path or require(trained_source(params), "mobiledeploy train")
    data = load_dataset(params.data, params.seed)
    if not 0 <= index < len(data.x_test):
        raise PipelineError(f"--image {index}: the test set has images 0 to {len(data.x_test) - 1}")
    labels = data.y_test[index] if data.tasks else [data.y_test[index]]
    caption = f"test image {index} ({', '.join(data.class_names[int(label)] for label in labels)})"
    for out in run(path, data.x_test[index], caption):
        click.echo(f"pictures: wrote {out}")


def make_word(path: str | Path) -> str:
    """``path`` as one word of a Make prerequisite list: ``$`` doubled (Make would expand it, and
    ``$(shell ...)`` would run), spaces and the characters Make reads as syntax or wildcards escaped.
    Characters that cannot be escaped for Make are refused with one line."""
    text = Path(path).as_posix()
    bad = sorted({c for c in text if c in "|\\" or not c.isprintable()})
    if bad:
        raise PipelineError(f"path {short(text, 120)}: Make cannot name a file containing {short(''.join(bad))}; "
                            "rename it")
    text = text.replace("$", "$$")
    for c in " #;:*?[]":
        text = text.replace(c, "\\" + c)
    return "./" + text if text.startswith("~") else text


@cli.command()
@stage_options
def paths(params, params_file, **_):
    """Print the artefact paths for these params as Make variables (used by the Makefile)."""
    name = params.name
    words = lambda paths: " ".join(make_word(p) for p in paths)  # noqa: E731
    models = chain(params)
    teacher = params.distill.teacher  # what training also depends on: the teacher's config and model, or its file
    taught = [] if not teacher else [Path(teacher)] if not params.distill.teacher_config else \
        [*param_files(teacher), trained_path(load_params(teacher).name)]
    click.echo(f"NAME := {name}\n"
               f"PARAM_FILES := {words(param_files(params_file))}\n"
               f"TEACHER := {words(taught)}\n"
               f"TRAIN := {'no' if params.model.file else 'yes'}\n"
               + "".join(f"{var} := {make_word(models[stage]) if stage in models else ''}\n" for var, stage in
                         (("TRAINED", "train"), ("SHRUNK", "shrink"), ("PRUNED", "prune"), ("CLUSTERED", "cluster"),
                          ("QAT", "qat"))) +
               f"TFLITE := {words(shipped_tflite(params))}\n"
               f"REPORT := {make_word(report_path(name))}\n"
               f"GATES := {make_word(params.gates_path)}")


def main() -> None:
    cli(prog_name="mobiledeploy")
