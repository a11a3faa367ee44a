"""calbatch's rollout engine: a model loaded once, then free rollouts of many cases in batches,
each step's voxel work done by the C++ core in place (see :mod:`calbatch.surrogate.engine`), on ONNX
Runtime's CPU (the default) or, where installed, an NVIDIA GPU (:mod:`calbatch.surrogate.backends.ort`)."""

from .backends.ort import BACKENDS
from .engine import Case, Engine

__all__ = ["BACKENDS", "Case", "Engine"]
