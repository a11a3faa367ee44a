"""LIGGGHTS as a subprocess: the command (under ``mpirun -n N`` when asked), the input script from
the templates in ``templates/``, the data files it reads and writes, and its errors as one line
naming its log."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from ..electrode.volume import AM, CBD
from ..errors import CalbatchError
from .settings import DT_PER_UM, LIGGGHTS_TYPE

TEMPLATES = Path(__file__).resolve().parent / "templates"

def liggghts_command(nprocs: int = 1) -> list[str]:
    """The command that starts LIGGGHTS (``$CALBATCH_LIGGGHTS`` overrides the executable)."""
    exe = os.environ.get("CALBATCH_LIGGGHTS", "liggghts")
    path = shutil.which(exe)
    if path is None:
        raise CalbatchError(f"LIGGGHTS executable {exe!r} not found on PATH: install the Debian package "
                            "`liggghts` (apt-get install liggghts) or run tools/setup.sh")
    if nprocs <= 1:
        return [path]
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise CalbatchError("--np: mpirun not found on PATH: install Open MPI (Debian `openmpi-bin`) or use --np 1")
    return [mpirun, "-n", str(nprocs), path]


def liggghts_version() -> str:
    """The version line LIGGGHTS prints about itself."""
    # -log none: LIGGGHTS would otherwise leave a log.liggghts in the current folder
    out = subprocess.run(liggghts_command() + ["-log", "none", "-h"], capture_output=True, text=True, timeout=60).stdout
    match = re.search(r"LIGGGHTS \(Version ([^,)]*)", out)
    return match.group(1).strip() if match else "unknown"


def run_liggghts(run_dir: Path, script: str, nprocs: int = 1, on_poll=None) -> Path:
    """Run ``script`` in ``run_dir``; return the log path, or raise with the log's path and error."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "in.liggghts").write_text(script)
    log = run_dir / "log.liggghts"
    # -screen none crashes Debian's 3.8 at mesh/surface, so the screen goes to a file.
    cmd = liggghts_command(nprocs) + ["-in", "in.liggghts", "-log", log.name, "-echo", "log", "-nocite"]
    with open(run_dir / "screen.txt", "w") as screen:
        proc = subprocess.Popen(cmd, cwd=run_dir, stdout=screen, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            if on_poll is not None:
                on_poll()
            time.sleep(0.2)
    if on_poll is not None:
        on_poll()
    text = log.read_text(errors="replace") if log.exists() else ""
    errors = [line for line in text.splitlines() if line.startswith("ERROR")]
    if proc.returncode != 0 or errors:
        reason = errors[0] if errors else f"exit status {proc.returncode}"
        raise CalbatchError(f"LIGGGHTS failed ({reason.strip()}); see its log {log}")
    return log


def _pair_table(value) -> str:
    table = np.broadcast_to(np.asarray(value, dtype=float), (4, 4))
    return " ".join(f"{x:g}" for x in table.ravel())


def liggghts_script(stage: str, dt: float, contact: dict, skin: float, **fill) -> str:
    common = (TEMPLATES / "common.in").read_text().format(
        skin=skin,
        youngs=" ".join(f"{e * 1e6:g}" for e in contact["youngs_modulus_gpa"]),  # GPa -> kPa
        poisson=" ".join(f"{p:g}" for p in contact["poisson"]),
        restitution=_pair_table(contact["restitution"]),
        friction=_pair_table(contact["friction"]),
        char_velocity=contact["characteristic_velocity_m_s"],
        max_elastic_stiffness=_pair_table(contact["max_elastic_stiffness"]),
        adhesion_stiffness=_pair_table(contact["adhesion_stiffness"]),
        plasticity_depth=_pair_table(contact["plasticity_depth"]),
        cohesion=_pair_table(contact["cohesion_energy_density_kj_m3"]),
        dt=f"{dt:g}",
    )
    return common + "\n" + (TEMPLATES / f"{stage}.in").read_text().format(**fill)


def liggghts_number(x) -> str:
    """A number as LIGGGHTS reads it, at full precision (numpy scalars repr as np.float64(...))."""
    return f"{float(x):.17g}"


def write_data_file(path: Path, positions, radii, phases, box_xy, height, densities: dict) -> None:
    """A LIGGGHTS data file (atom_style granular: id type diameter density x y z); ``densities``
    maps phase code -> g/cm3."""
    lines = [f"calbatch particles\n\n{len(radii)} atoms\n4 atom types\n",
             f"0 {liggghts_number(box_xy[0])} xlo xhi\n0 {liggghts_number(box_xy[1])} ylo yhi\n0 {liggghts_number(height)} zlo zhi\n\nAtoms\n"]
    for i, (p, r, ph) in enumerate(zip(positions, radii, phases)):
        lines.append(f"{i + 1} {LIGGGHTS_TYPE[int(ph)]} {liggghts_number(2 * r)} {densities[int(ph)]:g} " + " ".join(map(liggghts_number, p)))
    path.write_text("\n".join(lines) + "\n")


def read_data_file(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions, radii and phases from a LIGGGHTS ``write_data`` file, ordered by atom id."""
    text = path.read_text()
    body = text.split("Atoms", 1)[1].split("Velocities", 1)[0]
    rows = np.array([line.split()[:7] for line in body.strip().splitlines() if line.strip()], dtype=float)
    rows = rows[np.argsort(rows[:, 0])]
    phases = np.where(rows[:, 1] == LIGGGHTS_TYPE[AM], AM, CBD).astype(np.uint8)
    return rows[:, 4:7], rows[:, 2] / 2, phases


def read_dump(path: Path) -> np.ndarray:
    """Positions (n, 3) from a frame dump (columns id type radius x y z, sorted by id)."""
    rows = np.loadtxt(path, skiprows=9, ndmin=2)
    return rows[np.argsort(rows[:, 0])][:, 3:6]


def timestep(radii: np.ndarray, dt: float | None) -> float:
    if dt is None:
        return DT_PER_UM * 2 * float(radii.min())
    if not dt > 0:
        raise CalbatchError(f"--dt: must be positive, got {dt}")
    return dt
