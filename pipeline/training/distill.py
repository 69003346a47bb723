"""Knowledge distillation (Hinton et al. 2015): a teacher's outputs, softened by a temperature, are a
second target for the model being trained, beside its labels.

Per task and image, the loss is ``(1 - weight) * CE(label, student) + weight * T^2 * KL(teacher_T ||
student_T)``, where ``x_T`` is the softmax of an output's logits divided by the temperature ``T``
(``T^2`` keeps the soft term's gradients on the scale of the hard one's). The teacher runs in inference
mode on the very batch the student sees, augmented or not, and is never trained. Its input contract may
differ from the student's: each batch is carried from one to the other (both are affine in the pixels).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..core.contract import InputContract, by_output, logits_by_output, resolve
from ..core.errors import PipelineError
from ..core.framework import tf
from ..core.keras_io import check_fits_data, load_model
from ..core.params import DistillParams, InputParams
from ..data import Dataset

EPSILON = 1e-7  # floor of a probability before its logarithm (a softmax output's logits, up to a constant)


@dataclasses.dataclass
class Teacher:
    """A loaded teacher: its model (frozen), how a student input batch becomes its input
    (``x * scale + offset``), whether each of its outputs gives logits, and the distillation settings."""
    model: object
    where: str
    scale: np.ndarray
    offset: np.ndarray
    logits: dict[str, bool]
    temperature: float
    weight: float

    def logits_for(self, x, names: tuple[str, ...]) -> dict:
        """The teacher's logits for a student input batch, keyed by the student's output (task) names:
        the same names for multi-task models, the one output for single-task ones."""
        out = by_output(self.model, self.model(x * self.scale + self.offset, training=False))
        if len(out) == 1:
            (name, value), = out.items()
            return {names[0]: as_logits(value, self.logits[name])}
        return {name: as_logits(out[name], self.logits[name]) for name in names}


@dataclasses.dataclass(frozen=True)
class TeacherFile:
    """A teacher not loaded yet (it is loaded where the fit's variables are placed, under its distribution
    strategy). ``contract``: its input contract when known (a fine-tuning's parent has the student's)."""
    path: Path
    params: DistillParams
    contract: InputContract | None = None

    def load(self, data: Dataset) -> Teacher:
        return load_teacher(self.path, self.params, data, self.contract)

    def describe(self) -> str:
        return (f"distilled from {self.path} (temperature {self.params.temperature:g}, weight "
                f"{self.params.weight:g})")


def as_logits(scores, logits: bool):
    """An output as logits: itself, or the logarithm of its probabilities."""
    return scores if logits else tf.math.log(tf.maximum(scores, EPSILON))


def soft_loss(teacher_logits, student_logits, temperature: float):
    """Per image: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``."""
    teacher = tf.nn.softmax(teacher_logits / temperature)
    student = tf.nn.log_softmax(student_logits / temperature)
    kl = tf.reduce_sum(teacher * (tf.math.log(tf.maximum(teacher, EPSILON)) - student), axis=-1)
    return temperature ** 2 * kl


def load_teacher(path: Path, p: DistillParams, data: Dataset, contract: InputContract | None = None) -> Teacher:
    """The teacher in ``path`` for a student fed ``data``. ``contract`` is the teacher's input contract
    when it is known (the student's own parent); otherwise it is read from the teacher (its leading
    Rescaling or Normalization layer) or ``p.teacher_pixels``. Refused with one line if the teacher does
    not fit the data: its input shape, one output per task (named after the tasks), classes."""
    where = f"distill teacher {path}"
    model = load_model(path)
    if any(type(layer).__name__ == "PruneLowMagnitude" for layer in model.layers):
        raise PipelineError(f"{where} still holds pruning wrappers; give a trained or stripped model")
    try:
        check_fits_data(model, data, path)
    except PipelineError as exc:
        raise PipelineError(f"distill teacher {exc}") from None
    channels = data.input_shape[-1]
    if contract is None:
        try:
            contract = resolve(InputParams(pixels=p.teacher_pixels), model, where, channels)
        except PipelineError:
            raise PipelineError(f"{where} does not start with a Rescaling or Normalization layer, so the pipeline "
                                "cannot tell how it expects its pixels; declare it: --set distill.teacher_pixels="
                                "unit (pixel/255), symmetric (pixel/127.5 - 1) or raw (0-255)") from None
    model.trainable = False
    student = data.contract
    # teacher input = pixel * t_scale + t_offset, pixel = (x - s_offset) / s_scale for a student input x
    s_scale, s_offset = (np.broadcast_to(np.asarray(v, np.float32), (channels,)) for v in (student.scale, student.offset))
    t_scale, t_offset = (np.broadcast_to(np.asarray(v, np.float32), (channels,)) for v in (contract.scale, contract.offset))
    scale = t_scale / s_scale
    offset = t_offset - s_offset * scale
    teacher = Teacher(model, where, scale, offset, {}, p.temperature, p.weight)
    probe = {name: np.asarray(value) for name, value in
             by_output(model, model(contract.apply(data.x_train[:32]), training=False)).items()}
    if not all(np.isfinite(value).all() for value in probe.values()):
        raise PipelineError(f"{where} gives non-finite outputs (NaN or inf) on training images: it cannot teach")
    teacher.logits = logits_by_output(probe)
    return teacher
