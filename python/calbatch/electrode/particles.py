"""The particle state of an electrode: its AM and CBD spheres in a box periodic in x and y.

One door, :func:`particles_of`, reads it from a DEM pack or a DEM particle series (the particles it
holds, exactly) or from a voxel-only electrode (a sphere decomposition in the C++ core, with a line
on how faithfully its voxelization returns the input). The per-step hot loops of a particle model
run in the core: :func:`neighbours` (one case or a batch) and :func:`project` (pushing apart
overlaps above a tolerance, the collector and the press as hard walls).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import _core
from ..errors import CalbatchError
from .metrics import compare, measure
from .series import READABLE_PACKS, READABLE_SERIES, read_pack, read_series
from .volume import AM, CBD, DEFAULT_VOXEL_SIZE_UM, read_volume, split_h5_path, validate
from .voxelize import voxelize_spheres

SPHERE_PHASES = {CBD: "CBD", AM: "AM"}
PAIR_TYPES = {"CBD-CBD": (CBD, CBD), "AM-CBD": (AM, CBD), "AM-AM": (AM, AM)}
FIDELITY_CONTACTS = ("pore-CBD", "pore-AM", "AM-CBD")
PROJECT_ITERATIONS = 4  # the projection's Jacobi sweeps


@dataclass(frozen=True)
class Particles:
    """Spheres: ``centres`` (n, 3) x, y, z in um (z = 0 at the collector), ``radii`` (n,) um,
    ``phases`` (n,) 2 AM / 1 CBD, the periodic ``box`` (x, y) in um and the ``voxel_size`` of the
    grid they are rendered on. ``fidelity``: for a decomposition, how its voxelization compares
    with the input (:func:`fidelity_line` says it in one line)."""

    centres: np.ndarray
    radii: np.ndarray
    phases: np.ndarray
    box: tuple[float, float]
    voxel_size: float
    source: str = ""
    fidelity: dict | None = None

    @property
    def n(self) -> int:
        return int(self.radii.size)

    def grid(self, nz: int) -> tuple[int, int, int]:
        """The (nz, ny, nx) grid of ``nz`` slices the spheres are rendered on."""
        return (int(nz), *(int(round(b / self.voxel_size)) for b in self.box[::-1]))

    def voxelize(self, nz: int) -> np.ndarray:
        """The uint8 [z, y, x] volume of ``nz`` slices the core's voxelizer paints from the spheres."""
        return voxelize_spheres(self.centres, self.radii, self.phases, self.box, self.grid(nz), self.voxel_size)


def minimum_image(d: np.ndarray, box) -> np.ndarray:
    """Displacements ``d`` (..., 3) um wrapped in x and y to their nearest periodic image in the box
    (x, y) um; in place, and returned."""
    period = np.asarray(box, dtype=np.float64)[:2]
    d[..., :2] -= period * np.round(d[..., :2] / period)
    return d


def checked(centres, radii, phases, box, voxel_size: float, source: str = "particles",
            fields: tuple[str, str, str] = ("positions", "radii", "phases")) -> Particles:
    """A :class:`Particles` from arrays, refused (naming ``source`` and the field) when the arrays
    disagree in length, a position is not finite, a radius is not positive or a phase is unknown."""
    pos_f, rad_f, ph_f = fields
    centres = np.asarray(centres, dtype=np.float64)
    radii = np.asarray(radii, dtype=np.float64)
    phases = np.asarray(phases)
    if centres.ndim != 2 or centres.shape[1] != 3:
        raise CalbatchError(f"{source}: {pos_f}: expected shape (n, 3), got {centres.shape}")
    n = centres.shape[0]
    for name, a in ((rad_f, radii), (ph_f, phases)):
        if a.shape != (n,):
            raise CalbatchError(f"{source}: {name} has shape {a.shape} but {pos_f} holds {n} particles")
    bad = np.flatnonzero(~np.isfinite(centres).all(axis=1))
    if bad.size:
        raise CalbatchError(f"{source}: {pos_f}: particle {bad[0]} has a non-finite position {centres[bad[0]].tolist()}")
    bad = np.flatnonzero(~(radii > 0) | ~np.isfinite(radii))
    if bad.size:
        raise CalbatchError(f"{source}: {rad_f}: particle {bad[0]} has radius {radii[bad[0]]} (must be positive)")
    bad = np.flatnonzero(~np.isin(phases, list(SPHERE_PHASES)))
    if bad.size:
        raise CalbatchError(f"{source}: {ph_f}: particle {bad[0]} has unknown phase {phases[bad[0]]} (allowed 1 CBD, 2 AM)")
    box = tuple(float(b) for b in np.ravel(box))
    if len(box) != 2 or not min(box) > 0 or not voxel_size > 0:
        raise CalbatchError(f"{source}: box {box} and voxel size {voxel_size} must be positive")
    return Particles(np.ascontiguousarray(centres), np.ascontiguousarray(radii), phases.astype(np.uint8), box,
                     float(voxel_size), source)


