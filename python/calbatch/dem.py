"""DEM ground truth: LIGGGHTS packs an uncalendered electrode, presses it to a compression degree
(CD) and releases it; every frame is voxelized onto the calbatch grid and stored as one HDF5 series.

Entry points, one per verb of ``calbatch dem``: :func:`pack`, :func:`calender`, :func:`revoxelize`,
:func:`dataset`, :func:`plot`. LIGGGHTS (Debian package ``liggghts``) runs as a subprocess, under
``mpirun -n N`` when asked, with the input templates in ``dem_templates/``. The file format is in
``docs/dem.md``.

Units inside LIGGGHTS are ``micro``: um, us, pg, so a speed in um/us is one in m/s and a pressure
unit is 1 kPa.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .cli import print_result
from .errors import CalbatchError
from .volume import AM, CBD, DEFAULT_NANOPOROSITY, DEFAULT_VOXEL_SIZE_UM
from .voxelize import voxelize_spheres

TEMPLATES = Path(__file__).resolve().parent / "dem_templates"
SERIES_FORMAT = "calbatch-dem-series/2"
PACK_FORMAT = "calbatch-dem-pack/2"
# Version 1 files (CBD at 4 % of the solid volume, no formulation attributes) still read.
READABLE_SERIES = ("calbatch-dem-series/1", SERIES_FORMAT)
READABLE_PACKS = ("calbatch-dem-pack/1", PACK_FORMAT)
# What a series inherits from its pack about the formulation.
FORMULATION_ATTRS = ("mass_ratio_am_cbd", "cbd_nanoporosity", "cbd_density_g_cm3", "cbd_volume_fraction",
                     "cbd_diameter_um")

# NMC111 diameters (um) and counts of Ngandjong et al. 2021; calbatch draws the AM particles in these
# proportions. 140 of them with their 96:4 CBD settle in the 30.4 x 30.4 um box to about 45 um.
AM_DIAMETERS_UM = np.array([2.5, 3.5, 4.5, 5.86, 8.28, 10.35])
AM_COUNTS = np.array([73, 91, 64, 57, 82, 29])
DEFAULT_AM_PARTICLES = 140

# Formulation (the paper's 96 % NMC111 - 2 % C65 - 2 % PVdF, by weight). The CBD is a nanoporous
# domain of carbon + binder: its skeleton (C65 ~1.9, PVdF ~1.78 g/cm3) at the default nanoporosity
# 0.5 gives the domain density 0.93 g/cm3 of the Franco group's CBD particles.
AM_DENSITY = 4.65  # g/cm3 = pg/um^3
CBD_SKELETON_DENSITY = 1.86
DEFAULT_MASS_RATIO = (96.0, 4.0)
# CBD spheres of 2 um (5 voxels across): the time step and the particle count both grow as the CBD
# shrinks, and 2 um is what a dataset of 56 series affords on two cores (docs/dem.md).
CBD_DIAMETER_UM = 2.0


def cbd_density(nanoporosity: float = DEFAULT_NANOPOROSITY) -> float:
    """Apparent density of the nanoporous CBD domain (g/cm3)."""
    return CBD_SKELETON_DENSITY * (1 - nanoporosity)


def cbd_volume_fraction(mass_ratio=DEFAULT_MASS_RATIO, nanoporosity: float = DEFAULT_NANOPOROSITY) -> float:
    """CBD domain volume / solid (AM + CBD domain) volume for an AM:CBD mass ratio."""
    am, cbd = (float(m) for m in mass_ratio)
    if not (am > 0 and cbd >= 0):
        raise CalbatchError(f"--mass-ratio: AM:CBD must be positive numbers, got {am:g}:{cbd:g}")
    if not 0 <= nanoporosity < 1:
        raise CalbatchError(f"--nanoporosity: must be in [0, 1), got {nanoporosity:g}")
    v_am, v_cbd = am / AM_DENSITY, cbd / cbd_density(nanoporosity)
    return v_cbd / (v_am + v_cbd)


LIGGGHTS_TYPE = {AM: 1, CBD: 2}  # type 3 is the press, 4 the current collector

# Contact model (types AM, CBD, wall). Moduli are softened from 200/2 GPa so that the time step
# stays affordable; the press is displacement-controlled, so the structure is set by overlaps and
# rearrangement, and the dt/speed checks in docs/dem.md show the result does not depend on them.
CONTACT_MODEL = "hooke/hysteresis tangential history cohesion sjkr"
# Pair tables are 4 x 4 over (AM, CBD, press, collector); the press never sticks, the collector
# holds the electrode as the binder does (without it the released bed springs off the collector).
CONTACT = {
    "youngs_modulus_gpa": [5.0, 2.0, 5.0, 5.0],
    "poisson": [0.3, 0.45, 0.3, 0.3],
    "restitution": 0.3,
    "friction": 0.5,
    "characteristic_velocity_m_s": 1.0,
    # k2max / k1: unloading stiffer than loading -> permanent compaction; adhesion and plasticity
    # depth chosen by measured spring-back at CD 35 (docs/dem.md)
    "max_elastic_stiffness": 10.0,
    "adhesion_stiffness": [[5, 5, 0, 5], [5, 5, 0, 5], [0, 0, 0, 0], [5, 5, 0, 0]],
    # Walls reach their stiff elastic branch at once (depth 0.01): a soft, plastic collector lets
    # particles through it at CD 45-50, where the solids nearly fill the pressed box.
    "plasticity_depth": [[0.2, 0.2, 0.01, 0.01], [0.2, 0.2, 0.01, 0.01], [0.01, 0.01, 0.01, 0.01],
                         [0.01, 0.01, 0.01, 0.01]],
    "cohesion_energy_density_kj_m3": [[0, 20000, 0, 300], [20000, 20000, 0, 20000], [0, 0, 0, 0],
                                      [300, 20000, 0, 0]],
    "release_damping": 10.0,  # fix viscous gamma (pg/us) during release and relaxation
}
DT_PER_UM = 2.5e-4  # time step in us per um of the smallest diameter (halving it changes nothing)
# Settling: an artificial gravity (the drying stand-in) over a fall long enough for the whole bed,
# then viscous quenching; lower friction and cohesion (the binder still wet) while settling set the
# uncalendered porosity: cohesion x 1 / 0.45 / 0.3 / 0.2 gave 0.55 / 0.44 / 0.43 / 0.40 (seed 1).
PACK = {"box_height_factor": 3.3, "gravity_um_us2": 0.02, "fall_us": 150.0, "quench_us": 50.0,
        "quench_damping": 50.0, "friction": 0.1, "cohesion_factor": 0.45}
DEFAULT_SPEED = 0.05  # press speed in m/s (= um/us); 0.1 left 1.2 % more thickness (docs/dem.md)
FRAME_TRAVEL_UM = 1.0  # default frame interval: the time the press needs for 1 um (20 us at 0.05 m/s)
RELEASE_FACTOR = 0.6  # the press retracts by 0.6 x its travel at twice its speed ...
RELAX_FRAMES = 2  # ... then stays away for two frames
PHASES = ("press", "release", "relax")


# ----------------------------------------------------------------------------- LIGGGHTS runner

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
    out = subprocess.run(liggghts_command() + ["-h"], capture_output=True, text=True, timeout=60).stdout
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


def _script(stage: str, dt: float, contact: dict, skin: float, **fill) -> str:
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


def _num(x) -> str:
    """A number as LIGGGHTS reads it, at full precision (numpy scalars repr as np.float64(...))."""
    return f"{float(x):.17g}"


def _write_data(path: Path, positions, radii, phases, box_xy, height, densities: dict) -> None:
    """A LIGGGHTS data file (atom_style granular: id type diameter density x y z); ``densities``
    maps phase code -> g/cm3."""
    lines = [f"calbatch particles\n\n{len(radii)} atoms\n4 atom types\n",
             f"0 {_num(box_xy[0])} xlo xhi\n0 {_num(box_xy[1])} ylo yhi\n0 {_num(height)} zlo zhi\n\nAtoms\n"]
    for i, (p, r, ph) in enumerate(zip(positions, radii, phases)):
        lines.append(f"{i + 1} {LIGGGHTS_TYPE[int(ph)]} {_num(2 * r)} {densities[int(ph)]:g} " + " ".join(map(_num, p)))
    path.write_text("\n".join(lines) + "\n")


def _read_data(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions, radii and phases from a LIGGGHTS ``write_data`` file, ordered by atom id."""
    text = path.read_text()
    body = text.split("Atoms", 1)[1].split("Velocities", 1)[0]
    rows = np.array([line.split()[:7] for line in body.strip().splitlines() if line.strip()], dtype=float)
    rows = rows[np.argsort(rows[:, 0])]
    phases = np.where(rows[:, 1] == LIGGGHTS_TYPE[AM], AM, CBD).astype(np.uint8)
    return rows[:, 4:7], rows[:, 2] / 2, phases


