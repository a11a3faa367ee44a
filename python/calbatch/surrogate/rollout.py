"""Free rollout of an exported frame model (ONNX Runtime, CPU): from an uncalendered volume (or the
first three frames of a series) through the DEM's press schedule for a CD, each step fed the
model's own previous frames; written in the DEM series format. A plain Python loop, the reference
the engine must match bit for bit.

Decision rules: :mod:`calbatch.surrogate.rules`.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from ..electrode.checks import check_scores
from ..electrode.schedule import press_schedule
from ..electrode.volume import validate
from ..errors import CalbatchError
from ..model.dataset import COND_NAMES, conditioning, past_indices
from ..model.export import load_onnx
from .rules import CLASS_CODES, DEFAULT_RULE, PLANNED_RULES, RULES, decide, solid_top, void_rule


class ExtrapolationWarning(UserWarning):
    """A rollout at a CD outside the range the model was trained on."""


def void_from(press_z: float, voxel_size: float, nz: int, overlap: int = 0) -> int:
    """The first known-void slice with the press at ``press_z`` (um): ``overlap`` slices past the
    first slice whose centre lies above the press (spheres overlap the press wall; a model's
    :func:`wall_overlap`)."""
    return int(np.clip(np.floor(press_z / voxel_size - 0.5) + 1 + overlap, 0, nz))


def wall_overlap(meta: dict) -> int:
    """The slices above the press a model was trained to fill (its metadata ``wall_overlap_voxels``;
    0 for models made before it was recorded: they were trained with the void from the press up)."""
    value = meta.get("wall_overlap_voxels", "0")
    try:
        slices = int(value)
    except (TypeError, ValueError):
        slices = -1
    if slices < 0:
        raise CalbatchError(f"model metadata 'wall_overlap_voxels': expected a whole number >= 0, got {value!r}")
    return slices


def electrode_top(volume: np.ndarray, voxel_size: float, source: str = "start") -> float:
    """The uncalendered top h0 (um): the highest slice holding solid, + 1, times the voxel size."""
    top = solid_top(volume)
    if not top:
        raise CalbatchError(f"{source}: the first frame holds no solid voxel")
    return float(top * voxel_size)


def start_frames(start, voxel_size: float, h0: float | None = None) -> tuple[np.ndarray, float]:
    """A rollout's given frames (1 or 3, validated) from one volume or the first three frames of a
    series, and the uncalendered top h0 (default: from the first frame)."""
    start = np.asarray(start)
    given = start[None] if start.ndim == 3 else start
    if given.ndim != 4 or given.shape[0] not in (1, 3):
        raise CalbatchError(f"start: expected one volume (nz, ny, nx) or 3 frames, got shape {start.shape}")
    given = np.stack([validate(given[k], f"start frame {k}") for k in range(given.shape[0])])
    return given, electrode_top(given[0], voxel_size) if h0 is None else float(h0)


def network_inputs(frames: np.ndarray, t: int, cd: float, h0: float, voxel_size: float, top_um: np.ndarray, stages):
    """The network's inputs for the step t -> t + 1 of a rollout: the 3 past frames (channels
    last, batch of one) and the conditioning of the target frame (``top_um``: the planned tops)."""
    x = np.ascontiguousarray(np.moveaxis(frames[past_indices(t)], 0, -1))[None]
    return x, conditioning(cd, h0, voxel_size, top_um[t], top_um[t + 1], stages[t + 1])[None]


def step_plan(meta: dict, path, rule: str, sched: dict, cd: float, h0: float, frame0: np.ndarray, voxel_size: float) -> dict:
    """A rollout's plan (:func:`calbatch.surrogate.budget.plan`): the planned top of every frame (the
    network's conditioning), each step's first void slice and, for the ``budget`` rule, its (AM,
    CBD) counts (else None; the first void is then the press plus the model's wall overlap).
    ``paper`` models read only the CD from the conditioning: they get the press positions."""
    nz, pz = frame0.shape[0], sched["press_z_um"]
    if meta.get("kind", "") == "paper":
        p = {"top_um": np.asarray(pz, dtype=np.float64)}
    else:
        from .budget import from_meta, plan

        p = plan(from_meta(meta, path), sched, cd, h0, frame0)
    if rule not in PLANNED_RULES or meta.get("kind", "") == "paper":
        overlap = wall_overlap(meta)
        p["first_void"] = np.array([void_from(pz[t + 1], voxel_size, nz, overlap) for t in range(len(pz) - 1)], dtype=np.int64)
        p["counts"] = None
    return p


def next_frame(out: np.ndarray, previous: np.ndarray, meta: dict, rule: str, first_void: int,
               counts: tuple[int, int] | None = None) -> np.ndarray:
    """The next frame from one network output: ``paper`` models regress the codes (the nearest
    valid code, then the void rule), calbatch's give class scores for :func:`decide`."""
    if meta.get("kind", "") == "paper":
        return void_rule(CLASS_CODES[np.argmin(np.abs(out[..., None] - CLASS_CODES), axis=-1)])
    return decide(out, previous, rule, first_void, counts)


def _meta_list(meta: dict, key: str, path) -> list:
    try:
        return json.loads(meta[key])
    except (KeyError, ValueError):
        raise CalbatchError(f"{path}: model metadata {key!r} missing or unreadable") from None


def check_input(meta: dict, path, shape, voxel_size: float, h0: float) -> None:
    """Refuse a grid or voxel size the model cannot take (one line naming the value), or a model
    conditioned otherwise than calbatch conditions it."""
    if meta.get("kind", "") != "paper" and _meta_list(meta, "conditioning", path) != list(COND_NAMES):
        raise CalbatchError(f"{path}: the model was trained on the conditioning {meta['conditioning']}, calbatch now "
                            f"gives {list(COND_NAMES)}: train it again")
    vs_model = float(meta.get("voxel_size_um", "nan"))
    if not abs(voxel_size - vs_model) <= 1e-6 * vs_model:
        raise CalbatchError(f"voxel size {voxel_size:g} um: the model {path} was trained at {vs_model:g} um")
    grid = _meta_list(meta, "grid_zyx", path)
    nz, ny, nx = shape
    if json.loads(meta.get("fixed_grid", "false")) and list(shape) != list(grid):
        raise CalbatchError(f"grid {list(shape)}: the model {path} takes only its training grid {grid} (z, y, x)")
    m = int(meta.get("grid_multiple_xy", "1"))
    if ny % m or nx % m or min(ny, nx) < 2 * m or nz < 2 * m:
        raise CalbatchError(f"grid {list(shape)}: the model {path} needs x and y multiples of {m} "
                            f"(and every side at least {2 * m})")
    if nz * voxel_size < h0:
        raise CalbatchError(f"grid {list(shape)}: {nz} slices x {voxel_size:g} um hold less than the "
                            f"electrode's {h0:.2f} um")


def rollout(model: Path, start: np.ndarray, cd: float, voxel_size: float | None, h0: float | None = None,
            speed: float | None = None, frame_interval_us: float | None = None, dt: float | None = None,
            rule: str = DEFAULT_RULE, threads: int | None = None, attrs: dict | None = None,
            progress: bool | None = None) -> dict:
    """Roll ``model`` out from ``start`` (one volume (nz, ny, nx) or the first three frames
    (3, nz, ny, nx)) to ``cd`` percent; returns a series dict (:func:`calbatch.electrode.series.read_series`'s
    keys). ``h0`` defaults to the top of the first frame's highest solid voxel; the schedule's speed,
    frame interval and time step default to the model's training data."""
    from tqdm import tqdm

    sess, meta = load_onnx(Path(model), threads)
    voxel_size = float(meta.get("voxel_size_um", "nan")) if voxel_size is None else voxel_size
    given, h0 = start_frames(start, voxel_size, h0)
    check_input(meta, model, given.shape[1:], voxel_size, h0)
    lo, hi = _meta_list(meta, "cd_range_percent", model)
    extrapolated = not lo - 1e-9 <= cd <= hi + 1e-9
    if extrapolated:
        warnings.warn(f"CD {cd:g} % is outside the model's trained range {lo:g}-{hi:g} %: an extrapolation",
                      ExtrapolationWarning, stacklevel=2)
    sched_meta = json.loads(meta.get("schedule", "{}") or "{}")
    speed = speed if speed is not None else sched_meta.get("press_speed_m_s", 0.05)
    frame_interval_us = frame_interval_us if frame_interval_us is not None else sched_meta.get("frame_interval_us")
    dt = dt if dt is not None else sched_meta.get("timestep_us")
    sched = press_schedule(cd, h0, speed, frame_interval_us, dt)
    n = sched["n_frames"]
    if given.shape[0] > n:
        raise CalbatchError(f"start: {given.shape[0]} frames given, the schedule has only {n}")
    if rule not in RULES:
        raise CalbatchError(f"--decision: unknown rule {rule!r} (one of {', '.join(RULES)})")
    p = step_plan(meta, model, rule, sched, cd, h0, given[0], voxel_size)
    first_void, counts = p["first_void"], p["counts"]
    frames = np.empty((n, *given.shape[1:]), dtype=np.uint8)
    frames[:given.shape[0]] = given
    wall = np.zeros(n)
    pz, stages = sched["press_z_um"], sched["phase"]
    show = sys.stderr.isatty() if progress is None else progress
    for t in tqdm(range(given.shape[0] - 1, n - 1), desc=f"rollout CD {cd:g}", unit="frame", file=sys.stderr,
                  disable=not show, leave=False):
        t0 = time.perf_counter()
        x, c = network_inputs(frames, t, cd, h0, voxel_size, p["top_um"], stages)
        out = sess.run(None, {"frames": x, "cond": c})[0][0]
        check_scores(out, t + 1)
        frames[t + 1] = next_frame(out, frames[t], meta, rule, first_void[t], None if counts is None else counts[t])
        wall[t + 1] = time.perf_counter() - t0
    nz, ny, nx = frames.shape[1:]
    a = dict(attrs or {})
    a.update({"cd_percent": float(cd), "uncalendered_top_um": float(h0), "press_lowest_um": float(sched["press_lowest_um"]),
              "press_speed_m_s": float(speed), "release_speed_m_s": 2 * float(speed),
              "frame_interval_us": float(sched["frame_steps"] * sched["dt"]), "timestep_us": float(sched["dt"]),
              "voxel_size_um": float(voxel_size), "box_um": [nx * voxel_size, ny * voxel_size],
              "source": "calbatch rollout", "model_file": Path(model).name, "model_kind": meta.get("kind", ""),
              "model_calbatch_version": meta.get("calbatch_version", ""), "decision_rule": rule,
              "start_frames": int(given.shape[0]), "cd_extrapolated": bool(extrapolated)})
    a.setdefault("microstructure_id", -1)
    return {"frames": frames, "time_us": sched["time_us"], "press_z_um": pz, "phase": stages, "wall_time_s": wall,
            "positions": np.zeros((n, 0, 3), np.float32), "radii": np.zeros(0, np.float32),
            "phases": np.zeros(0, np.uint8), "attrs": a}


def rollout_file(model: Path, start: Path, cd: float, out: Path, start_frames: int = 1, rule: str = DEFAULT_RULE,
                 voxel_size: float | None = None, threads: int | None = None, progress: bool | None = None) -> dict:
    """Roll out from a series file (its first ``start_frames`` frames, its top and schedule) or a
    volume file, write the series to ``out``; returns a summary."""
    from ..electrode.checks import check_series
    from ..electrode.series import FORMULATION_ATTRS, write_series
    from ..electrode.volume import read_volume, volume_attrs, voxel_size_of

    if start_frames not in (1, 3):
        raise CalbatchError(f"--start-frames: 1 or 3, got {start_frames}")
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
            raise CalbatchError(f"--start-frames 3 needs a series file, got the volume {start}")
        vol = read_volume(start)[None]
        if voxel_size is not None or "voxel_size_um" in volume_attrs(start):  # else the model's, as every command
            voxel_size = voxel_size_of(start, voxel_size)
        kw = {"h0": volume_attrs(start).get("top_um"), "attrs": {"start_file": start.name}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ExtrapolationWarning)
        series = rollout(Path(model), vol if start_frames == 3 else vol[0], cd, voxel_size, rule=rule, threads=threads,
                         progress=progress, **kw)
    for w in caught:
        sys.stderr.write(f"calbatch rollout: warning: {w.message}\n")
    check_series(series)  # not physical: refused, nothing written
    write_series(Path(out), series)
    steps = series["wall_time_s"][start_frames:]
    return {"out": str(out), "frames": int(len(series["frames"])), "cd_percent": float(cd),
            "cd_extrapolated": series["attrs"]["cd_extrapolated"], "decision_rule": rule,
            "seconds_per_step": float(np.mean(steps)) if steps.size else 0.0,
            "warnings": [str(w.message) for w in caught]}
