import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Open MPI refuses to start as root (CI runs as root) unless told it may.
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
# Two ranks on a machine whose slots Open MPI counts lower than its cores.
os.environ.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
# Captured before any test initialises MPI in this process: that adds OMPI_/PMIX_ variables which
# make a child mpirun fail silently, so subprocesses get this copy, not os.environ.
BASE_ENV = dict(os.environ)


def _missing() -> dict[str, str | None]:
    """Why each tool-bound marker's tests cannot run here (None: they can)."""
    mpi = [name for name in ("mpi4py", "petsc4py") if importlib.util.find_spec(name) is None]
    if shutil.which("mpirun") is None:
        mpi.append("mpirun")
    return {
        "liggghts": None if shutil.which("liggghts") else "LIGGGHTS is not installed (apt-get install liggghts)",
        "mpi": f"{', '.join(mpi)} missing (bash tools/setup.sh)" if mpi else None,
    }


def pytest_collection_modifyitems(config, items):
    """Skip, with the reason, the tests whose tool is missing; never fail for that."""
    missing = _missing()
    for item in items:
        for marker, reason in missing.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


def run_cli(*args, ranks: int | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m calbatch ARGS`` as a user would (under ``mpirun -n RANKS`` when given);
    ``env`` holds variables to set on top of BASE_ENV."""
    command = [sys.executable, "-m", "calbatch", *map(str, args)]
    if ranks is not None:
        command = ["mpirun", "-n", str(ranks), *command]
    return subprocess.run(command, capture_output=True, text=True, env={**BASE_ENV, **(env or {})},
                          timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """A clean user error: non-zero exit, one stderr line naming the fragments, no traceback."""
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def random_volume(shape=(24, 16, 16), seed=0, void_top=4) -> np.ndarray:
    """A random electrode-like volume: codes 0/1/2 below, void in the top ``void_top`` slices."""
    rng = np.random.default_rng(seed)
    vol = rng.choice(np.array([0, 1, 2], dtype=np.uint8), size=shape, p=[0.4, 0.1, 0.5])
    if void_top:
        vol[-void_top:] = 4
    return vol


def particle_volume(shape=(24, 16, 16), seed=0, void_top=4) -> np.ndarray:
    """An electrode-like volume of particles: AM balls (radius 2.5 voxels) and CBD balls (1.5) at
    random centres in pore, periodic in x and y, void in the top ``void_top`` slices."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    vol = np.zeros(shape, dtype=np.uint8)
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    for code, radius, n in ((1, 1.5, 12), (2, 2.5, 14)):  # AM last: it wins where balls overlap
        for cz, cy, cx in rng.uniform(0, 1, size=(n, 3)) * [nz - void_top, ny, nx]:
            dy = np.minimum(np.abs(y - cy), ny - np.abs(y - cy))
            dx = np.minimum(np.abs(x - cx), nx - np.abs(x - cx))
            vol[(z - cz) ** 2 + dy ** 2 + dx ** 2 <= radius ** 2] = code
    vol[nz - void_top:] = 4
    return vol


@pytest.fixture
def volume() -> np.ndarray:
    return random_volume()


def onnx_const(name: str, value):
    """An ONNX Constant node whose output ``name`` holds ``value`` (an array or a scalar)."""
    import onnx

    return onnx.helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(np.asarray(value), name))


def hand_budget(voxel_size: float) -> dict:
    """A phase budget for hand-made models: the top rides 0.5 slices per unit strain over the press and
    springs back 2 slices; AM and CBD volumes shrink by half the strain and end 0.3 x CD low."""
    from calbatch.surrogate.budget import BUDGET_FORMAT, TAU_NODES

    return {"format": BUDGET_FORMAT, "voxel_size_um": voxel_size,
            "press": [[0.5, -0.5, -0.5], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
            "final": [[2.0, 0.0, 0.0], [0.0, -0.3, -0.3], [0.0, 0.0, 0.0]],
            "decay": [[max(1.0 - t / 2, 0.0) for t in TAU_NODES]] * 3, "tau_nodes": TAU_NODES}


def still_budget(voxel_size: float) -> dict:
    """A phase budget that plans what ``conserve`` does with a model that moves nothing itself:
    the top on the press, then on its lowest point; AM and CBD volumes kept."""
    from calbatch.surrogate.budget import BUDGET_FORMAT, TAU_NODES

    zeros = [[0.0] * 3 for _ in range(3)]
    return {"format": BUDGET_FORMAT, "voxel_size_um": voxel_size, "press": zeros, "final": zeros,
            "decay": [[0.0] * len(TAU_NODES)] * 3, "tau_nodes": TAU_NODES}


def save_model(path, nodes, *, voxel_size: float, kind: str = "calbatch", grid=(24, 16, 16), cd_range=(20, 40),
               schedule: dict | None = None, meta: dict | None = None) -> Path:
    """Hand-made ONNX ``nodes`` (from the inputs ``frames`` and ``cond`` to ``output``) saved to ``path`` as a
    model in calbatch's format, checked: a ``calbatch`` model scores 4 classes per voxel on any grid (x, y
    multiples of 4), a ``paper`` model regresses the code on ``grid`` only; ``meta``: extra metadata."""
    import onnx
    from onnx import TensorProto
    from onnx import helper as h

    paper = kind == "paper"
    dims = list(grid) if paper else ["z", "y", "x"]
    frames = h.make_tensor_value_info("frames", TensorProto.UINT8, ["B", *dims, 3])
    cond = h.make_tensor_value_info("cond", TensorProto.FLOAT, ["B", 7])
    out = h.make_tensor_value_info("output", TensorProto.FLOAT, ["B", *dims] + ([] if paper else [4]))
    model = h.make_model(h.make_graph(nodes, Path(path).stem, [frames, cond], [out]),
                         opset_imports=[h.make_opsetid("", 17)])
    from calbatch.model.dataset import COND_NAMES

    ours = {} if paper else {"conditioning": json.dumps(list(COND_NAMES)), "phase_budget": json.dumps(hand_budget(voxel_size))}
    h.set_model_props(model, {
        **ours,
        "format": "calbatch-model/1", "calbatch_version": "test", "kind": kind, "grid_zyx": json.dumps(list(grid)),
        "fixed_grid": json.dumps(paper), "grid_multiple_xy": "1" if paper else "4", "voxel_size_um": repr(voxel_size),
        "cd_range_percent": json.dumps(list(cd_range)),
        "schedule": json.dumps(schedule or {"press_speed_m_s": 0.05, "frame_interval_us": 40.0}), **(meta or {})})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)
