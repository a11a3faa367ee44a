"""The HDF5 files of calbatch's calendering series and packs, in one place for every stage that
reads or writes them (DEM, dataset, model, rollout, screen). The format is in docs/dem.md.

A series file holds the voxel frames ``/frames`` (F, nz, ny, nx) uint8, per frame ``/time_us``,
``/press_z_um``, ``/phase`` (press / release / relax) and ``/wall_time_s``, and the particle frames
``/particles/{positions,radii,phases}``; without ``/frames`` it is the compact particle file. A pack
file holds the settled particles and the voxelized uncalendered electrode ``/volume``. Every file
is written through a temporary name, so a file under its final name is complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import CalbatchError
from .volume import DEFAULT_NANOPOROSITY

SERIES_FORMAT = "calbatch-dem-series/2"
PACK_FORMAT = "calbatch-dem-pack/2"
# Version 1 files (CBD at 4 % of the solid volume, no formulation attributes) still read.
READABLE_SERIES = ("calbatch-dem-series/1", SERIES_FORMAT)
READABLE_PACKS = ("calbatch-dem-pack/1", PACK_FORMAT)
# What a series inherits from its pack about the formulation.
FORMULATION_ATTRS = ("mass_ratio_am_cbd", "cbd_nanoporosity", "cbd_density_g_cm3", "cbd_volume_fraction",
                     "cbd_diameter_um")

def atomic_text(path: Path, text: str) -> None:
    """Write a text file through a hidden temporary name, flushed to disk before it takes ``path``:
    a reader, or a resume after a crash, never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_h5(path: Path, write) -> None:
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
    found = f.attrs.get("format")
    if found not in formats:
        f.close()  # the attribute was read before closing: h5py forgets it after
        raise CalbatchError(f"{path}: not a {formats[-1]} file (attribute 'format' is {found!r})")
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
        f.attrs.update({**series["attrs"], "format": SERIES_FORMAT})
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

    atomic_h5(Path(path), write)



def write_pack(path: Path, positions, radii, phases, volume: np.ndarray, attrs: dict) -> None:
    """Write a pack file (settled particles, voxelized electrode, attributes) atomically."""

    def write(f):
        f.attrs.update({"format": PACK_FORMAT, **attrs})
        g = f.create_group("particles")
        g["positions"], g["radii"], g["phases"] = positions, radii, phases
        f.create_dataset("volume", data=volume, compression="gzip", compression_opts=4)

    atomic_h5(Path(path), write)
