"""Free rollout of an exported frame model (ONNX Runtime, CPU): from an uncalendered volume (or the
first three frames of a series) through the DEM's press schedule for a CD, each step fed the
model's own previous frames; written in the DEM series format. A plain Python loop, the reference
the engine must match bit for bit.

Decision rules (:func:`decide`) turn the model's class scores into codes; all end with the
voxelizer's void rule (slices above the highest solid voxel are void, every other non-solid voxel
pore), so void is only ever above the electrode:

- ``argmax``: the most probable class per voxel;
- ``conserve``: the AM and CBD voxel counts of the previous frame are kept, given to the voxels most
  probably AM (then CBD) -- per-step erosion cannot remove material;
- ``expected``: as ``conserve`` with the counts the model expects (the sum of its probabilities);
- ``budget``: the AM and CBD counts and the top of every frame that the model's phase budget
  (:mod:`calbatch.budget`, fitted on its training series) plans from frame 0 and the schedule;
- ``particles`` (the default): the budget's counts and top, but the previous frame's particles (AM
  and CBD connected components) are moved whole, each by the shift along z that the network's
  probabilities favour, rather than re-decided voxel by voxel (:func:`move_particles`).
Ties are broken by voxel index, so the result is deterministic.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from . import _core
from .dataset import COND_NAMES, conditioning, past_indices
from .errors import CalbatchError
from .export import load_onnx
from .schedule import press_schedule
from .volume import AM, CBD, PORE, VOID, validate

RULES = ("particles", "budget", "conserve", "expected", "argmax")
DEFAULT_RULE = "particles"
PLANNED_RULES = ("particles", "budget")  # the rules that take the phase budget's counts and top
PARTICLE_SHIFTS = sorted(range(-6, 7), key=lambda s: (abs(s), s))  # slices a particle may move a step
PARTICLE_NETWORK_WEIGHT = 1e-3  # the network's say over the moved particles' voxels
PARTICLE_SPLIT_EROSION = 4  # voxels of erosion that part touching AM spheres (chosen on validation)
CLASS_CODES = np.array([0, 1, 2, 4], dtype=np.uint8)


class ExtrapolationWarning(UserWarning):
    """A rollout at a CD outside the range the model was trained on."""


def void_rule(codes: np.ndarray) -> np.ndarray:
    """The voxelizer's definition: above the highest slice holding a solid voxel void, elsewhere
    every non-solid voxel pore."""
    solid = (codes == AM) | (codes == CBD)
    rows = np.flatnonzero(solid.any(axis=(1, 2)))
    top = rows[-1] if rows.size else -1
    out = np.where(solid, codes, PORE).astype(np.uint8)
    out[top + 1:] = VOID
    return out


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


def expected_counts(below: np.ndarray) -> tuple[int, int]:
    """The AM and CBD voxel counts the model expects from class scores (n, 4) float32: the sums
    (float64) of p = score / max(((s0 + s1) + s2) + s3, 1e-30), in float32 as the core does it, rounded."""
    with np.errstate(all="ignore"):  # overflow, 0/0, inf/inf: IEEE results, as in the core
        total = np.maximum(((below[:, 0] + below[:, 1]) + below[:, 2]) + below[:, 3], np.float32(1e-30))
        sums = float((below[:, 2] / total).sum(dtype=np.float64)), float((below[:, 1] / total).sum(dtype=np.float64))
    return int(round(sums[0])), int(round(sums[1]))  # a sum that is not finite: ValueError or OverflowError


def decide(scores: np.ndarray, previous: np.ndarray, rule: str = "conserve", first_void: int | None = None,
           counts: tuple[int, int] | None = None) -> np.ndarray:
    """Codes (nz, ny, nx) from class scores (nz, ny, nx, 4) by ``rule`` (see the module); slices
    from ``first_void`` up (above the press) are void whatever the scores; ``counts``: the (AM, CBD)
    voxel counts of the ``budget`` rule (:func:`calbatch.budget.plan`). The C++ core does the
    work (``_core.decide``), bit for bit as the numpy reference ``calbatch._reference.decide``."""
    if rule not in RULES:
        raise CalbatchError(f"--decision: unknown rule {rule!r} (one of {', '.join(RULES)})")
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    if scores.ndim != 4 or scores.shape[-1] != 4:
        raise CalbatchError(f"class scores: expected shape (nz, ny, nx, 4), got {scores.shape}")
    nz = scores.shape[0]
    fv = nz if first_void is None else int(min(max(first_void, 0), nz))
    if rule == "argmax":
        counts = None
    elif rule == "conserve":
        counts = int(np.count_nonzero(previous == AM)), int(np.count_nonzero(previous == CBD))
    elif rule in PLANNED_RULES:
        if counts is None:
            raise CalbatchError(f"decision rule {rule}: no (AM, CBD) counts given")
        counts = int(counts[0]), int(counts[1])
        if rule == "particles":
            return reach_planned_top(scores, move_particles(scores, previous, fv, counts), fv, counts)
    else:
        counts = expected_counts(scores[:fv].reshape(-1, 4))
    out = _core.decide(scores, fv, counts)
    return reach_planned_top(scores, out, fv, counts) if rule == "budget" else out


def probabilities(scores: np.ndarray) -> np.ndarray:
    return scores / np.maximum(scores.sum(axis=-1, keepdims=True), np.float32(1e-30))


CODE_TO_CLASS = np.array([0, 1, 2, 3, 3], dtype=np.int64)  # phase code -> class index (void: 3)


def decide_near(codes: np.ndarray, probs: np.ndarray, first_void: int, counts, weight: float = 1e-3) -> np.ndarray:
    """The frame nearest ``codes`` with the planned (AM, CBD) ``counts``: the codes' one-hot plus
    ``weight`` x the network's probabilities ``probs`` (small: they only break the ties, where moved
    particles overlapped or left room)."""
    near = probs * np.float32(weight)
    near.reshape(-1, 4)[np.arange(codes.size), CODE_TO_CLASS[codes.ravel()]] += np.float32(1.0)
    return _core.decide(np.ascontiguousarray(near, dtype=np.float32), first_void, counts)


def particle_labels(mask: np.ndarray, erosion: int = 0) -> tuple[np.ndarray, int]:
    """Particle labels (1..n, gaps allowed) of ``mask`` and n: its connected components; with
    ``erosion``, the components of the mask eroded that many voxels (so touching spheres part at
    their necks), each voxel joining the nearest; a component too thin to survive the erosion stays
    one particle."""
    from scipy import ndimage

    whole, n_whole = ndimage.label(mask)
    if not erosion:
        return whole, n_whole
    cores, n = ndimage.label(ndimage.binary_erosion(mask, iterations=erosion))
    if n == 0:
        return whole, n_whole
    nearest = ndimage.distance_transform_edt(cores == 0, return_distances=False, return_indices=True)
    labels = np.where(mask, cores[tuple(nearest)], 0)
    has_core = np.zeros(n_whole + 1, dtype=bool)
    has_core[whole[cores > 0]] = True
    thin = mask & ~has_core[whole]
    labels[thin] = n + whole[thin]
    return labels, n + n_whole


def move_particles(scores: np.ndarray, previous: np.ndarray, first_void: int, counts) -> np.ndarray:
    """The ``particles`` rule: every AM and CBD particle of ``previous`` (a connected component;
    touching AM spheres parted by :func:`particle_labels`) moves whole along z, by the shift in
    :data:`PARTICLE_SHIFTS` under which its voxels are most probably its phase in the network's
    scores (the smallest such shift); AM wins where moved particles overlap, as in the voxelizer;
    then the planned counts (:func:`decide_near`). Re-deciding every voxel each step lets CBD spread
    over the AM surfaces (AM-CBD contact area 60 % above the DEM's after a free rollout, measured);
    particles that keep their shape do not."""
    nz, ny, nx = previous.shape
    probs = probabilities(scores)
    moved = np.where(previous == VOID, VOID, PORE).astype(np.uint8)
    shifts = np.asarray(PARTICLE_SHIFTS)
    reach = int(np.abs(shifts).max())
    for code, channel in ((CBD, 1), (AM, 2)):
        labels, n = particle_labels(previous == code, PARTICLE_SPLIT_EROSION if code == AM else 0)
        if n == 0:
            continue
        flat = np.flatnonzero(labels)  # voxel indices, z-major
        ids = labels.ravel()[flat] - 1
        # the channel padded with its end slices along z: a shifted index never leaves the array
        padded = np.pad(probs[..., channel], ((reach, reach), (0, 0), (0, 0)), mode="edge").ravel()
        base = flat + reach * ny * nx
        fit = np.stack([np.bincount(ids, weights=padded[base + s * ny * nx], minlength=n) for s in shifts])
        paste_shifted(moved, labels, shifts[np.argmax(fit, axis=0)], code, first_void)
    return decide_near(moved, probs, first_void, counts, PARTICLE_NETWORK_WEIGHT)


def paste_shifted(out: np.ndarray, labels: np.ndarray, shift: np.ndarray, code: int, first_void: int) -> None:
    """Write ``code`` into ``out`` where each particle of ``labels`` (1..n) lands after moving
    ``shift[label - 1]`` slices along z, kept between the collector and the slice below ``first_void``."""
    plane = out.shape[1] * out.shape[2]
    flat = np.flatnonzero(labels)
    zz = flat // plane + shift[labels.ravel()[flat] - 1]
    out.ravel()[np.clip(zz, 0, max(first_void, 1) - 1) * plane + flat % plane] = code


def solid_top(frame: np.ndarray) -> int:
    """Slices up to the highest one holding solid (0 for none)."""
    rows = np.flatnonzero(((frame == AM) | (frame == CBD)).any(axis=(1, 2)))
    return int(rows[-1] + 1) if rows.size else 0


def lift_particles(frame: np.ndarray, top: int, first_void: int) -> np.ndarray:
    """``frame`` stretched along z from ``top`` slices to ``first_void`` (collector fixed) the way a
    granular electrode springs back: every AM and CBD particle (a connected component) is moved up
    whole, by the stretch of its centroid, and the gaps open in the pore between them; AM wins
    where moved particles overlap (as in the voxelizer). Void above the electrode stays void."""
    from scipy import ndimage

    out = np.where(frame == VOID, VOID, PORE).astype(np.uint8)
    factor = first_void / top
    for code in (CBD, AM):
        labels, n = ndimage.label(frame == code)
        if n == 0:
            continue
        z = np.nonzero(labels)[0]
        ids = labels[labels > 0]
        centroid = np.bincount(ids, weights=z, minlength=n + 1)[1:] / np.bincount(ids, minlength=n + 1)[1:]
        paste_shifted(out, labels, np.rint((centroid + 0.5) * factor - 0.5 - centroid).astype(np.int64), code,
                      min(first_void, frame.shape[0]))
    return out


def reach_planned_top(scores: np.ndarray, decided: np.ndarray, first_void: int, counts) -> np.ndarray:
    """The ``budget`` rule's second pass: a frame whose material stops below the planned top
    (``first_void``) has its particles lifted up to it (:func:`lift_particles`) and is decided again
    with the planned counts, the network's probabilities breaking the ties (so the counts hold
    where lifted particles overlapped). Each step moves the material by a fraction of a voxel that
    the hard decision rounds away, which leaves the spring-back a few slices short by the end of
    the release; stretching the scores instead would stretch the particles themselves."""
    top = solid_top(decided)
    if not 0 < top < first_void:
        return decided
    return decide_near(lift_particles(decided, top, first_void), probabilities(scores), first_void, counts)


def electrode_top(volume: np.ndarray, voxel_size: float, source: str = "start") -> float:
    """The uncalendered top h0 (um): the highest slice holding solid, + 1, times the voxel size."""
    rows = np.flatnonzero(((volume == AM) | (volume == CBD)).any(axis=(1, 2)))
    if not rows.size:
        raise CalbatchError(f"{source}: the first frame holds no solid voxel")
    return float((rows[-1] + 1) * voxel_size)


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
    """A rollout's plan (:func:`calbatch.budget.plan`): the planned top of every frame (the
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


