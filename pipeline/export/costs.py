"""Parameters, multiply-accumulates and zero weights per layer, counted from the layers' shapes."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str
    output_shape: tuple
    params: int
    macs: int
    prunable: int  # weights in kernels (what magnitude pruning acts on)
    zeros: int     # of those, exactly zero


def _spatial(shape) -> int:
    """Product of all output dimensions except batch and channels."""
    return int(np.prod([d for d in shape[1:-1]])) if len(shape) > 2 else 1


def _own_weights(layer) -> tuple[str, dict]:
    """(kind, weight name -> variable) of ``layer``; for a TF-MOT quantize wrapper, of the layer it holds
    (its variables are the wrapper's; the quantizers' ranges and step counter are left out)."""
    wrapped = type(layer).__name__.startswith("QuantizeWrapper")
    weights = {}
    for w in layer.weights:
        base = w.name.split("/")[-1].split(":")[0]
        if not (wrapped and (base == "optimizer_step" or base.endswith(("_min", "_max")))):
            weights[base] = w
    return type(layer.layer if wrapped else layer).__name__, weights


def layer_cost(layer) -> LayerCost:
    kind, weights = _own_weights(layer)
    out = layer.output_shape
    out_shape = tuple(out[0] if isinstance(out, list) else out)
    params = int(sum(np.prod(w.shape) for w in weights.values()))
    macs, kernels = 0, []
    if kind in ("Conv2D", "Dense"):
        kernel = weights["kernel"]
        kernels = [kernel]
        # each output element does one MAC per kernel weight feeding it: k_h * k_w * c_in (conv), c_in (dense)
        fan_in = int(np.prod(kernel.shape[:-1])) // getattr(getattr(layer, "layer", layer), "groups", 1)
        macs = _spatial(out_shape) * int(out_shape[-1]) * fan_in
    elif kind == "DepthwiseConv2D":
        kernel = weights["depthwise_kernel"]
        kernels = [kernel]
        macs = _spatial(out_shape) * int(out_shape[-1]) * int(np.prod(kernel.shape[:2]))
    elif kind == "SeparableConv2D":
        dw, pw = weights["depthwise_kernel"], weights["pointwise_kernel"]
        kernels = [dw, pw]
        macs = _spatial(out_shape) * (int(np.prod(dw.shape[:2])) * int(dw.shape[2] * dw.shape[3])
                                      + int(pw.shape[2]) * int(pw.shape[3]))
    prunable = int(sum(np.prod(k.shape) for k in kernels))
    zeros = int(sum(np.count_nonzero(k.numpy() == 0) for k in kernels))
    return LayerCost(layer.name, kind, out_shape, params, macs, prunable, zeros)


def model_costs(model) -> list[LayerCost]:
    return [layer_cost(layer) for layer in model.layers if type(layer).__name__ != "InputLayer"]


def totals(costs: list[LayerCost]) -> dict[str, float]:
    params = sum(c.params for c in costs)
    prunable = sum(c.prunable for c in costs)
    zeros = sum(c.zeros for c in costs)
    return {"params": params, "macs": sum(c.macs for c in costs), "prunable_weights": prunable,
            "zero_weights": zeros, "sparsity": zeros / prunable if prunable else 0.0}


def summary_table(costs: list[LayerCost]) -> str:
    """A per-layer table with totals, for people."""
    rows = [("layer", "kind", "output", "params", "MACs", "zeros")]
    for c in costs:
        rows.append((c.name, c.kind, "x".join(str(d) for d in c.output_shape[1:]), f"{c.params:,}",
                     f"{c.macs:,}", f"{c.zeros / c.prunable:.1%}" if c.prunable else "-"))
    t = totals(costs)
    rows.append(("total", "", "", f"{t['params']:,}", f"{t['macs']:,}", f"{t['sparsity']:.1%}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))) for row in rows)
