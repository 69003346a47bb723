from pipeline.core.framework import keras
from pipeline.export.costs import model_costs, summary_table, totals


def test_macs_and_params_match_hand_arithmetic():
    L = keras.layers
    inputs = keras.Input((8, 8, 2))
    x = L.Conv2D(4, 3, padding="same", name="conv")(inputs)             # 8*8*4 outputs x (3*3*2) MACs
    x = L.MaxPooling2D(name="pool")(x)                                   # -> 4x4x4, no MACs
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)               # 4*4*4 outputs x (3*3) MACs
    x = L.Conv2D(2, 1, use_bias=False, name="pw")(x)                     # 4*4*2 outputs x 4 MACs
    x = L.Flatten(name="flat")(x)
    outputs = L.Dense(3, name="dense")(x)                                # 3 outputs x 32 MACs
    costs = {c.name: c for c in model_costs(keras.Model(inputs, outputs))}
    assert costs["conv"].macs == 8 * 8 * 4 * 3 * 3 * 2 == 4608
    assert costs["conv"].params == 3 * 3 * 2 * 4 + 4
    assert costs["pool"].macs == 0 and costs["pool"].output_shape[1:] == (4, 4, 4)
    assert costs["dw"].macs == 4 * 4 * 4 * 9
    assert costs["pw"].macs == 4 * 4 * 2 * 4
    assert costs["dense"].macs == 3 * 32
    assert totals(list(costs.values()))["macs"] == 4608 + 576 + 128 + 96


def test_zero_weights_are_counted_as_sparsity():
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(5, name="dense")
    model = keras.Model(inputs, dense(inputs))
    kernel, bias = dense.get_weights()
    kernel[:2] = 0  # 2 of 4 input rows -> 10 of 20 weights
    dense.set_weights([kernel, bias])
    t = totals(model_costs(model))
    assert (t["zero_weights"], t["prunable_weights"], t["sparsity"]) == (10, 20, 0.5)
    assert "50.0%" in summary_table(model_costs(model))
