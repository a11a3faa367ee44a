"""What a view is made from: any calbatch file that holds an electrode, read into one shape.

A series file (DEM or rollout) gives its voxel frames and, where it has them, its particle frames;
a compact particle file gives particle frames (voxelized on its own grid when voxels are asked for);
a pack gives its one settled frame; a volume spec (``.npy``, ``.tif``, ``file.h5:/dataset``,
``series.h5:/frames/7``) gives one voxel frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..electrode.volume import DEFAULT_VOXEL_SIZE_UM, read_volume, split_h5_path
from ..errors import CalbatchError

_SERIES, _PACK = "calbatch-dem-series", "calbatch-dem-pack"
VOLUME_SUFFIXES = (".npy", ".tif", ".tiff", ".h5", ".hdf5")
GRID_NZ = 125  # slices of the grid a particle-only file is voxelized on (the paper's, as `dem revoxelize`)


@dataclass
class Source:
    """An electrode's frames: ``voxels`` (F, nz, ny, nx) uint8 or None, ``positions`` (F, n, 3) um
    with ``radii`` (n) and ``phases`` (n) or None, the voxel size, the x-y box (um) and a label."""
    name: str
    voxel_size: float
    voxels: np.ndarray | None = None
    positions: np.ndarray | None = None
    radii: np.ndarray | None = None
    phases: np.ndarray | None = None
    box_xy: tuple[float, float] | None = None
    times_us: np.ndarray | None = None
    label: str = ""

    @property
    def frames(self) -> int:
        return len(self.voxels) if self.voxels is not None else len(self.positions)

    @property
    def has_particles(self) -> bool:
        return self.positions is not None and self.positions.shape[1] > 0

    def frame_index(self, frame: int) -> int:
        """``frame`` counted from 0, or from the end when negative; refused when out of range."""
        if not -self.frames <= frame < self.frames:
            raise CalbatchError(f"{self.name}: frame {frame} out of range ({self.frames} frames: 0..{self.frames - 1}, "
                                "or -1 for the last)")
        return frame % self.frames

    def voxel_frame(self, frame: int) -> np.ndarray:
        """One voxel frame; a particle-only file is voxelized on its own grid (as ``dem revoxelize``)."""
        i = self.frame_index(frame)
        if self.voxels is not None:
            return self.voxels[i]
        from ..electrode.voxelize import grid_shape, voxelize_spheres

        top = float(np.max(self.positions[:, :, 2] + self.radii))
        shape = grid_shape(self.box_xy, self.voxel_size, GRID_NZ, top, 2 * float(self.radii.max()))
        return voxelize_spheres(self.positions[i], self.radii, self.phases, self.box_xy, shape, self.voxel_size)


def _label(attrs: dict, stem: str) -> str:
    """``DEM`` or ``model NAME`` (else the file's name), then the electrode and the CD, as the file records them."""
    head = f"model {attrs['model_file']}" if "model_file" in attrs else "DEM" if "liggghts_version" in attrs else stem
    parts = []
    if "microstructure_id" in attrs and int(attrs["microstructure_id"]) >= 0:
        parts.append(f"electrode {int(attrs['microstructure_id'])}")
    if "cd_percent" in attrs:
        parts.append(f"CD {float(attrs['cd_percent']):g} %")
    return head + ("\n" + ", ".join(parts) if parts else "")


def open_source(spec: str, voxel_size: float | None = None) -> Source:
    """The frames of ``spec`` (see the module); ``voxel_size`` (um) for a bare volume (default 0.4)."""
    import h5py

    path, inner = split_h5_path(str(spec))
    fmt = ""
    if inner is None and Path(path).suffix.lower() in (".h5", ".hdf5") and Path(path).is_file():
        try:
            with h5py.File(path, "r") as f:
                fmt = str(f.attrs.get("format", ""))
        except OSError as exc:
            raise CalbatchError(f"{path}: cannot read HDF5 ({exc})") from None
    stem = Path(path).stem
    if fmt.startswith(_SERIES):
        from ..electrode.series import read_series

        s = read_series(Path(path))
        a = s["attrs"]
        src = Source(str(spec), float(a.get("voxel_size_um", DEFAULT_VOXEL_SIZE_UM)), voxels=s.get("frames"),
                     positions=s["positions"], radii=s["radii"], phases=s["phases"], times_us=s["time_us"],
                     box_xy=tuple(float(b) for b in a["box_um"]) if "box_um" in a else None, label=_label(a, stem))
        if not src.has_particles:
            src.positions = None
        if src.voxels is None and not src.has_particles:
            raise CalbatchError(f"{path}: a series with neither voxel nor particle frames")
        return src
    if fmt.startswith(_PACK):
        from ..electrode.series import read_pack

        p = read_pack(Path(path))
        with h5py.File(path, "r") as f:
            volume = f["volume"][()] if "volume" in f else None
        a = p["attrs"]
        return Source(str(spec), float(a.get("voxel_size_um", DEFAULT_VOXEL_SIZE_UM)),
                      voxels=None if volume is None else volume[np.newaxis], positions=p["positions"][np.newaxis],
                      radii=p["radii"], phases=p["phases"], box_xy=tuple(float(b) for b in a["box_um"]),
                      times_us=np.zeros(1), label=_label(a, stem) + ", uncalendered")
    if Path(path).suffix.lower() not in VOLUME_SUFFIXES:
        raise CalbatchError(f"{spec}: neither a calbatch series, particle file or pack nor a volume "
                            f"({', '.join(VOLUME_SUFFIXES)} or file.h5:/dataset)")
    volume = read_volume(spec)  # refuses, in one line, an .h5 or volume file it cannot read
    return Source(str(spec), DEFAULT_VOXEL_SIZE_UM if voxel_size is None else float(voxel_size),
                  voxels=volume[np.newaxis], label=stem)
