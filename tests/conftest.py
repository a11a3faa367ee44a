import importlib.util
import os
import shutil
import subprocess
import sys

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


@pytest.fixture
def volume() -> np.ndarray:
    return random_volume()