def particles_of(source: str | Path, frame: int = 0, voxel_size: float | None = None) -> Particles:
    """The particles of ``source``: a DEM pack file, a DEM series or particle file (its ``frame``,
    negative from the end), or a voxel electrode (``.npy``, TIFF, ``file.h5:/dataset``) decomposed
    into spheres. ``voxel_size`` (um) overrides the file's (voxel files carry none: 0.4)."""
    spec = str(source)
    path, inner = split_h5_path(spec)
    if inner is None and Path(path).suffix.lower() in (".h5", ".hdf5") and Path(path).is_file():
        kind = _h5_format(path)
        if kind in READABLE_PACKS:
            pack = read_pack(Path(path))
            return _from_dem(pack, pack["positions"], path, voxel_size)
        if kind in READABLE_SERIES:
            series = read_series(Path(path), frames=False)
            frames = series["positions"]
            if frames.ndim != 3:
                raise CalbatchError(f"{path}: /particles/positions: expected (frames, n, 3), got {frames.shape}")
            if not -len(frames) <= frame < len(frames):
                raise CalbatchError(f"{path}: frame {frame} out of range ({len(frames)} frames)")
            return _from_dem(series, frames[frame], f"{path}:{frame}", voxel_size)
    volume = read_volume(spec)
    return decompose(volume, DEFAULT_VOXEL_SIZE_UM if voxel_size is None else voxel_size, spec)


def _h5_format(path: str):
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format")
    except OSError as exc:
        raise CalbatchError(f"{path}: cannot read HDF5 ({exc})") from None


def _from_dem(data: dict, positions, source: str, voxel_size: float | None) -> Particles:
    attrs = data["attrs"]
    if "box_um" not in attrs:
        raise CalbatchError(f"{source}: attribute box_um missing")
    size = float(attrs.get("voxel_size_um", DEFAULT_VOXEL_SIZE_UM)) if voxel_size is None else voxel_size
    return checked(positions, data["radii"], data["phases"], attrs["box_um"], size, source,
                   ("/particles/positions", "/particles/radii", "/particles/phases"))


# The greedy cover's settings (calbatch/spheres.hpp), chosen on the default dataset's frames: a ball
# is taken if it paints a fifth of its phase's voxels anew, none below sqrt(2) voxels in radius; a
# candidate refined off the grid weighs each foreign voxel it paints as three of its own and grows at
# most 1.5 voxels beyond the distance transform.
MIN_GAIN, MIN_R2, PENALTY, GROW = 0.2, 2, 3.0, 1.5


def decompose(volume: np.ndarray, voxel_size: float = DEFAULT_VOXEL_SIZE_UM, source: str = "volume") -> Particles:
    """Spheres whose voxelization paints ``volume`` (uint8 [z, y, x], periodic in x and y), with
    ``fidelity``: the re-voxelization's R2, porosity and contact areas against the input."""
    volume = validate(volume, source)
    if not voxel_size > 0:
        raise CalbatchError(f"{source}: voxel size {voxel_size} must be positive")
    centres, radii, phases = _core.sphere_decomposition(volume, MIN_GAIN, MIN_R2, PENALTY, GROW)
    nz, ny, nx = volume.shape
    p = Particles(centres * voxel_size, radii * voxel_size, phases, (nx * voxel_size, ny * voxel_size),
                  float(voxel_size), source)
    return replace(p, fidelity=fidelity(volume, p.voxelize(nz), voxel_size))


def fidelity(truth: np.ndarray, rendered: np.ndarray, voxel_size: float) -> dict:
    """R2 of ``rendered`` against ``truth``, both porosities and the relative error (%) of the
    contact areas in :data:`FIDELITY_CONTACTS`."""
    a, b = measure(truth, voxel_size), measure(rendered, voxel_size)
    contacts = {k: 100.0 * (b["contact_area_voxel2"][k] / a["contact_area_voxel2"][k] - 1)
                if a["contact_area_voxel2"][k] else 0.0 for k in FIDELITY_CONTACTS}
    return {"r2": compare(truth, rendered)["r2"], "porosity": b["porosity"], "porosity_input": a["porosity"],
            "contact_error_percent": contacts}


def fidelity_line(p: Particles) -> str:
    """One line on a decomposition: its spheres and how faithfully they paint the input."""
    f = p.fidelity
    counts = ", ".join(f"{int(np.sum(p.phases == c))} {name}" for c, name in sorted(SPHERE_PHASES.items(), reverse=True))
    if f is None:
        return f"{p.source}: {p.n} particles ({counts}), as the DEM holds them"
    contacts = ", ".join(f"{k} {v:+.1f} %" for k, v in f["contact_error_percent"].items())
    return (f"{p.source}: {p.n} spheres ({counts}); re-voxelized R2 {f['r2']:.4f}, porosity {f['porosity']:.4f}"
            f" (input {f['porosity_input']:.4f}), contact areas {contacts}")