def _read_dump(path: Path) -> np.ndarray:
    """Positions (n, 3) from a frame dump (columns id type radius x y z, sorted by id)."""
    rows = np.loadtxt(path, skiprows=9, ndmin=2)
    return rows[np.argsort(rows[:, 0])][:, 3:6]


def _timestep(radii: np.ndarray, dt: float | None) -> float:
    if dt is None:
        return DT_PER_UM * 2 * float(radii.min())
    if not dt > 0:
        raise CalbatchError(f"--dt: must be positive, got {dt}")
    return dt


# ----------------------------------------------------------------------------- files

def _atomic_h5(path: Path, write) -> None:
    """Write an HDF5 file through a temporary name, so a file under ``path`` is always complete."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with h5py.File(tmp, "w") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _open_h5(path: Path, formats: tuple[str, ...]):
    import h5py

    if not Path(path).is_file():
        raise CalbatchError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CalbatchError(f"{path}: cannot read HDF5 ({exc})") from None
    if f.attrs.get("format") not in formats:
        f.close()
        raise CalbatchError(f"{path}: not a {formats[-1]} file (attribute 'format' is {f.attrs.get('format')!r})")
    return f


def read_pack(path: Path) -> dict:
    """A pack file as a dict: positions, radii, phases and its attributes."""
    with _open_h5(path, READABLE_PACKS) as f:
        pack = {k: f["particles"][k][()] for k in ("positions", "radii", "phases")}
        pack["attrs"] = _with_formulation(dict(f.attrs))
    return pack


def _with_formulation(attrs: dict) -> dict:
    """Version 1 files predate the formulation attributes: their CBD had the density 0.93 g/cm3 at
    4 % of the solid volume (99.2 : 0.8 by weight); stated here so readers need not special-case them."""
    attrs.setdefault("cbd_density_g_cm3", 0.93)
    attrs.setdefault("cbd_nanoporosity", DEFAULT_NANOPOROSITY)
    attrs.setdefault("cbd_volume_fraction", 0.04)
    return attrs


def read_series(path: Path, frames: bool = True) -> dict:
    """A series file as a dict of its datasets (``frames`` optional) and ``attrs``."""
    with _open_h5(path, READABLE_SERIES) as f:
        series = {k: f[k][()] for k in ("time_us", "press_z_um", "phase", "wall_time_s")}
        series["phase"] = series["phase"].astype(str)
        series.update({k: f["particles"][k][()] for k in ("positions", "radii", "phases")})
        if frames and "frames" in f:
            series["frames"] = f["frames"][()]
        series["attrs"] = _with_formulation(dict(f.attrs))
    return series


def write_series(path: Path, series: dict, with_frames: bool = True) -> None:
    """Write a series (the dict :func:`read_series` returns) atomically; without ``frames`` it is
    the compact particle file that :func:`revoxelize` turns back into a full series."""

    def write(f):
        f.attrs.update(series["attrs"])
        if with_frames:
            frames = series["frames"]
            f.create_dataset("frames", data=frames, chunks=(1, *frames.shape[1:]), compression="gzip",
                             compression_opts=4)
        f["time_us"] = series["time_us"]
        f["press_z_um"] = series["press_z_um"]
        f["phase"] = np.array(series["phase"], dtype="S7")
        f["wall_time_s"] = series["wall_time_s"]
        g = f.create_group("particles")
        g.create_dataset("positions", data=np.asarray(series["positions"], dtype=np.float32),
                         compression="gzip", compression_opts=6, shuffle=True)
        g["radii"] = np.asarray(series["radii"], dtype=np.float32)
        g["phases"] = np.asarray(series["phases"], dtype=np.uint8)

    _atomic_h5(Path(path), write)


# ----------------------------------------------------------------------------- grid

def _grid_shape(box_xy, voxel_size: float, nz: int, height: float, max_diameter: float) -> tuple[int, int, int]:
    """The voxel grid for a box; refuses grids too small for the electrode or its particles."""
    if not voxel_size > 0:
        raise CalbatchError(f"--voxel-size: must be positive, got {voxel_size}")
    nx, ny = (int(round(b / voxel_size)) for b in box_xy)
    if min(nx, ny) < 2 or voxel_size > max_diameter:
        raise CalbatchError(f"--voxel-size {voxel_size} um: too coarse for the box {box_xy[0]:g} um "
                            f"and particles of {max_diameter:g} um")
    if nz * voxel_size < height:
        raise CalbatchError(f"--nz {nz}: grid too small for the particles: {nz} x {voxel_size} um = "
                            f"{nz * voxel_size:g} um < electrode height {height:.2f} um")
    return nz, ny, nx


# ----------------------------------------------------------------------------- pack

def initial_placement(seed: int, n_am: int, box_xy: float, size_scale: float = 1.0,
                      cbd_fraction: float | None = None, cbd_diameter: float = CBD_DIAMETER_UM):
    """Seeded loose start for settling: AM spheres placed at random without overlap in a tall box,
    CBD spheres (``cbd_fraction`` of the solid volume) stuck onto AM surfaces (so the binder starts
    on the AM, as after drying)."""
    cbd_fraction = cbd_volume_fraction() if cbd_fraction is None else cbd_fraction
    rng = np.random.default_rng(seed)
    # Largest-remainder apportionment of n_am over the measured size classes.
    share = AM_COUNTS / AM_COUNTS.sum() * n_am
    counts = np.floor(share).astype(int)
    counts[np.argsort(share - counts)[::-1][: n_am - counts.sum()]] += 1
    am_diameters = np.repeat(AM_DIAMETERS_UM, counts) * size_scale
    cbd_diameter = cbd_diameter * size_scale
    am_volume = np.sum(np.pi / 6 * am_diameters**3)
    n_cbd = int(round(am_volume * cbd_fraction / (1 - cbd_fraction) / (np.pi / 6 * cbd_diameter**3)))
    # Box tall enough that the loose start is a dilute gas (solid fraction ~0.15).
    height = PACK["box_height_factor"] * (am_volume / (1 - cbd_fraction)) / (0.5 * box_xy**2) + am_diameters.max()
    centers, radii = np.zeros((0, 3)), np.zeros(0)
    box = np.array([box_xy, box_xy])

    def free(p, r, ignore=-1):
        d = centers - p
        d[:, :2] -= box * np.round(d[:, :2] / box)
        clear = np.einsum("ij,ij->i", d, d) > (radii + r) ** 2
        if ignore >= 0:
            clear[ignore] = True
        return bool(np.all(clear))

    for r in np.sort(am_diameters)[::-1] / 2:  # big first: they are the hardest to fit
        for _ in range(100000):
            p = np.array([*rng.uniform(0, box_xy, 2), rng.uniform(r, height - r)])
            if free(p, r):
                break
        else:
            raise CalbatchError(f"--box {box_xy:g} um: cannot place {n_am} particles without overlap")
        centers, radii = np.vstack([centers, p]), np.append(radii, r)
    area = radii**2 / np.sum(radii**2)
    r = cbd_diameter / 2
    for _ in range(n_cbd):
        for _ in range(1000):
            host = rng.choice(n_am, p=area)
            u = rng.normal(size=3)
            p = centers[host] + u / np.linalg.norm(u) * (radii[host] + 0.98 * r)  # slight overlap: stuck
            p[:2] %= box_xy
            if r < p[2] < height - r and free(p, r, ignore=host):  # inside the box LIGGGHTS reads
                break
        centers, radii = np.vstack([centers, p]), np.append(radii, r)
    phases = np.array([AM] * n_am + [CBD] * n_cbd, dtype=np.uint8)
    return centers, radii, phases, height


def pack(out: Path, seed: int = 1, microstructure_id: int = 1, n_am: int = DEFAULT_AM_PARTICLES,
         box_xy: float = 30.4, size_scale: float = 1.0, voxel_size: float = DEFAULT_VOXEL_SIZE_UM,
         nz: int = 125, dt: float | None = None, nprocs: int = 1, contact: dict | None = None,
         mass_ratio=DEFAULT_MASS_RATIO, nanoporosity: float = DEFAULT_NANOPOROSITY,
         cbd_diameter: float = CBD_DIAMETER_UM) -> dict:
    """Settle an uncalendered electrode of AM:CBD ``mass_ratio`` (by weight; the CBD a domain of
    ``nanoporosity``) in LIGGGHTS and write the pack file ``out``."""
    from .metrics import cbd_distribution, measure

    contact = contact or CONTACT
    if n_am < 1:
        raise CalbatchError(f"--particles: zero particles; need at least 1 AM particle, got {n_am}")
    if not size_scale > 0:
        raise CalbatchError(f"--size-scale: must be positive, got {size_scale}")
    if not box_xy >= AM_DIAMETERS_UM.max() * size_scale:
        raise CalbatchError(f"--box {box_xy:g} um: smaller than the largest particle "
                            f"({AM_DIAMETERS_UM.max() * size_scale:g} um)")
    if not cbd_diameter > 0:
        raise CalbatchError(f"--cbd-diameter: must be positive, got {cbd_diameter}")
    out = Path(out)
    cbd_fraction = cbd_volume_fraction(mass_ratio, nanoporosity)
    densities = {AM: AM_DENSITY, CBD: cbd_density(nanoporosity)}
    centers, radii, phases, height = initial_placement(seed, n_am, box_xy, size_scale, cbd_fraction, cbd_diameter)
    dt = _timestep(radii, dt)
    run_dir = out.with_suffix(".liggghts")
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_data(run_dir / "particles.data", centers, radii, phases, (box_xy, box_xy), height, densities)
    fall, quench = (int(round(PACK[k] / dt)) for k in ("fall_us", "quench_us"))
    settling = {**contact, "friction": PACK["friction"], "cohesion_energy_density_kj_m3":
                np.asarray(contact["cohesion_energy_density_kj_m3"]) * PACK["cohesion_factor"]}
    script = _script("pack", dt, settling, skin=0.25 * 2 * radii.min(), gravity=PACK["gravity_um_us2"],
                     thermo_every=max(1, (fall + quench) // 20), fall_steps=fall, quench_steps=quench,
                     quench_damping=PACK["quench_damping"])
    start = time.perf_counter()
    run_liggghts(run_dir, script, nprocs)
    wall = time.perf_counter() - start
    positions, radii, phases = _read_data(run_dir / "packed.data")
    top = float(np.max(positions[:, 2] + radii))
    shape = _grid_shape((box_xy, box_xy), voxel_size, nz, top, 2 * radii.max())
    volume = voxelize_spheres(positions, radii, phases, (box_xy, box_xy), shape, voxel_size)
    metrics = measure(volume, voxel_size, nanoporosity)
    attrs = {
        "format": PACK_FORMAT, "microstructure_id": microstructure_id, "seed": seed,
        "box_um": [box_xy, box_xy], "size_scale": size_scale, "n_am": int(np.sum(phases == AM)),
        "n_cbd": int(np.sum(phases == CBD)), "top_um": top, "thickness_um": metrics["thickness_um"],
        "porosity": metrics["porosity"], "porosity_all": metrics["porosity_all"],
        "mass_ratio_am_cbd": [float(m) for m in mass_ratio], "cbd_nanoporosity": nanoporosity,
        "cbd_density_g_cm3": densities[CBD], "cbd_volume_fraction": cbd_fraction,
        "cbd_diameter_um": cbd_diameter * size_scale,
        "cbd_share_of_solid_voxels": metrics["cbd_share_of_solid"],
        "am_surface_on_cbd": metrics["am_surface_on_cbd"],
        "voxel_size_um": voxel_size, "timestep_us": dt,
        "contact_model": CONTACT_MODEL, "contact_parameters": json.dumps(contact),
        "pack_parameters": json.dumps(PACK), "liggghts_version": liggghts_version(), "dem_wall_time_s": wall,
    }

    def write(f):
        f.attrs.update(attrs)
        g = f.create_group("particles")
        g["positions"], g["radii"], g["phases"] = positions, radii, phases
        f.create_dataset("volume", data=volume, compression="gzip", compression_opts=4)

    _atomic_h5(out, write)
    keys = ("seed", "n_am", "n_cbd", "top_um", "thickness_um", "porosity", "porosity_all", "cbd_volume_fraction",
            "cbd_share_of_solid_voxels", "am_surface_on_cbd")
    return {"out": str(out), **{k: attrs[k] for k in keys}, "cbd_by_height": cbd_distribution(volume),
            "dem_wall_time_s": wall}


# ----------------------------------------------------------------------------- calender

def _press_stl(path: Path, box_xy) -> None:
    """A flat square press at z = 0 covering the periodic box (two facets)."""
    lx, ly = box_xy
    corners = [((0, 0, 0), (lx, 0, 0), (lx, ly, 0)), ((0, 0, 0), (lx, ly, 0), (0, ly, 0))]
    facets = "".join(
        " facet normal 0 0 1\n  outer loop\n" + "".join(f"   vertex {_num(x)} {_num(y)} {_num(z)}\n" for x, y, z in tri)
        + "  endloop\n endfacet\n" for tri in corners)
    path.write_text(f"solid press\n{facets}endsolid press\n")


def calender(pack_file: Path, cd: float, out: Path, speed: float = DEFAULT_SPEED,
             frame_interval_us: float | None = None, dt: float | None = None,
             voxel_size: float = DEFAULT_VOXEL_SIZE_UM, nz: int = 125, nprocs: int = 1,
             particles_out: Path | None = None, progress: bool | None = None) -> dict:
    """Press the electrode of ``pack_file`` to ``cd`` percent of its thickness, release it and let
    it relax; voxelize every frame and write the series file ``out`` (and ``particles_out``).
    ``progress`` None shows the frame bar only on a terminal, so errors stay one line in logs."""
    from tqdm import tqdm

    if not 0 < cd < 90:
        raise CalbatchError(f"--cd: must be between 0 and 90 percent, got {cd:g}")
    frame_interval_us = FRAME_TRAVEL_UM / speed if frame_interval_us is None and speed > 0 else frame_interval_us
    if not speed > 0 or not frame_interval_us > 0:
        raise CalbatchError(f"--speed {speed:g} and --frame-interval {frame_interval_us:g} must be positive")
    out = Path(out)
    packed = read_pack(Path(pack_file))
    attrs = packed["attrs"]
    positions, radii, phases = packed["positions"], packed["radii"], packed["phases"]
    box_xy = tuple(float(b) for b in attrs["box_um"])
    contact = json.loads(attrs["contact_parameters"])
    h0 = float(attrs["top_um"])  # the press starts touching the highest particle
    shape = _grid_shape(box_xy, voxel_size, nz, h0, 2 * radii.max())
    dt = _timestep(radii, dt)
    travel = cd / 100 * h0
    frame_steps = max(1, int(round(frame_interval_us / dt)))
    press_steps = int(round(travel / speed / dt))
    release_steps = int(round(RELEASE_FACTOR * travel / (2 * speed) / dt))
    # Relaxation: up to the next frame boundary, then RELAX_FRAMES more frames.
    total = -(-(press_steps + release_steps) // frame_steps) * frame_steps + RELAX_FRAMES * frame_steps
    n_frames = total // frame_steps + 1

    run_dir = out.with_suffix(".liggghts")
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "frames").mkdir(parents=True)
    densities = {AM: AM_DENSITY, CBD: float(attrs["cbd_density_g_cm3"])}
    _write_data(run_dir / "particles.data", positions, radii, phases, box_xy, h0 + 3 * radii.max(), densities)
    _press_stl(run_dir / "press.stl", box_xy)
    script = _script("calender", dt, contact, skin=0.25 * 2 * radii.min(), press_start=_num(h0),
                     frame_steps=frame_steps, speed=_num(speed), release_speed=_num(2 * speed),
                     press_steps=press_steps, release_steps=release_steps,
                     release_damping=contact["release_damping"],
                     relax_steps=total - press_steps - release_steps)

    # Wall time per frame: when each frame's dump appears (mtime), less the previous one's.
    bar = tqdm(total=n_frames, desc=f"{out.name} CD {cd:g}", unit="frame", file=sys.stderr,
               disable=not progress, leave=False)

    def poll():
        bar.update(len(list((run_dir / "frames").glob("frame.*.txt"))) - bar.n)

    start = time.time()
    run_liggghts(run_dir, script, nprocs, on_poll=poll)
    bar.close()
    dumps = sorted((run_dir / "frames").glob("frame.*.txt"), key=lambda p: int(p.name.split(".")[1]))
    steps = np.array([int(p.name.split(".")[1]) for p in dumps])
    if len(dumps) != n_frames:
        raise CalbatchError(f"LIGGGHTS wrote {len(dumps)} of {n_frames} frames; see its log {run_dir / 'log.liggghts'}")
    stamps = np.array([start] + [p.stat().st_mtime for p in dumps])
    # float32, as stored: the particle file then rebuilds exactly these voxels
    frames_xyz = np.stack([_read_dump(p) for p in dumps]).astype(np.float32)
    radii = radii.astype(np.float32)

    time_us = steps * dt
    release_start = press_steps * dt
    press_z = np.where(time_us <= release_start, h0 - speed * time_us,
                       np.minimum(h0 - travel + 2 * speed * (time_us - release_start), h0 - travel + RELEASE_FACTOR * travel))
    phase = np.where(steps <= press_steps, "press", np.where(steps <= press_steps + release_steps, "release", "relax"))
    series = {
        "time_us": time_us, "press_z_um": press_z, "phase": phase, "wall_time_s": np.diff(stamps),
        "positions": frames_xyz, "radii": radii, "phases": phases,
        "attrs": {
            "format": SERIES_FORMAT, "cd_percent": float(cd),
            "microstructure_id": int(attrs["microstructure_id"]), "seed": int(attrs["seed"]),
            "box_um": list(box_xy), "voxel_size_um": voxel_size, "uncalendered_top_um": h0,
            "press_lowest_um": h0 - travel, "press_speed_m_s": speed, "release_speed_m_s": 2 * speed,
            "frame_interval_us": frame_steps * dt, "timestep_us": dt,
            "contact_model": CONTACT_MODEL, "contact_parameters": json.dumps(contact),
            "liggghts_version": liggghts_version(), "dem_wall_time_s": float(stamps[-1] - stamps[0]),
            "pack_porosity": float(attrs["porosity"]), "pack_file": Path(pack_file).name,
            **{k: attrs[k] for k in FORMULATION_ATTRS if k in attrs},
        },
    }
    series["frames"] = np.stack([voxelize_spheres(x, radii, phases, box_xy, shape, voxel_size) for x in frames_xyz])
    write_series(out, series)
    if particles_out is not None:
        write_series(Path(particles_out), series, with_frames=False)
    shutil.rmtree(run_dir / "frames")  # the dumps live on in the series; the log and input stay
    return summarize(series, str(out))


def summarize(series: dict, name: str) -> dict:
    """Porosity and thickness before/after, spring-back and cost of one series."""
    from .metrics import measure

    a = series["attrs"]
    vs = float(a["voxel_size_um"])
    first, last = (measure(series["frames"][i], vs, float(a["cbd_nanoporosity"])) for i in (0, -1))
    lowest = float(a["press_lowest_um"])
    top0 = float(a["uncalendered_top_um"])
    final_top = float(np.max(series["positions"][-1][:, 2] + series["radii"]))
    in_press = series["phase"] == "press"
    return {
        "series": name, "cd_percent": float(a["cd_percent"]), "microstructure_id": int(a["microstructure_id"]),
        "frames": int(len(series["time_us"])), "porosity_before": first["porosity"], "porosity_after": last["porosity"],
        "porosity_all_before": first["porosity_all"], "porosity_all_after": last["porosity_all"],
        "cbd_share_of_solid_after": last["cbd_share_of_solid"], "am_surface_on_cbd_after": last["am_surface_on_cbd"],
        "contact_area_after_um2": {k: last["contact_area_um2"][k] for k in ("AM-CBD", "pore-AM", "pore-CBD")},
        "thickness_before_um": first["thickness_um"], "thickness_after_um": last["thickness_um"],
        "press_lowest_um": lowest, "top_after_um": final_top,
        "spring_back_percent": 100 * (final_top - lowest) / top0,
        "press_in_contact_at_end": bool(final_top > series["press_z_um"][-1] - 1e-6),
        "dem_wall_time_s": float(np.sum(series["wall_time_s"])),
        "dem_wall_time_per_press_frame_s": float(np.mean(series["wall_time_s"][in_press][1:])) if in_press.sum() > 1 else float("nan"),
    }


# ----------------------------------------------------------------------------- revoxelize

def revoxelize(sources: list[Path], out: Path, voxel_size: float = DEFAULT_VOXEL_SIZE_UM, nz: int = 125) -> list[dict]:
    """Voxelize the particle frames of series or particle files again (another grid), no DEM.
    ``out`` is a folder when there are several sources or it exists as one."""
    from tqdm import tqdm

    out = Path(out)
    many = len(sources) > 1 or out.is_dir() or out.suffix != ".h5"
    results = []
    for src in tqdm(sources, desc="revoxelize", unit="series", file=sys.stderr, leave=False):
        series = read_series(Path(src), frames=False)
        box_xy = tuple(float(b) for b in series["attrs"]["box_um"])
        top = float(np.max(series["positions"][:, :, 2] + series["radii"]))
        shape = _grid_shape(box_xy, voxel_size, nz, top, 2 * float(series["radii"].max()))
        series["frames"] = np.stack([voxelize_spheres(x, series["radii"], series["phases"], box_xy, shape, voxel_size)
                                     for x in series["positions"]])
        series["attrs"]["voxel_size_um"] = voxel_size
        target = out / Path(src).name if many else out
        write_series(target, series)
        results.append({"source": str(src), "out": str(target), "shape_zyx": list(shape)})
    return results


# ----------------------------------------------------------------------------- dataset

DEFAULT_CDS = (20, 25, 30, 35, 40, 45, 50)
RANDOM_CD_RANGE = (20.0, 50.0)
MANIFEST = "dataset.json"


def cd_label(cd: float) -> str:
    """A CD as it appears in file names: 35 -> '35', 27.3 -> '27.3'."""
    return f"{float(cd):g}"


def dataset_plan(n: int = 4, cds=DEFAULT_CDS, n_random: int = 4, random_cds: int = 7, seed: int = 1,
                 cd_range=RANDOM_CD_RANGE) -> list[dict]:
    """Which electrode gets which seed and CDs: electrodes 1..n at ``cds`` (the paper's grid, so its
    split applies), then ``n_random`` more at ``random_cds`` CDs each, drawn uniformly in ``cd_range``
    (0.1 % steps) from a generator seeded by (seed, electrode): the same plan on every run."""
    if n < 0 or n_random < 0 or n + n_random < 1 or random_cds < 1:
        raise CalbatchError(f"--n {n}, --n-random {n_random}, --random-cds {random_cds}: need at least one electrode "
                            "and one CD each")
    lo, hi = (float(c) for c in cd_range)
    for cd in (*cds, lo, hi):
        if not 0 < cd < 90:
            raise CalbatchError(f"--cd: must be between 0 and 90 percent, got {cd:g}")
    plan = [{"microstructure_id": ms, "seed": seed + ms - 1, "cds": [float(c) for c in cds]} for ms in range(1, n + 1)]
    for ms in range(n + 1, n + n_random + 1):
        rng = np.random.default_rng([seed, ms])
        drawn = sorted({round(float(c), 1) for c in rng.uniform(lo, hi, 4 * random_cds)})
        picks = rng.choice(len(drawn), size=min(random_cds, len(drawn)), replace=False)
        plan.append({"microstructure_id": ms, "seed": seed + ms - 1, "cds": sorted(drawn[i] for i in picks)})
    return plan


def _dataset_pack(out_dir: str, ms: int, seed: int, settings: dict) -> str:
    path = Path(out_dir) / "packs" / f"ms{ms}.h5"
    if not path.exists():
        pack(path, seed=seed, microstructure_id=ms, **settings)
    return str(path)


def _dataset_series(out_dir: str, pack_path: str, ms: int, cd: float, settings: dict) -> dict:
    out = Path(out_dir)
    name = f"ms{ms}_cd{cd_label(cd)}.h5"
    series_path, particles_path = out / name, out / "particles" / name
    if series_path.exists() and particles_path.exists():
        return summarize(read_series(series_path), str(series_path))
    if particles_path.exists():  # only the voxels are missing: rebuild them without DEM
        revoxelize([particles_path], series_path, settings.get("voxel_size", DEFAULT_VOXEL_SIZE_UM),
                   settings.get("nz", 125))
        return summarize(read_series(series_path), str(series_path))
    return calender(Path(pack_path), cd, series_path, particles_out=particles_path, progress=False, **settings)


def _check_manifest(out_dir: Path, manifest: dict) -> None:
    """Write the dataset's plan and settings, or check that a resumed run asks for the same."""
    path = out_dir / MANIFEST
    manifest = json.loads(json.dumps(manifest))  # tuples as lists, as they come back from the file
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise CalbatchError(f"{path}: not a calbatch dataset manifest (invalid JSON)") from None
        if old != manifest:
            diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            raise CalbatchError(f"{path}: this folder holds a dataset made with other settings ({', '.join(diff)}); "
                                "use another --out or the same options")
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, path)


