"""Where the network runs. Every backend takes one step's input window (b, nz, ny, nx, 3) uint8
and conditioning (b, 7) float32 on the host and returns the output (b, nz, ny, nx[, 4]) float32 in
a host buffer it owns (reused every step, so valid until its next call):

- ``cpu``: ONNX Runtime's CPU provider (:mod:`calbatch.surrogate.backends.ort`);
- ``ort-cuda``, ``ort-tensorrt``: ONNX Runtime's CUDA / TensorRT execution providers (the
  onnxruntime-gpu package);
- ``tensorrt``: TensorRT itself (:mod:`calbatch.surrogate.backends.tensorrt`).

The window and the decision run on the CPU (the C++ core), so a GPU step moves the window to the
device and the scores back. A GPU backend that cannot start fails with one line naming what is
missing; nothing here is imported by the CPU path beyond onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import CalbatchError
from .base import Backend, cache_dir, output_shape

__all__ = ["BACKENDS", "Backend", "cache_dir", "open_backend", "output_shape"]


def _classes() -> dict[str, type]:
    from .ort import OrtBackend
    from .tensorrt import TensorRTBackend

    return {"cpu": OrtBackend, "ort-cuda": OrtBackend, "ort-tensorrt": OrtBackend, "tensorrt": TensorRTBackend}


BACKENDS = ("cpu", "ort-cuda", "ort-tensorrt", "tensorrt")


def open_backend(name: str, path: Path, session, threads: int | None, batch_size: int, channels: int) -> Backend:
    """The backend ``name`` (one of :data:`BACKENDS`) for the model file ``path``."""
    if name not in BACKENDS:
        raise CalbatchError(f"backend {name!r}: unknown (one of {', '.join(BACKENDS)})")
    return _classes()[name].open(name, path, session, threads, batch_size, channels)
