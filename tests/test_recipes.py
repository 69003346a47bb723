"""train recipes: label smoothing, AdamW weight decay on kernels only, warm-up before the cosine, the
weights' moving average."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT, tiny_dataset
from test_multitask import multi_data

from pipeline import architectures
from pipeline.core.framework import keras, tf
from pipeline.core.params import ParamsError, TrainParams, load_params
from pipeline.training import distribute
from pipeline.training.fit import fit_target, seed_everything
from pipeline.training.recipe import classification_loss, optimizer, schedule
from pipeline.training.resume import fit_resumable


def test_label_smoothing_spreads_the_given_share_over_all_classes():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    labels = np.array([0, 2])
    target = 0.9 * np.eye(3)[labels] + 0.1 / 3
    expected = np.mean(-np.sum(target * np.log(probs), axis=1))
    assert float(classification_loss(False, 0.1)(labels, probs)) == pytest.approx(expected, rel=1e-5)
    logits = np.log(probs)
    assert float(classification_loss(True, 0.1)(labels, logits)) == pytest.approx(expected, rel=1e-5)
    plain = np.mean(-np.log(probs[[0, 1], labels]))
    assert float(classification_loss(False, 0.0)(labels, probs)) == pytest.approx(plain, rel=1e-5)


def test_weight_decay_shrinks_kernels_and_leaves_biases_and_norms_alone():
    # layers whose names hold the excluded words: only the variables so named are left alone
    dense = keras.layers.Dense(2, bias_initializer="ones", name="beta_gamma_bias")
    norm = keras.layers.BatchNormalization(name="bias_norm")
    dense.build((None, 3))
    norm.build((None, 2))
    log_vars = tf.Variable(np.ones(2, np.float32), name="log_vars")  # the multi-task trainer's learned weights
    variables = [dense.kernel, dense.bias, norm.gamma, norm.beta, log_vars]
    before = [v.numpy() for v in variables]
    # zero gradients: Adam moves nothing, so what changes is the decay alone
    optimizer(0.1, TrainParams(weight_decay=0.5)).apply_gradients(
        zip([tf.zeros_like(v) for v in variables], variables))
    np.testing.assert_allclose(dense.kernel.numpy(), before[0] * (1 - 0.1 * 0.5), rtol=1e-6)
    for value, was in zip(variables[1:], before[1:]):
        np.testing.assert_array_equal(value.numpy(), was)
    assert isinstance(optimizer(0.1, TrainParams()), keras.optimizers.Adam)


def test_warm_up_rises_from_zero_then_the_cosine_decays_to_zero():
    rate = schedule(TrainParams(epochs=4, warmup_epochs=1, learning_rate=1e-3), steps_per_epoch=10)
    values = [float(rate(step)) for step in (0, 5, 10, 25, 40)]
    assert values[:3] == pytest.approx([0.0, 5e-4, 1e-3], abs=1e-9)
    assert values[3] == pytest.approx(5e-4, rel=1e-3)  # half way down the cosine
    assert values[4] == pytest.approx(0.0, abs=1e-9)
    plain = schedule(TrainParams(epochs=4, learning_rate=1e-3), steps_per_epoch=10)
    assert float(plain(0)) == pytest.approx(1e-3)


@pytest.mark.parametrize("override,message", [
    ("train.warmup_epochs=12", "train.warmup_epochs: must be fewer than train.epochs (12), got 12"),
    ("train.label_smoothing=0.7", "train.label_smoothing"),
    ("train.weight_decay=-1", "train.weight_decay"),
    ("train.ema=1", "train.ema"),
])
def test_recipe_keys_that_cannot_work_are_refused(override, message):
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_params(ROOT / "params.yaml", [override])


def test_ema_validates_and_keeps_the_moving_average_of_each_steps_weights():
    data = tiny_dataset()
    seed_everything(0)
    model = architectures.build("tiny", data.input_shape, data.num_classes)
    momentum = 0.8
    target = fit_target(model, data, TrainParams(ema=momentum), 0.01, average=True)
    average = [v.numpy() for v in model.trainable_variables]  # the average starts at the initial weights
    averages, own = [], []  # after each epoch

    class Follow(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for i, v in enumerate(model.trainable_variables):
                average[i] = momentum * average[i] + (1 - momentum) * v.numpy()

        def on_epoch_end(self, epoch, logs=None):
            averages.append([a.copy() for a in average])
            own.append([v.numpy() for v in model.trainable_variables])  # the average is not trained on

    feed = distribute.datasets(tf.distribute.get_strategy(), data, 32, 0, "train.batch_size")
    keep = fit_resumable(target, feed, 4, None, "", callbacks=[Follow()])
    best = keep.best_epoch
    for kept, expected, trained in zip(model.trainable_variables, averages[best], own[best]):
        np.testing.assert_allclose(kept.numpy(), expected, rtol=1e-4, atol=1e-6)
        assert not np.allclose(expected, trained, rtol=1e-3)
    # the validation pass that chose the epoch ran on the averaged weights
    loss, score = model.evaluate(feed.val, verbose=0)
    assert (loss, score) == pytest.approx((keep.history["val_loss"][best], keep.history["val_accuracy"][best]), abs=1e-4)


def test_ema_is_off_unless_asked_and_in_fine_tuning():
    assert not optimizer(0.1, TrainParams()).use_ema
    assert not optimizer(0.1, TrainParams(ema=0.99)).use_ema  # fine-tunings do not ask for the average
    adamw = optimizer(0.1, TrainParams(ema=0.99, weight_decay=0.1), average=True)
    assert (adamw.use_ema, adamw.ema_momentum, type(adamw)) == (True, 0.99, keras.optimizers.AdamW)


@pytest.mark.parametrize("tasks", [False, True], ids=["compiled model", "multi-task trainer"])
def test_a_fit_traces_its_training_step_once(tasks):
    # variables made inside the first trace (the optimizer's, the compiled accuracy's) would make
    # TensorFlow trace the step a second time: seconds per fit, in every stage that trains
    data = multi_data() if tasks else tiny_dataset()
    model = architectures.build("tiny", data.input_shape, data.num_classes, tasks=data.tasks)
    target = fit_target(model, data, TrainParams(), 1e-3)
    distribute.datasets(tf.distribute.get_strategy(), data, 32, 0, "train.batch_size").fit(target, epochs=2, verbose=0)
    assert target.train_function.experimental_get_tracing_count() == 1
