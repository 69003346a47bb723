"""The single place TensorFlow, Keras 2 and TF-MOT are imported from.

Every model in this project is built with ``tf_keras``; importing through this module guarantees
that ``tf.keras`` is the same Keras 2, so TF-MOT and the TFLite converter see the models they expect.

TensorFlow's native start-up lines (oneDNN, CUDA stubs, a ``cuInit`` error on a machine without a
GPU) and the converter's chatter are written by C++ straight to file descriptor 2; they are silenced
unless ``--verbose`` (``MOBILEDEPLOY_VERBOSE=1``) asks for them. Progress and results are untouched.
"""

import contextlib
import os
import sys
import warnings

from .errors import PipelineError

VERBOSE_ENV = "MOBILEDEPLOY_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextlib.contextmanager
def native_output_silenced():
    """Within the block, what native code writes to stderr goes to /dev/null (not with --verbose),
    and so do Python warnings; Python errors raised in the block are printed after it, as usual."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


with native_output_silenced():
    import tensorflow as tf

    if not tf.keras.__name__.startswith("tf_keras"):  # (before importing more only to refuse)
        raise PipelineError(
            "TensorFlow was imported with Keras 3 before the pipeline could select Keras 2; "
            "set TF_USE_LEGACY_KERAS=1 or import `pipeline` before `tensorflow`"
        )
    import tf_keras as keras

    # tf_keras leaves `synchronized` out of BatchNormalization's config, so a clone of a layer synchronised
    # across replicas was not. Pruning, clustering and QAT wrap a clone of the replica they fine-tune, so
    # under train.sync_batchnorm each replica normalised its own part of the batch, and a mirrored fine-tuning
    # took other steps than one device. The key is written only when true: a model saved outside a strategy
    # has none (pipeline.training.distribute.local_copy), and its file stays as tf_keras writes it
    _batch_norm_config = keras.layers.BatchNormalization.get_config

    def _batch_norm_config_with_sync(layer):
        config = _batch_norm_config(layer)
        if layer.synchronized:
            config["synchronized"] = True
        return config

    keras.layers.BatchNormalization.get_config = _batch_norm_config_with_sync

    # TF-MOT's pruning registry tries `keras.src.engine` (a Keras 2 path) from the `keras` package, which
    # imports all of Keras 3 (0.7 to 1.3 s of every command's start, docs/test-time.md) only to fail and fall
    # back. Unless Keras 3 is loaded already, that import fails at once instead: the same fallback, the same
    # registry, and `keras` stays importable afterwards (keras3() below)
    _blocked = "keras" not in sys.modules
    if _blocked:
        sys.modules["keras"] = None
    try:
        import tensorflow_model_optimization as tfmot
    finally:
        if _blocked:
            del sys.modules["keras"]

    tf.config.list_physical_devices()  # device discovery (and its cuInit error) happens here, silenced
    if not verbose():
        tf.get_logger().setLevel("ERROR")


def keras3():
    """Keras 3 itself (not tf.keras), imported only to read a model file a user saved with it."""
    with native_output_silenced():
        import keras as keras_3
    return keras_3


__all__ = ["tf", "keras", "keras3", "tfmot", "native_output_silenced"]