def dataset(out_dir: Path, plan: list[dict] | None = None, workers: int = 2,
            pack_settings: dict | None = None, calender_settings: dict | None = None) -> dict:
    """Pack every electrode of ``plan`` (:func:`dataset_plan`, by default the paper's 4 x 7 grid plus
    4 electrodes at random CDs) and calender it at its CDs, over ``workers`` processes. Resumable:
    finished files are skipped, every file is written through a temporary name, and the plan and
    settings are kept in ``dataset.json`` so a resumed run cannot mix settings."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from tqdm import tqdm

    plan = dataset_plan() if plan is None else plan
    if workers < 1:
        raise CalbatchError(f"--workers {workers}: must be at least 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    liggghts_command()  # fail before forking when LIGGGHTS is missing
    _check_manifest(out_dir, {"format": "calbatch-dem-dataset/1", "plan": plan,
                              "pack_settings": pack_settings or {}, "calender_settings": calender_settings or {}})
    pgid_file = out_dir / "dataset.pgid"
    pgid_file.write_text(f"{os.getpgrp()}\n")  # lets a benchmark pause us with kill -STOP -PGID
    total = sum(len(e["cds"]) for e in plan)
    cds_of = {e["microstructure_id"]: e["cds"] for e in plan}
    results, failures = [], []
    try:
        with ProcessPoolExecutor(max_workers=workers) as pool, \
                tqdm(total=total, desc="dem dataset", unit="series", file=sys.stderr) as bar:
            pending = {pool.submit(_dataset_pack, str(out_dir), e["microstructure_id"], e["seed"], pack_settings or {}):
                       ("pack", e["microstructure_id"]) for e in plan}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    kind, key = pending.pop(fut)
                    try:
                        value = fut.result()
                    except CalbatchError as exc:
                        failures.append(f"{kind} {key}: {exc}")
                        bar.update(len(cds_of[key]) if kind == "pack" else 1)
                        continue
                    if kind == "pack":  # longest series first keeps both workers busy to the end
                        for cd in sorted(cds_of[key], reverse=True):
                            pending[pool.submit(_dataset_series, str(out_dir), value, key, cd,
                                                calender_settings or {})] = ("series", (key, cd))
                    else:
                        results.append(value)
                        bar.update(1)
    finally:
        if pgid_file.exists() and pgid_file.read_text().strip() == str(os.getpgrp()):
            pgid_file.unlink()
    results.sort(key=lambda r: (r["microstructure_id"], r["cd_percent"]))
    if failures:
        raise CalbatchError(f"{len(failures)} of {total} runs failed (rerun to resume); first: {failures[0]}")
    return {"out": str(out_dir), "series": results}


def format_table(rows: list[dict]) -> str:
    head = f"{'series':<28} {'CD':>4} {'frames':>6} {'eps0':>6} {'eps':>6} {'spring%':>7} {'s/frame':>7}"
    lines = [head] + [
        f"{Path(r['series']).name:<28} {r['cd_percent']:>4g} {r['frames']:>6} {r['porosity_before']:>6.3f} "
        f"{r['porosity_after']:>6.3f} {r['spring_back_percent']:>7.2f} {r['dem_wall_time_per_press_frame_s']:>7.2f}"
        for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots

def plot(series_path: Path, out_dir: Path, slices: int = 4) -> list[str]:
    """PNG plots of one series: phase volumes and thickness/press against time, x-z slices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics import measure

    series = read_series(Path(series_path))
    a = series["attrs"]
    vs = float(a["voxel_size_um"])
    metrics = [measure(v, vs) for v in series["frames"]]
    t = series["time_us"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(series_path).stem
    title = f"microstructure {a['microstructure_id']}, CD {a['cd_percent']:g} %"
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("pore", "CBD", "AM"):
        ax.plot(t, [m["counts"][name] * vs**3 for m in metrics], marker=".", label=name)
    ax.set(xlabel="simulated time (us)", ylabel="phase volume (um$^3$)", title=title)
    ax.legend()
    paths.append(out_dir / f"{stem}_volumes.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(t, [m["thickness_um"] for m in metrics], marker=".", label="electrode thickness (voxels)")
    ax.plot(t, series["press_z_um"], "--", label="press position")
    for phase, color in (("release", "tab:orange"), ("relax", "tab:green")):
        sel = series["phase"] == phase
        if sel.any():
            ax.axvspan(t[sel].min(), t[sel].max(), color=color, alpha=0.1, label=phase)
    ax.set(xlabel="simulated time (us)", ylabel="height (um)", title=title)
    ax.legend()
    paths.append(out_dir / f"{stem}_thickness.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    picks = np.unique(np.linspace(0, len(t) - 1, slices).round().astype(int))
    fig, axes = plt.subplots(1, len(picks), figsize=(3 * len(picks), 4))
    colors = matplotlib.colors.ListedColormap(["white", "tab:red", "dimgray", "white", "lightblue"])
    for ax, i in zip(np.atleast_1d(axes), picks):
        frame = series["frames"][i]
        ax.imshow(frame[:, frame.shape[1] // 2, :], origin="lower", cmap=colors, vmin=0, vmax=4,
                  interpolation="nearest", extent=(0, frame.shape[2] * vs, 0, frame.shape[0] * vs))
        ax.set(title=f"{series['phase'][i]} t={t[i]:.0f} us", xlabel="x (um)")
    np.atleast_1d(axes)[0].set_ylabel("z (um)")
    fig.suptitle(f"{title}, x-z slice at mid y: white pore, red CBD, grey AM, blue void")
    paths.append(out_dir / f"{stem}_slices.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [str(p) for p in paths]


# ----------------------------------------------------------------------------- CLI

def add_cli(subparsers) -> None:
    p = subparsers.add_parser("dem", help="DEM ground truth with LIGGGHTS: pack, calender, dataset, plot")
    sub = p.add_subparsers(dest="dem_command", required=True, metavar="VERB")

    def common(q, grid=True):
        if grid:
            q.add_argument("--voxel-size", type=float, default=DEFAULT_VOXEL_SIZE_UM, help="voxel edge in um (default 0.4)")
            q.add_argument("--nz", type=int, default=125, help="voxels along z, the press axis (default 125)")
        q.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def dem_options(q):
        q.add_argument("--dt", type=float, default=None, help="time step in us (default: 2.5e-4 x smallest diameter in um)")
        q.add_argument("--np", type=int, default=1, dest="nprocs", help="MPI ranks per LIGGGHTS run (default 1)")

    def calender_options(q):
        q.add_argument("--speed", type=float, default=DEFAULT_SPEED, help="press speed in m/s (default 0.05)")
        q.add_argument("--frame-interval", type=float, default=None,
                       help="simulated time between frames in us (default: 1 um of press travel, 20 us at 0.05 m/s)")

    def pack_options(q):
        q.add_argument("--particles", type=int, default=DEFAULT_AM_PARTICLES,
                       help=f"AM particles per electrode (default {DEFAULT_AM_PARTICLES})")
        q.add_argument("--box", type=float, default=30.4, help="periodic x-y box edge in um (default 30.4)")
        q.add_argument("--size-scale", type=float, default=1.0, help="scale all diameters (small test systems)")
        q.add_argument("--mass-ratio", type=_mass_ratio, default=DEFAULT_MASS_RATIO, metavar="AM:CBD",
                       help="AM:CBD mass ratio (default 96:4)")
        q.add_argument("--nanoporosity", type=float, default=DEFAULT_NANOPOROSITY,
                       help="nanopore fraction of the CBD domain (default 0.5)")
        q.add_argument("--cbd-diameter", type=float, default=CBD_DIAMETER_UM,
                       help=f"CBD sphere diameter in um (default {CBD_DIAMETER_UM:g})")

    q = sub.add_parser("pack", help="settle an uncalendered electrode (pack file)")
    q.add_argument("--out", required=True, help="pack file to write (.h5)")
    q.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    q.add_argument("--id", type=int, default=1, dest="microstructure_id", help="microstructure id (default 1)")
    pack_options(q)
    common(q)
    dem_options(q)
    q.set_defaults(run=_cli_pack)

    q = sub.add_parser("calender", help="press a pack to a CD, release, relax; write the series file")
    q.add_argument("pack", help="pack file from `calbatch dem pack`")
    q.add_argument("--cd", type=float, required=True, help="compression degree in percent of the thickness")
    q.add_argument("--out", required=True, help="series file to write (.h5)")
    q.add_argument("--particles-out", default=None, help="also write the compact particle-only file here")
    q.add_argument("--plots", default=None, help="folder for the series' PNG plots")
    common(q)
    dem_options(q)
    calender_options(q)
    q.set_defaults(run=_cli_calender)

    q = sub.add_parser("dataset", help="electrodes x CDs (paper grid + random CDs), in parallel, resumable")
    q.add_argument("--out", default="data/dem/default", help="output folder (default data/dem/default)")
    q.add_argument("--n", type=int, default=4, help="electrodes at the --cd list (default 4)")
    q.add_argument("--cd", type=float, nargs="+", default=list(DEFAULT_CDS), help="CD list in percent (default 20 25 .. 50)")
    q.add_argument("--n-random", type=int, default=4, help="further electrodes at random CDs (default 4)")
    q.add_argument("--random-cds", type=int, default=7, help="random CDs per further electrode, in 20-50 (default 7)")
    q.add_argument("--seed", type=int, default=1, help="seed of microstructure 1; k gets seed+k-1")
    q.add_argument("--workers", type=int, default=2, help="parallel LIGGGHTS runs (default 2)")
    pack_options(q)
    common(q)
    dem_options(q)
    calender_options(q)
    q.set_defaults(run=_cli_dataset)

    q = sub.add_parser("revoxelize", help="voxelize the particle frames of series files again, without DEM")
    q.add_argument("sources", nargs="+", help="series or particle files (.h5)")
    q.add_argument("--out", required=True, help="output file, or folder for several sources")
    common(q)
    q.set_defaults(run=_cli_revoxelize)

    q = sub.add_parser("plot", help="PNG plots of one series")
    q.add_argument("series", help="series file (.h5)")
    q.add_argument("--out", required=True, help="folder for the PNGs")
    common(q, grid=False)
    q.set_defaults(run=_cli_plot)


def _mass_ratio(text: str) -> tuple[float, float]:
    try:
        am, cbd = (float(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected AM:CBD such as 96:4, got {text!r}") from None
    return am, cbd


def _pack_settings(args) -> dict:
    return {"n_am": args.particles, "box_xy": args.box, "size_scale": args.size_scale, "voxel_size": args.voxel_size,
            "nz": args.nz, "dt": args.dt, "nprocs": args.nprocs, "mass_ratio": args.mass_ratio,
            "nanoporosity": args.nanoporosity, "cbd_diameter": args.cbd_diameter}


def _cli_pack(args) -> None:
    r = pack(Path(args.out), seed=args.seed, microstructure_id=args.microstructure_id, **_pack_settings(args))
    print_result(r, args.json, "\n".join(f"{k:<26} {v}" for k, v in r.items()))


def _calender_settings(args) -> dict:
    return {"speed": args.speed, "frame_interval_us": args.frame_interval, "dt": args.dt,
            "voxel_size": args.voxel_size, "nz": args.nz, "nprocs": args.nprocs}


def _cli_calender(args) -> None:
    r = calender(Path(args.pack), args.cd, Path(args.out),
                 particles_out=Path(args.particles_out) if args.particles_out else None, **_calender_settings(args))
    if args.plots:
        r["plots"] = plot(Path(args.out), Path(args.plots))
    print_result(r, args.json, format_table([r]))


def _cli_dataset(args) -> None:
    plan = dataset_plan(args.n, args.cd, args.n_random, args.random_cds, args.seed)
    r = dataset(Path(args.out), plan, args.workers, _pack_settings(args), _calender_settings(args))
    print_result(r, args.json, format_table(r["series"]))


def _cli_revoxelize(args) -> None:
    r = revoxelize([Path(s) for s in args.sources], Path(args.out), args.voxel_size, args.nz)
    print_result({"revoxelized": r}, args.json, "\n".join(f"{x['source']} -> {x['out']} {x['shape_zyx']}" for x in r))


def _cli_plot(args) -> None:
    paths = plot(Path(args.series), Path(args.out))
    print_result({"plots": paths}, args.json, "\n".join(paths))
