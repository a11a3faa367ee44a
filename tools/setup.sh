#!/usr/bin/env bash
# Set up everything calbatch needs on a Debian 12 machine, then build and install calbatch itself.
# Idempotent: each step checks first and stays quiet when it is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
say() { echo "[setup] $*" >&2; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

# 1. Debian packages: the DEM engine, PETSc and Open MPI.
need_apt=()
command -v liggghts >/dev/null || need_apt+=(liggghts)
[ -f /usr/lib/petsc/include/petsc.h ] || need_apt+=(petsc-dev)
command -v mpicc >/dev/null || need_apt+=(libopenmpi-dev)
command -v mpirun >/dev/null || need_apt+=(openmpi-bin)
# Mesa's software OpenGL behind EGL: the headless renders of `calbatch render` (no display, no GPU).
ls /usr/lib/*/libEGL_mesa.so.0 >/dev/null 2>&1 || need_apt+=(libegl1 libegl-mesa0 libgl1-mesa-dri)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "apt-get install ${need_apt[*]} (a few minutes)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Every PyPI install is held to the versions the results were made with (tools/constraints.txt).
constraints="$PWD/tools/constraints.txt"
pip_quiet() { "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore -c "$constraints" "$@"; }

# 2. Build tools and the Python scientific stack (wheels from PyPI).
if ! "$PY" -c "import scikit_build_core, pybind11, numpy" 2>/dev/null; then
  say "pip install build tools"
  pip_quiet scikit-build-core pybind11 numpy
fi
if ! "$PY" -c "import tensorflow, tf2onnx, onnx, onnxruntime, optuna, h5py, scipy, tifffile, yaml, pydantic, matplotlib, tqdm, pytest, ruff" 2>/dev/null; then
  say "pip install the scientific stack (tensorflow-cpu, onnxruntime, ...; a few minutes)"
  pip_quiet "tensorflow-cpu>=2.16" "tf2onnx>=1.16" onnx onnxruntime "optuna>=3.4" h5py scipy tifffile pyyaml pydantic matplotlib tqdm pytest ruff
fi

# The view extra (VTK and pyvista, about 590 MB): export for ParaView and OVITO, 3-D renders.
if ! "$PY" -c "import vtkmodules, pyvista" 2>/dev/null; then
  say "pip install vtk pyvista (the 3-D views)"
  pip_quiet vtk pyvista
fi

# 3. mpi4py and petsc4py compiled against Debian's Open MPI and PETSc 3.18 (about 4 minutes).
# petsc4py 3.18's setup.py fails under a recent setuptools (84, which torch pulls in, breaks its
# rpath hook) and needs numpy at build time, so build isolation is no way out: the wheels are built
# in a throwaway venv with an older setuptools and this Python's numpy version (petsc4py ships its
# Cython output as C, so no Cython is needed).
if ! "$PY" -c "import mpi4py, petsc4py" 2>/dev/null; then
  say "building mpi4py and petsc4py 3.18 against Debian's PETSc (about 4 minutes)"
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  numpy_version=$("$PY" -c "import numpy; print(numpy.__version__)")
  "$PY" -m venv "$build/venv"
  "$build/venv/bin/python" -m pip install -q --disable-pip-version-check "setuptools<70" wheel "numpy==$numpy_version"
  PETSC_DIR=/usr/lib/petsc "$build/venv/bin/python" -m pip wheel -q --disable-pip-version-check \
    --no-build-isolation --no-deps -w "$build/wheels" -c "$constraints" mpi4py petsc4py
  pip_quiet --no-deps "$build"/wheels/*.whl
fi

# 4. calbatch itself, editable, with its C++ core: reinstalled when the C++ sources or the build
# files changed, or when Python modules were added, moved or removed (the editable install maps
# each module to its file).
stamp=build/.installed-sources
sources=$( (cat pyproject.toml CMakeLists.txt $(find cpp -type f | sort); find python -name '*.py' | sort) | sha1sum | cut -c1-40)
# (and when the calbatch installed is another checkout's)
installed=$("$PY" -c "import calbatch._core, calbatch, os; print(os.path.dirname(os.path.dirname(os.path.realpath(calbatch.__file__))))" 2>/dev/null || true)
if [ "$installed" != "$(pwd -P)/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$sources" ]; then
  say "building calbatch and its C++ core"
  pip_quiet --no-build-isolation --no-deps -e .
  mkdir -p build && echo "$sources" > "$stamp"
fi