def rollout(model: Path, start: np.ndarray, cd: float, voxel_size: float, h0: float | None = None,
            speed: float | None = None, frame_interval_us: float | None = None, dt: float | None = None,
            rule: str = DEFAULT_RULE, threads: int | None = None, attrs: dict | None = None,
            progress: bool | None = None) -> dict:
    """Roll ``model`` out from ``start`` (one volume (nz, ny, nx) or the first three frames
    (3, nz, ny, nx)) to ``cd`` percent; returns a series dict (:func:`calbatch.series.read_series`'s
    keys). ``h0`` defaults to the top of the first frame's highest solid voxel; the schedule's speed,
    frame interval and time step default to the model's training data."""
    from tqdm import tqdm

    sess, meta = load_onnx(Path(model), threads)
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
    from .series import FORMULATION_ATTRS, write_series
    from .volume import DEFAULT_VOXEL_SIZE_UM, read_volume

    if start_frames not in (1, 3):
        raise CalbatchError(f"--start-frames: 1 or 3, got {start_frames}")
    start = Path(start)
    kw: dict = {}
    if start.suffix == ".h5" and ":" not in str(start):
        import h5py

        from .series import read_series

        s = read_series(start, frames=False)
        with h5py.File(start, "r") as f:
            if "frames" not in f:
                raise CalbatchError(f"{start}: no voxel frames (/frames); run `calbatch dem revoxelize` on it first")
            vol = f["frames"][:start_frames]
        a = s["attrs"]
        voxel_size = float(a["voxel_size_um"]) if voxel_size is None else voxel_size
        kw = {"h0": float(a["uncalendered_top_um"]), "speed": float(a["press_speed_m_s"]),
              "frame_interval_us": float(a["frame_interval_us"]), "dt": float(a["timestep_us"]) if "timestep_us" in a else None,
              "attrs": {"microstructure_id": int(a.get("microstructure_id", -1)), "start_file": start.name,
                        **{k: a[k] for k in FORMULATION_ATTRS if k in a}}}
    else:
        if start_frames != 1:
            raise CalbatchError(f"--start-frames 3 needs a series file, got the volume {start}")
        vol = read_volume(start)[None]
        kw = {"attrs": {"start_file": start.name}}
    voxel_size = DEFAULT_VOXEL_SIZE_UM if voxel_size is None else voxel_size
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ExtrapolationWarning)
        series = rollout(Path(model), vol if start_frames == 3 else vol[0], cd, voxel_size, rule=rule, threads=threads,
                         progress=progress, **kw)
    for w in caught:
        sys.stderr.write(f"calbatch rollout: warning: {w.message}\n")
    write_series(Path(out), series)
    steps = series["wall_time_s"][start_frames:]
    return {"out": str(out), "frames": int(len(series["frames"])), "cd_percent": float(cd),
            "cd_extrapolated": series["attrs"]["cd_extrapolated"], "decision_rule": rule,
            "seconds_per_step": float(np.mean(steps)) if steps.size else 0.0,
            "warnings": [str(w.message) for w in caught]}
