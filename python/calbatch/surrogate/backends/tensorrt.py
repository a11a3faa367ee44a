"""The engine's ``tensorrt`` backend: TensorRT itself, no ONNX Runtime in the step.

Per grid, a TensorRT engine is built from the ONNX file with one optimisation profile (batch 1 to
``batch_size``) and cached on disk (:func:`calbatch.surrogate.backends.cache_dir`), keyed by the
model file's hash, the TensorRT version, the GPU's name, the batch size and the grid; the network
is created strongly typed where TensorRT offers it (TensorRT 10+; 11 has only that), so it runs in
the ONNX file's precision (an FP16 model comes from an FP16 ONNX file, not a builder flag). Device
buffers and the stream are CuPy's. Inputs are copied to the device and the output back every step
(the window and the decision run on the CPU).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from ...errors import CalbatchError
from ..contract import COND_NAMES
from .base import cache_dir, output_shape


def _require():
    try:
        import tensorrt as trt
    except ImportError:
        raise CalbatchError("backend tensorrt: the tensorrt package is not installed") from None
    try:
        import cupy as cp
    except ImportError:
        raise CalbatchError("backend tensorrt: cupy is not installed (it holds TensorRT's device buffers)") from None
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            raise CalbatchError("backend tensorrt: no CUDA GPU found")
    except cp.cuda.runtime.CUDARuntimeError as exc:
        raise CalbatchError(f"backend tensorrt: no usable CUDA GPU ({exc})") from None
    return trt, cp


class TensorRTBackend:
    name, device = "tensorrt", "cuda"

    @classmethod
    def open(cls, name: str, path: Path, session, threads: int | None, batch_size: int,  # noqa: ARG003 (the protocol's)
             channels: int) -> TensorRTBackend:
        return cls(path, batch_size, channels)

    def __init__(self, path: Path, batch_size: int, channels: int):
        self.trt, self.cp = _require()
        self.path, self.batch_size, self.channels = Path(path), batch_size, channels
        self.model_hash = hashlib.sha256(self.path.read_bytes()).hexdigest()
        name = self.cp.cuda.runtime.getDeviceProperties(self.cp.cuda.Device().id)["name"]
        self.gpu = name.decode() if isinstance(name, bytes) else str(name)
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.stream = self.cp.cuda.Stream(non_blocking=True)
        self._grids: dict[tuple, dict] = {}

    def engine_file(self, grid: tuple) -> Path:
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu).strip("-")
        nz, ny, nx = grid
        key = f"{self.model_hash[:16]}_trt{self.trt.__version__}_{gpu}_b{self.batch_size}_{nz}x{ny}x{nx}.engine"
        return cache_dir("tensorrt") / key

    def _build(self, grid: tuple) -> bytes:
        trt = self.trt
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        elif hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT 8
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        builder = trt.Builder(self.logger)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(self.path)):
            first = parser.get_error(0).desc() if parser.num_errors else "unknown error"
            raise CalbatchError(f"backend tensorrt: TensorRT cannot parse {self.path} ({first})")
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        b = self.batch_size
        profile.set_shape("frames", (1, *grid, 3), (b, *grid, 3), (b, *grid, 3))
        profile.set_shape("cond", (1, len(COND_NAMES)), (b, len(COND_NAMES)), (b, len(COND_NAMES)))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise CalbatchError(f"backend tensorrt: TensorRT could not build an engine of {self.path} for grid {list(grid)}")
        return bytes(serialized)

    def _state(self, grid: tuple) -> dict:
        if grid in self._grids:
            return self._grids[grid]
        self._grids.clear()  # one grid's engine and buffers on the device at a time
        file = self.engine_file(grid)
        if file.is_file():
            data = file.read_bytes()
        else:
            data = self._build(grid)
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, file)  # whole or absent, also with ranks building at once
        runtime = self.trt.Runtime(self.logger)  # kept with its engine: the engine must not outlive it
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise CalbatchError(f"backend tensorrt: the cached engine {file} does not load; delete it to rebuild")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        outputs = [n for n in names if engine.get_tensor_mode(n) == self.trt.TensorIOMode.OUTPUT]
        cp, b = self.cp, self.batch_size
        state = {"runtime": runtime, "engine": engine, "context": engine.create_execution_context(), "output": outputs[0],
                 "frames": cp.empty((b, *grid, 3), dtype=cp.uint8),
                 "cond": cp.empty((b, len(COND_NAMES)), dtype=cp.float32),
                 "out": cp.empty(output_shape(b, grid, self.channels), dtype=cp.float32),
                 "host": np.empty(output_shape(b, grid, self.channels), dtype=np.float32)}
        self._grids[grid] = state
        return state

    def run(self, x: np.ndarray, cond: np.ndarray) -> np.ndarray:
        b, grid = x.shape[0], tuple(x.shape[1:4])
        s = self._state(grid)
        ctx, stream = s["context"], self.stream
        s["frames"][:b].set(x, stream=stream)
        s["cond"][:b].set(cond, stream=stream)
        ctx.set_input_shape("frames", x.shape)
        ctx.set_input_shape("cond", cond.shape)
        ctx.set_tensor_address("frames", s["frames"].data.ptr)
        ctx.set_tensor_address("cond", s["cond"].data.ptr)
        ctx.set_tensor_address(s["output"], s["out"].data.ptr)
        if not ctx.execute_async_v3(stream.ptr):
            raise CalbatchError("backend tensorrt: TensorRT failed to run the network")
        host = s["host"][:b]
        s["out"][:b].get(stream=stream, out=host)
        stream.synchronize()
        return host
