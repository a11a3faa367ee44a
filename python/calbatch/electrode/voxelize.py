"""Voxelization of sphere packings (DEM particle frames) onto the calbatch grid.

Entry point: :func:`voxelize_spheres`. A voxel takes the phase of a sphere covering its centre
(AM wins over CBD where they overlap); spheres are imaged across the periodic x and y boundaries.
The electrode's top is the highest z-slice that holds any solid voxel: uncovered voxels at or
below it are pore (0), those above it void (4) -- the same definition as the metrics' thickness.
"""

from __future__ import annotations

import numpy as np

from .. import _core
from ..errors import CalbatchError
from .volume import AM, CBD, DEFAULT_VOXEL_SIZE_UM


def voxelize_spheres(
    centers: np.ndarray,
    radii: np.ndarray,
    phases: np.ndarray,
    box_xy: tuple[float, float],
    shape_zyx: tuple[int, int, int] = (125, 76, 76),
    voxel_size: float = DEFAULT_VOXEL_SIZE_UM,
    z0: float = 0.0,
) -> np.ndarray:
    """Voxelize spheres into a uint8 ``[z, y, x]`` volume.

    ``centers`` (n, 3) as x, y, z in the same length unit as ``radii``, ``box_xy`` and
    ``voxel_size`` (um by convention); voxel (z, y, x) has its centre at ((x+.5)v, (y+.5)v,
    z0+(z+.5)v). ``phases`` holds 1 (CBD) or 2 (AM) per sphere; ``box_xy`` is the periodic length
    in x and y.
    """
    centers = np.ascontiguousarray(centers, dtype=np.float64)
    radii = np.ascontiguousarray(radii, dtype=np.float64).ravel()
    phases = np.ascontiguousarray(phases, dtype=np.uint8).ravel()
    if centers.ndim != 2 or centers.shape[1] != 3 or centers.shape[0] != radii.size:
        raise CalbatchError(f"centers: expected shape ({radii.size}, 3), got {centers.shape}")
    if phases.size != radii.size:
        raise CalbatchError(f"phases: expected {radii.size} entries, got {phases.size}")
    if radii.size and (not np.all(np.isfinite(centers)) or not np.all(radii > 0)):
        raise CalbatchError("spheres: centres must be finite and radii positive")
    bad = np.setdiff1d(np.unique(phases), [CBD, AM])
    if bad.size:
        raise CalbatchError(f"phases: sphere phase {int(bad[0])} is not 1 (CBD) or 2 (AM)")
    if len(shape_zyx) != 3 or min(shape_zyx) < 1:
        raise CalbatchError(f"shape: expected three positive sizes (nz, ny, nx), got {tuple(shape_zyx)}")
    if voxel_size <= 0 or min(box_xy) <= 0:
        raise CalbatchError(f"voxel size {voxel_size} and box {tuple(box_xy)} must be positive")
    volume, _top = _core.voxelize_spheres(
        centers, radii, phases, float(box_xy[0]), float(box_xy[1]), float(z0), float(voxel_size),
        tuple(int(s) for s in shape_zyx),
    )
    return volume


def grid_shape(box_xy, voxel_size: float, nz: int, height: float, max_diameter: float) -> tuple[int, int, int]:
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
