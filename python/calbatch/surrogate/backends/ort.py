"""Where the engine's network runs. Every backend takes one step's input window (b, nz, ny, nx, 3)
uint8 and conditioning (b, 7) float32 on the host and returns the output (b, nz, ny, nx[, 4])
float32 in a host buffer it owns (reused every step, so valid until its next call).

- ``cpu``: ONNX Runtime's CPU provider, the session :func:`calbatch.model.export.load_onnx` opened; I/O
  binding writes the output straight into the reused buffer (no allocation per step).
- ``ort-cuda``, ``ort-tensorrt``: ONNX Runtime's CUDA / TensorRT execution providers (the
  onnxruntime-gpu package); the window is copied into a device tensor bound to the session, the
  output copied back into the host buffer. The TensorRT provider gets an optimisation profile for
  batch 1 to ``batch_size`` on the grid and caches its engines on disk (:func:`cache_dir`).
- ``tensorrt``: TensorRT itself (:mod:`calbatch.surrogate.backends.tensorrt`).

The window and the decision run on the CPU (the C++ core), so a GPU step moves the window to the
device and the scores back. A GPU backend that cannot start fails with one line naming what is
missing; nothing here is imported by the CPU path beyond onnxruntime.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import CalbatchError
from ...model.dataset import COND_NAMES

BACKENDS = ("cpu", "ort-cuda", "ort-tensorrt", "tensorrt")
_PROVIDERS = {"ort-cuda": "CUDAExecutionProvider", "ort-tensorrt": "TensorrtExecutionProvider"}


def cache_dir(kind: str) -> Path:
    """The folder of compiled GPU engines: $CALBATCH_CACHE/<kind>, default ~/.cache/calbatch/<kind>."""
    root = os.environ.get("CALBATCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "calbatch")
    return Path(root) / kind


def output_shape(b: int, grid: tuple, channels: int) -> tuple:
    """The network output of ``b`` cases on ``grid``: class scores (channels 4) or codes (0)."""
    return (b, *grid, channels) if channels else (b, *grid)


def open_backend(name: str, path: Path, session, threads: int | None, batch_size: int, channels: int):
    """The backend ``name`` for the model file ``path`` (``session``: its CPU session, open)."""
    if name == "cpu":
        return OrtBackend(name, lambda grid: session, channels, batch_size)
    if name in _PROVIDERS:
        return OrtBackend(name, _gpu_sessions(name, path, threads, batch_size), channels, batch_size)
    if name == "tensorrt":
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(path, batch_size, channels)
    raise CalbatchError(f"--backend {name!r}: unknown (one of {', '.join(BACKENDS)})")


class OrtBackend:
    """An ONNX Runtime session per grid (one for every grid unless the provider compiles per
    grid), run with I/O binding into reused host buffers."""

    def __init__(self, name: str, session_for, channels: int, batch_size: int):
        self.name, self._session_for, self.channels, self.batch_size = name, session_for, channels, batch_size
        self.device = "cpu" if name == "cpu" else "cuda"
        self._grids: dict[tuple, dict] = {}  # per grid: session, output buffer, bindings per batch size

    def _state(self, grid: tuple) -> dict:
        if grid not in self._grids:
            if len(self._grids) >= 2:  # a screen runs one grid at a time: keep the last two
                self._grids.pop(next(iter(self._grids)))
            session = self._session_for(grid)
            self._grids[grid] = {"session": session, "output_name": session.get_outputs()[0].name,
                                 "out": np.empty(output_shape(self.batch_size, grid, self.channels), np.float32),
                                 "bound": {}}
        return self._grids[grid]

    def session(self, grid: tuple):
        """The ONNX Runtime session that runs cases on ``grid``."""
        return self._state(tuple(grid))["session"]

    def run(self, x: np.ndarray, cond: np.ndarray) -> np.ndarray:
        import onnxruntime as ort

        b, grid = x.shape[0], tuple(x.shape[1:4])
        state = self._state(grid)
        session = state["session"]
        if b not in state["bound"]:
            io = session.io_binding()
            out = state["out"][:b]
            out_value = ort.OrtValue.ortvalue_from_numpy(out)  # wraps the host buffer, no copy
            io.bind_ortvalue_output(state["output_name"], out_value)
            x_dev = None if self.device == "cpu" else ort.OrtValue.ortvalue_from_shape_and_type(x.shape, np.uint8, "cuda", 0)
            state["bound"][b] = (io, out, out_value, x_dev)
        io, out, _, x_dev = state["bound"][b]
        if x_dev is None:
            io.bind_cpu_input("frames", x)
        else:
            x_dev.update_inplace(x)  # host -> device into the bound tensor
            io.bind_ortvalue_input("frames", x_dev)
        io.bind_cpu_input("cond", cond)
        session.run_with_iobinding(io)
        return out


def _gpu_sessions(name: str, path: Path, threads: int | None, batch_size: int):
    """A function grid -> ONNX Runtime session on the GPU provider of backend ``name``; fails at
    once, in one line, where onnxruntime-gpu or the GPU is missing."""
    import onnxruntime as ort

    provider = _PROVIDERS[name]
    available = ort.get_available_providers()
    if provider not in available:
        what = "onnxruntime-gpu is not installed" if "CUDAExecutionProvider" not in available else \
            "this onnxruntime-gpu has no TensorRT provider"
        raise CalbatchError(f"--backend {name}: {what} (onnxruntime {ort.__version__} offers {', '.join(available)})")

    def options(grid) -> list:
        cuda = ("CUDAExecutionProvider", {"device_id": 0})
        if name == "ort-cuda":
            return [cuda, "CPUExecutionProvider"]
        nz, ny, nx = grid
        shapes = [f"frames:{b}x{nz}x{ny}x{nx}x3,cond:{b}x{len(COND_NAMES)}" for b in (1, batch_size, batch_size)]
        folder = cache_dir("ort-tensorrt")
        folder.mkdir(parents=True, exist_ok=True)
        trt = {"device_id": 0, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(folder),
               "trt_timing_cache_enable": True, "trt_timing_cache_path": str(folder),
               "trt_profile_min_shapes": shapes[0], "trt_profile_opt_shapes": shapes[1], "trt_profile_max_shapes": shapes[2]}
        return [(provider, trt), cuda, "CPUExecutionProvider"]

    def session_for(grid):
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), opts, providers=options(grid))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CalbatchError(f"--backend {name}: ONNX Runtime could not open {path} on the GPU "
                                f"({str(exc).splitlines()[0][:160]})") from None
        if session.get_providers()[0] != provider:
            raise CalbatchError(f"--backend {name}: ONNX Runtime could not start {provider} "
                                "(no NVIDIA GPU, or its CUDA/cuDNN/TensorRT libraries are missing)")
        return session

    if name == "ort-cuda":  # one session for every grid: open it now, so a missing GPU fails here
        session = session_for(None)
        return lambda grid: session
    return session_for