def neighbours(p: Particles, cutoff: float = 0.0, by_radii: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) whose centre distance is below r_i + r_j + cutoff (``by_radii``) or below
    ``cutoff``: (ij (m, 2) int64, delta (m, 3) = x_j - x_i in um, minimum image in x and y)."""
    try:
        return _core.neighbour_pairs(p.centres, p.radii if by_radii else None, *p.box, float(cutoff))
    except ValueError as exc:
        raise CalbatchError(f"{p.source}: {exc}") from None


def neighbours_batch(cases: list[Particles], cutoff: float = 0.0, by_radii: bool = True):
    """:func:`neighbours` over a batch (cases in parallel), particles numbered across the batch in
    case order: (ij, delta, pairs per case)."""
    boxes = np.array([c.box for c in cases], dtype=np.float64).reshape(len(cases), 2)
    radii = [c.radii for c in cases] if by_radii else None
    try:
        return _core.neighbour_pairs_batch([c.centres for c in cases], radii, boxes, float(cutoff))
    except ValueError as exc:
        raise CalbatchError(f"batch: {exc}") from None


def overlaps(p: Particles, quantile: float = 1.0) -> dict[str, float]:
    """The ``quantile`` of the overlap r_i + r_j - d (um) per pair type among overlapping pairs
    (0 where none): the DEM's own overlaps, as a tolerance for :func:`project`."""
    ij, delta = neighbours(p)
    gap = p.radii[ij[:, 0]] + p.radii[ij[:, 1]] - np.linalg.norm(delta, axis=1)
    kinds = np.sort(p.phases[ij], axis=1)
    out = {}
    for name, (a, b) in PAIR_TYPES.items():
        sel = gap[(kinds[:, 0] == min(a, b)) & (kinds[:, 1] == max(a, b))]
        out[name] = float(np.quantile(sel, quantile)) if sel.size else 0.0
    return out


def project(p: Particles, press_z: float | None, tolerance: float | dict[str, float] = 0.0,
            iterations: int = PROJECT_ITERATIONS, average: bool = True) -> tuple[Particles, float]:
    """``iterations`` Jacobi sweeps pushing apart every pair that overlaps by more than its
    tolerance (um; one for all or per pair type, see :data:`PAIR_TYPES`), the heavier sphere moving
    less, each by the mean of its pushes (``average`` False: their sum); then every sphere between
    the collector (z = 0) and the press (``press_z``, None: open), x and y wrapped into the box.
    Returns the projected particles and the largest excess left."""
    projected, excess = project_batch([p], [press_z], tolerance, iterations, average)
    return projected[0], float(excess[0])


def project_batch(cases: list[Particles], press_z: list[float | None], tolerance: float | dict[str, float] = 0.0,
                  iterations: int = PROJECT_ITERATIONS, average: bool = True) -> tuple[list[Particles], np.ndarray]:
    """:func:`project` over a batch (cases in parallel): the projected cases and each one's largest
    excess left."""
    table = tolerance_table(tolerance)
    if len(press_z) != len(cases):
        raise CalbatchError(f"press_z: {len(press_z)} heights for {len(cases)} cases")
    for p, z in zip(cases, press_z):
        if z is not None and not z > 0:
            raise CalbatchError(f"{p.source}: press height {z} um must be positive")
    boxes = np.array([p.box for p in cases], dtype=np.float64).reshape(len(cases), 2)
    press = np.array([-1.0 if z is None else float(z) for z in press_z])
    try:
        centres, excess = _core.project_overlaps([p.centres for p in cases], [p.radii for p in cases],
                                                 [p.phases for p in cases], boxes, press, table, int(iterations),
                                                 average)
    except ValueError as exc:
        raise CalbatchError(f"{cases[0].source if len(cases) == 1 else 'batch'}: {exc}") from None
    return [replace(p, centres=c) for p, c in zip(cases, centres)], excess


def tolerance_table(tolerance: float | dict[str, float], missing: float = 0.0) -> np.ndarray:
    """A projection tolerance (um; one for all or per pair type, see :data:`PAIR_TYPES`; a type not
    named, and the pore code's entries: ``missing``) as the core's (3, 3) table indexed by phase code."""
    table = np.full((3, 3), float(missing))
    for name, (a, b) in PAIR_TYPES.items():
        t = tolerance if np.isscalar(tolerance) else tolerance.get(name, missing)
        table[a, b] = table[b, a] = float(t)
    return table
