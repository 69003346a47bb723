"""mobiledeploy: train, prune, convert, validate and gate Keras CNNs for mobile deployment.

TF-MOT 0.8 works only with Keras 2 (``tf_keras``). TensorFlow reads ``TF_USE_LEGACY_KERAS`` once,
when it is first imported, so the switch is set here, before any module of this package can import
TensorFlow; :mod:`pipeline.core.framework` refuses to go on if TensorFlow was imported earlier with Keras 3.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
