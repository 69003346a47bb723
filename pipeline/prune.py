"""Stage 2: TF-MOT magnitude pruning with fine-tuning, then strip the masks."""

from __future__ import annotations

import math
import time
from pathlib import Path

from .artifacts import file_hash, make_record, model_stem, pruned_path, read_record, require, trained_path
from .costs import model_costs, totals
from .data import Dataset, load_dataset
from .errors import PipelineError
from .keras_io import load_model, save_model
from .params import Params, PruneParams
from .tf import keras, tfmot
from .train import as_dataset, compile_for_training, keras_verbosity, rounded_history, seed_everything, \
    split_accuracies

sparsity = tfmot.sparsity.keras


def make_schedule(p: PruneParams, steps_per_epoch: int):
    """The TF-MOT schedule from params; begin and end steps come from the fine-tuning epochs."""
    begin, end = p.begin_epoch * steps_per_epoch, max(p.end_epoch * steps_per_epoch - 1, 1)
    if p.schedule == "constant_sparsity":
        return sparsity.ConstantSparsity(p.final_sparsity, begin_step=begin, end_step=end, frequency=p.frequency)
    return sparsity.PolynomialDecay(initial_sparsity=p.initial_sparsity, final_sparsity=p.final_sparsity,
                                    begin_step=begin, end_step=end, frequency=p.frequency)


def check_input_shape(model, data: Dataset, path: Path) -> None:
    expected = tuple(model.input_shape[1:])
    if expected != data.input_shape:
        raise PipelineError(f"{path}: model input shape {expected} does not match the data's {data.input_shape}")
    classes = model.output_shape[-1]
    if classes != data.num_classes:
        raise PipelineError(f"{path}: model predicts {classes} classes, the data has {data.num_classes}")


# Layers whose kernels magnitude pruning zeroes. TF-MOT also wraps DepthwiseConv2D but prunes none of
# its weights, and prunes only the pointwise kernel of SeparableConv2D; other layers are left as they are.
PRUNABLE = ("Conv2D", "Dense", "SeparableConv2D")


def wrap_for_pruning(model, schedule):
    """A clone of ``model`` with each prunable layer wrapped by ``prune_low_magnitude``."""
    def wrap(layer):
        if type(layer).__name__ in PRUNABLE:
            return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer.__class__.from_config(layer.get_config())

    return keras.models.clone_model(model, clone_function=wrap)


def prune_model(model, data: Dataset, p: PruneParams, seed: int):
    """Wrap ``model`` for pruning, fine-tune it, and return (wrapped, stripped, history)."""
    seed_everything(seed)
    steps = math.ceil(len(data.x_train) / p.batch_size)
    wrapped = wrap_for_pruning(model, make_schedule(p, steps))
    compile_for_training(wrapped, p.learning_rate, steps * p.epochs)
    history = wrapped.fit(as_dataset(data.x_train, data.y_train, p.batch_size, seed),
                          validation_data=as_dataset(data.x_val, data.y_val, 500), epochs=p.epochs,
                          callbacks=[sparsity.UpdatePruningStep()], verbose=keras_verbosity())
    return wrapped, sparsity.strip_pruning(wrapped), history


def prune(params: Params, model_path: Path | None = None) -> Path:
    """Prune the trained model (or a user's ``model_path``); write ``models/<stem>.pruned.keras``."""
    source = model_path or require(trained_path(params.name), "mobiledeploy train")
    if (read_record(source) or {}).get("stage") == "prune":
        raise PipelineError(f"{source} is already a pruned model; give the trained model it came from")
    model = load_model(source)
    if any(type(layer).__name__ == "PruneLowMagnitude" for layer in model.layers):
        raise PipelineError(f"{source} still holds pruning wrappers; prune expects a trained, unwrapped model")
    data = load_dataset(params.data, params.seed)
    check_input_shape(model, data, source)
    out = pruned_path(model_stem(source))
    p = params.prune
    print(f"prune: {p.schedule} to {p.final_sparsity:.0%} over {p.epochs} fine-tuning epochs on {data.describe()}",
          flush=True)
    start = time.perf_counter()
    _, stripped, history = prune_model(model, data, p, params.seed)
    costs = model_costs(stripped)
    metrics = {**split_accuracies(stripped, data), "finetune_seconds": round(time.perf_counter() - start, 1),
               "sparsity": totals(costs)["sparsity"],
               "layer_sparsity": {c.name: round(c.zeros / c.prunable, 4) for c in costs if c.prunable},
               "history": rounded_history(history)}
    record = make_record("prune", params.to_dict(), params.seed,
                         {"model": file_hash(source), "dataset": data.fingerprint},
                         parent=str(source), dataset=data.source, metrics=metrics)
    save_model(stripped, out, record)
    print(f"prune: sparsity {metrics['sparsity']:.1%}, val {metrics['val_accuracy']:.4f}, "
          f"test {metrics['test_accuracy']:.4f} -> {out}", flush=True)
    return out
