"""calbatch's runtime: a model file's contract (:mod:`calbatch.surrogate.contract`), the decision
rules, the one stepping loop (:mod:`calbatch.surrogate.step`: a model loaded once, then rollouts of
many cases in batches, each step's voxel work done by the C++ core in place) on ONNX Runtime's CPU
(the default) or, where installed, an NVIDIA GPU (:mod:`calbatch.surrogate.backends`), and its
public face, :class:`Predictor`. A particle model's file steps its spheres behind the same door
(:mod:`calbatch.surrogate.particle_stepper`)."""

from . import particle_stepper  # noqa: F401 (a particle model's file opens as its stepper)
from .backends import BACKENDS
from .predictor import Predictor
from .step import Case

__all__ = ["BACKENDS", "Case", "Predictor"]
