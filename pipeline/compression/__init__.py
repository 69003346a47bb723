"""Making models smaller: TF-MOT magnitude pruning, clustering and quantization-aware training, and
channel pruning (``channels``)."""


def wrapped_copy(model, wrap):
    """A copy of ``model`` holding its weights (batch-norm statistics too) in which each layer is
    ``wrap(layer)``: every wrapped layer starts where ``model`` left it, and ``model`` stays as it is."""
    from ..core.framework import keras  # here: the cheap commands import this package without TensorFlow

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return keras.models.clone_model(copy, clone_function=wrap)
