"""calbatch's rollout engine: a model loaded once, then free rollouts of many cases in batches,
each step's voxel work done by the C++ core in place (see :mod:`calbatch.engine.core`), on ONNX
Runtime's CPU (the default) or, where installed, an NVIDIA GPU (:mod:`calbatch.engine.backends`)."""

from .backends import BACKENDS
from .core import Case, Engine

__all__ = ["BACKENDS", "Case", "Engine"]
