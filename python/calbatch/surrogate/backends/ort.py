"""The ONNX Runtime backends: ``cpu`` (the session :func:`calbatch.surrogate.contract.load_onnx`
opened; I/O binding writes the output straight into the reused buffer, no allocation per step) and
``ort-cuda``, ``ort-tensorrt`` (the onnxruntime-gpu package; the window is copied into a device
tensor bound to the session, the output copied back into the host buffer; the TensorRT provider
gets an optimisation profile for batch 1 to ``batch_size`` on the grid and caches its engines on
disk, :func:`calbatch.surrogate.backends.cache_dir`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import CalbatchError
from ..contract import COND_NAMES
from .base import cache_dir, output_shape

_PROVIDERS = {"ort-cuda": "CUDAExecutionProvider", "ort-tensorrt": "TensorrtExecutionProvider"}


class OrtBackend:
    """An ONNX Runtime session per grid (one for every grid unless the provider compiles per
    grid), run with I/O binding into reused host buffers."""

    def __init__(self, name: str, session_for, channels: int, batch_size: int):
        self.name, self._session_for, self.channels, self.batch_size = name, session_for, channels, batch_size
        self.device = "cpu" if name == "cpu" else "cuda"
        self._grids: dict[tuple, dict] = {}  # per grid: session, output buffer, bindings per batch size

    @classmethod
    def open(cls, name: str, path: Path, session, threads: int | None, batch_size: int, channels: int) -> OrtBackend:
        if name == "cpu":
            return cls(name, lambda _grid: session, channels, batch_size)
        return cls(name, _gpu_sessions(name, path, threads, batch_size), channels, batch_size)

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
        raise CalbatchError(f"backend {name}: {what} (onnxruntime {ort.__version__} offers {', '.join(available)})")

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
            raise CalbatchError(f"backend {name}: ONNX Runtime could not open {path} on the GPU "
                                f"({str(exc).splitlines()[0][:160]})") from None
        if session.get_providers()[0] != provider:
            raise CalbatchError(f"backend {name}: ONNX Runtime could not start {provider} "
                                "(no NVIDIA GPU, or its CUDA/cuDNN/TensorRT libraries are missing)")
        return session

    if name == "ort-cuda":  # one session for every grid: open it now, so a missing GPU fails here
        session = session_for(None)
        return lambda _grid: session
    return session_for
