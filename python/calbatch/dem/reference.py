"""A DEM run as the reference a model's result is judged against (``calbatch bench dl-vs-dem``,
``calbatch optimize --check-dem``): the default pack and calender settings (shipped in
:mod:`calbatch.data`), a pack's electrode, and one timed calendering on the pack's own grid.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..data import default_dataset_path, example_pack_path
from ..errors import CalbatchError

DEFAULT_PACK = example_pack_path()
DEFAULT_DATASET = default_dataset_path()
# What the DEM takes from a dataset's settings; the grid (voxel size, slices) is the pack's own, so
# the DEM frames lie on the grid of the volume the rollout starts from.
CALENDER_KEYS = ("speed", "frame_interval_us", "dt", "nprocs")


def default_pack() -> Path:
    """The pack of the shipped example electrode (electrode 1 of the default dataset)."""
    if not DEFAULT_PACK.is_file():
        raise CalbatchError(f"{DEFAULT_PACK}: the example electrode's pack is missing; give a pack file "
                            "(`calbatch dem pack --out pack.h5`)")
    return DEFAULT_PACK


def read_electrode(pack: Path) -> dict:
    """A pack's uncalendered voxels ``volume``, its top ``h0`` (um, where the press starts, as in
    the DEM and the training series) and ``voxel_size``."""
    import h5py

    from ..electrode.series import read_pack

    attrs = read_pack(Path(pack))["attrs"]  # checks the format, one line if not a pack
    with h5py.File(pack, "r") as f:
        if "volume" not in f:
            raise CalbatchError(f"{pack}: no /volume (the voxelized pack); make it with `calbatch dem pack`")
        volume = f["volume"][()]
    return {"volume": volume, "h0": float(attrs["top_um"]), "voxel_size": float(attrs["voxel_size_um"]),
            "pack": str(pack)}


def dem_settings(dataset: Path | None = DEFAULT_DATASET, **overrides) -> dict:
    """The calendering settings of a dataset plan (default: the default dataset's, the ones that
    made the training data), else calbatch's DEM defaults; ``overrides`` that are not None win."""
    from .settings import DEFAULT_SPEED

    settings = {"speed": DEFAULT_SPEED, "frame_interval_us": None, "dt": None, "nprocs": 1}
    source = "calbatch DEM defaults"
    if dataset is not None and not Path(dataset).is_file():
        raise CalbatchError(f"--dataset {dataset}: no such file (a dataset.json of `calbatch dem dataset`, or 'none')")
    if dataset is not None:
        try:
            plan = json.loads(Path(dataset).read_text())["calender_settings"]
        except (ValueError, KeyError, TypeError):
            raise CalbatchError(f"{dataset}: no readable calender_settings (a `calbatch dem dataset` plan)") from None
        settings.update({k: plan[k] for k in CALENDER_KEYS if k in plan})
        source = str(dataset)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return {**settings, "source": source}


def run_dem(pack: Path, cd: float, settings: dict, out: Path, progress: bool | None = None) -> tuple[dict, float]:
    """Calender ``pack`` to ``cd`` with LIGGGHTS at ``settings``, voxelized on the pack's grid; the
    series (with frames) and the wall time of the whole run (LIGGGHTS, voxelization, writing)."""
    from ..electrode.series import read_series
    from .calender import calender

    e = read_electrode(pack)
    t0 = time.perf_counter()
    calender(Path(pack), cd, Path(out), voxel_size=e["voxel_size"], nz=e["volume"].shape[0], progress=progress,
             **{k: settings[k] for k in CALENDER_KEYS})
    wall = time.perf_counter() - t0
    return read_series(Path(out)), wall
