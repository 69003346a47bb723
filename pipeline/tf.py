"""The single place TensorFlow, Keras 2 and TF-MOT are imported from.

Every model in this project is built with ``tf_keras``; importing through this module guarantees
that ``tf.keras`` is the same Keras 2, so TF-MOT and the TFLite converter see the models they expect.
"""

import tensorflow as tf
import tf_keras as keras
import tensorflow_model_optimization as tfmot

from .errors import PipelineError

if not tf.keras.__name__.startswith("tf_keras"):
    raise PipelineError(
        "TensorFlow was imported with Keras 3 before the pipeline could select Keras 2; "
        "set TF_USE_LEGACY_KERAS=1 or import `pipeline` before `tensorflow`"
    )

__all__ = ["tf", "keras", "tfmot"]
