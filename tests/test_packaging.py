"""What an installed calbatch needs: the runtime commands run with the training stack (TensorFlow,
tf2onnx, onnx, optuna: the ``train`` extra) not importable, and a wheel installed into a fresh
virtual environment runs from an empty folder on the data it ships."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import BASE_ENV, assert_one_line_error
from test_optimize import VS, persistence_onnx

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ("tensorflow", "tf2onnx", "keras", "onnx", "optuna")
# Put in front of every import: the training stack's packages cannot be found, as where only the
# core dependencies are installed.
BLOCKER = f"""
import importlib.abc
import sys


class NoTraining(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TRAINING!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (the train extra is not installed)", name=name)
        return None


sys.meta_path.insert(0, NoTraining())
"""
RUN_CALBATCH = BLOCKER + """
import runpy
sys.argv[0] = "calbatch"
runpy.run_module("calbatch", run_name="__main__")
"""


def calbatch_without_training(*args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN_CALBATCH, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**BASE_ENV, "OMP_NUM_THREADS": "1"}, timeout=timeout)


def test_the_blocker_blocks():
    proc = subprocess.run([sys.executable, "-c", BLOCKER + "import tensorflow"], capture_output=True, text=True,
                          env=BASE_ENV, timeout=60)
    assert proc.returncode == 1 and "the train extra is not installed" in proc.stderr


@pytest.mark.mpi
@pytest.mark.slow
def test_runtime_commands_run_without_the_training_stack(tmp_path):
    """screen, rollout, optimize and metrics on a tiny electrode and a hand-made model; ``calbatch
    demo`` (the shipped model) runs so in :func:`test_wheel_runs_from_an_empty_folder`."""
    from calbatch.electrode.series import read_pack
    from calbatch.electrode.voxelize import voxelize_spheres

    p = read_pack(ROOT / "python" / "calbatch" / "data" / "example_pack.h5")
    np.save(tmp_path / "e.npy", voxelize_spheres(p["positions"], p["radii"], p["phases"], (30.4, 30.4), (24, 16, 16), VS))
    model = persistence_onnx(tmp_path / "m.onnx")
    (tmp_path / "cases.yaml").write_text(f"electrodes: [e.npy]\ncds: [25, 35]\nmodel: {model}\n")

    screen = calbatch_without_training("screen", "cases.yaml", "--out", "screen", "--json", cwd=tmp_path)
    assert screen.returncode == 0, screen.stderr
    assert json.loads(screen.stdout)["finished"] == 2
    rollout = calbatch_without_training("rollout", model, "e.npy", "--cd", 30, "--voxel-size", VS, "--out", "r.h5",
                                        "--json", cwd=tmp_path)
    assert rollout.returncode == 0, rollout.stderr
    assert (tmp_path / "r.h5").is_file()
    optimize = calbatch_without_training("optimize", "e.npy", "--model", model, "--porosity", 0.2, "--json", cwd=tmp_path)
    assert optimize.returncode == 0, optimize.stderr
    assert 20 <= json.loads(optimize.stdout)["answer"]["cd_percent"] <= 50
    train = calbatch_without_training("train", "r.h5", "--out", "run", cwd=tmp_path)
    assert_one_line_error(train, "is not installed", "calbatch[train]")
    metrics = calbatch_without_training("metrics", "e.npy", "--voxel-size", VS, "--json", cwd=tmp_path)
    assert metrics.returncode == 0, metrics.stderr
    assert 0 < json.loads(metrics.stdout)["porosity"] < 1


def test_shipped_dem_defaults_are_the_default_datasets():
    """The pack and plan a DEM reference run starts from ship in the package; they are copies of
    the repository's default dataset's, kept equal."""
    shipped, repo = ROOT / "python" / "calbatch" / "data", ROOT / "data" / "dem" / "default"
    if not repo.is_dir():
        pytest.skip("the repository's default DEM dataset is not here")
    assert filecmp.cmp(shipped / "example_pack.h5", repo / "packs" / "ms1.h5", shallow=False)
    assert filecmp.cmp(shipped / "default_dataset.json", repo / "dataset.json", shallow=False)


@pytest.mark.mpi
@pytest.mark.slow
def test_wheel_runs_from_an_empty_folder(tmp_path):
    """``pip wheel .`` into a fresh virtual environment; from an empty folder ``calbatch demo`` and
    ``calbatch bench dl-vs-dem --help`` run on what the wheel ships, the training stack blocked."""
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", "-w",
                            str(wheels), str(ROOT)], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("calbatch-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The dependencies come from this interpreter's site folders, listed as plain paths: a path in a
    # .pth file is added to sys.path but its own .pth files are not run, so an editable calbatch
    # installed there (a finder set up by a .pth) cannot shadow the wheel's.
    (site / "calbatch_test_deps.pth").write_text("".join(f"{d}\n" for d in sorted(_dependency_dirs())))
    (site / "sitecustomize.py").write_text(BLOCKER)
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in BASE_ENV.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    where = subprocess.run([python, "-c", "import calbatch; print(calbatch.__file__)"], capture_output=True,
                           text=True, cwd=empty, env=env, timeout=60)
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr
    blocked = subprocess.run([python, "-c", "import tensorflow"], capture_output=True, text=True, cwd=empty, env=env,
                             timeout=60)
    assert "the train extra is not installed" in blocked.stderr
    calbatch = venv / "bin" / "calbatch"
    demo = subprocess.run([calbatch, "demo", "--json"], capture_output=True, text=True, cwd=empty, env=env, timeout=600)
    assert demo.returncode == 0, demo.stderr
    assert (json.loads(demo.stdout)["finished"], json.loads(demo.stdout)["failed"]) == (3, 0)
    assert (empty / "calbatch_demo" / "results.csv").is_file()
    bench = subprocess.run([calbatch, "bench", "dl-vs-dem", "--help"], capture_output=True, text=True, cwd=empty,
                           env=env, timeout=60)
    assert bench.returncode == 0 and "--dataset" in bench.stdout, bench.stderr


def _dependency_dirs() -> set[str]:
    """The site folders the installed dependencies (the core ones and mpi4py, petsc4py) live in."""
    import importlib.util

    dirs = set()
    for name in ("numpy", "h5py", "scipy", "tifffile", "yaml", "pydantic", "matplotlib", "tqdm", "onnxruntime",
                 "mpi4py", "petsc4py"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            dirs.add(Path(spec.origin).parent.parent)
    return {str(d) for d in dirs if d != ROOT / "python"}
