"""Free rollout of an exported model (ONNX Runtime, CPU): from an uncalendered volume (or the
first three frames of a series) through the DEM's press schedule for a CD, each step fed the
model's own previous frames, or for a particle model its own particles (the stepping loop of
:mod:`calbatch.surrogate.step`, one case); written in the DEM series format, a particle model's
particles also as the DEM's particle file. Decision rules: :mod:`calbatch.surrogate.rules`.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

from ..errors import CalbatchError
from .contract import ExtrapolationWarning, model_kind
from .rules import DEFAULT_RULE
from .step import Stepper


def rollout(model: Path, start: np.ndarray, cd: float, voxel_size: float | None, h0: float | None = None,
            speed: float | None = None, frame_interval_us: float | None = None, dt: float | None = None,
            rule: str = DEFAULT_RULE, threads: int | None = None, attrs: dict | None = None,
            progress: bool | None = None, source: str | None = None) -> dict:
    """Roll ``model`` out from ``start`` (one volume (nz, ny, nx) or the first three frames
    (3, nz, ny, nx)) to ``cd`` percent; returns a series dict (:func:`calbatch.electrode.series.read_series`'s
    keys). ``h0`` defaults to the top of the first frame's highest solid voxel; the schedule's speed,
    frame interval and time step default to the model's training data. A CD outside the model's
    trained range warns (:class:`ExtrapolationWarning`). ``source``: the file ``start`` was read
    from, where a particle model finds its particles (else it decomposes ``start``)."""
    stepper = Stepper(model, rule=rule, voxel_size=voxel_size, threads=threads)
    given = np.asarray(start)
    particles = stepper.particles_of(source, 0 if given.ndim == 3 else len(given) - 1) if source is not None else None
    case = stepper.start(start, cd, h0, speed=speed, frame_interval_us=frame_interval_us, dt=dt, particles=particles)
    stepper.model.extrapolated(cd, warn=True)
    stepper.run([case], sys.stderr.isatty() if progress is None else progress, desc=f"rollout CD {cd:g}")
    return stepper.series(case, "calbatch rollout", attrs)


def rollout_file(model: Path, start: Path, cd: float, out: Path, start_frames: int = 1, rule: str = DEFAULT_RULE,
                 voxel_size: float | None = None, threads: int | None = None, progress: bool | None = None,
                 particles_out: Path | None = None) -> dict:
    """Roll out from a series file (its first ``start_frames`` frames, its top and schedule) or a
    volume file, write the series to ``out`` (and a particle model's particles, in the DEM's
    particle file format, to ``particles_out``); returns a summary."""
    from ..electrode.checks import check_series
    from ..electrode.series import FORMULATION_ATTRS, write_series
    from ..electrode.volume import read_volume, volume_attrs, voxel_size_of

    if start_frames not in (1, 3):
        raise CalbatchError(f"start_frames: 1 or 3, got {start_frames}")
    if particles_out is not None:
        kind = model_kind(model)
        if kind.frames:
            raise CalbatchError(f"particles_out {particles_out}: the model {model} is a {kind.value} (frame) model and "
                                "moves no particles; give a particle model")
        if Path(particles_out).resolve() in (Path(out).resolve(), Path(str(start).split(":")[0]).resolve()):
            raise CalbatchError(f"particles_out {particles_out}: is the start or the --out file; choose another name")
    start = Path(start)
    kw: dict = {}
    if start.suffix == ".h5" and ":" not in str(start):
        import h5py

        from ..electrode.series import read_series

        s = read_series(start, frames=False)
        with h5py.File(start, "r") as f:
            if "frames" not in f:
                raise CalbatchError(f"{start}: no voxel frames (/frames); run `calbatch dem revoxelize` on it first")
            vol = f["frames"][:start_frames]
        a = s["attrs"]
        if voxel_size is not None and abs(voxel_size - float(a["voxel_size_um"])) > 1e-6 * voxel_size:
            raise CalbatchError(f"{start}: its voxels are {float(a['voxel_size_um']):g} um; --voxel-size says {voxel_size:g} um")
        voxel_size = float(a["voxel_size_um"])
        kw = {"h0": float(a["uncalendered_top_um"]), "speed": float(a["press_speed_m_s"]),
              "frame_interval_us": float(a["frame_interval_us"]), "dt": float(a["timestep_us"]) if "timestep_us" in a else None,
              "attrs": {"microstructure_id": int(a.get("microstructure_id", -1)), "start_file": start.name,
                        **{k: a[k] for k in FORMULATION_ATTRS if k in a}}}
    else:
        if start_frames != 1:
            raise CalbatchError(f"start_frames 3 needs a series file, got the volume {start}")
        vol = read_volume(start)[None]
        if voxel_size is not None or "voxel_size_um" in volume_attrs(start):  # else the model's, as every command
            voxel_size = voxel_size_of(start, voxel_size)
        kw = {"h0": volume_attrs(start).get("top_um"), "attrs": {"start_file": start.name}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ExtrapolationWarning)
        series = rollout(Path(model), vol if start_frames == 3 else vol[0], cd, voxel_size, rule=rule, threads=threads,
                         progress=progress, source=str(start), **kw)
    for w in caught:
        sys.stderr.write(f"calbatch rollout: warning: {w.message}\n")
    check_series(series)  # not physical: refused, nothing written
    write_series(Path(out), series)
    if particles_out is not None:
        write_series(Path(particles_out), series, with_frames=False)
    steps = series["wall_time_s"][start_frames:]
    return {"out": str(out), "frames": int(len(series["frames"])), "cd_percent": float(cd),
            "cd_extrapolated": series["attrs"]["cd_extrapolated"], "decision_rule": series["attrs"]["decision_rule"],
            **({"particles_out": str(particles_out)} if particles_out is not None else {}),
            "seconds_per_step": float(np.mean(steps)) if steps.size else 0.0,
            "warnings": [str(w.message) for w in caught]}
