"""A first ``calbatch evaluate``: an exported model against DEM series. Per series a free rollout
from frame 0 alone and from the first 3 frames, a teacher-forced pass (true frames in, one step
out), and the persistence baseline (frame 0 repeated); per frame R^2 (the paper's eq. 3), the AM
voxel volume against the DEM's, and on the final frame porosity and thickness. The contact areas,
D_eff / tau, IoU, baselines beyond persistence and the plots of issue 10 are still to come.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import conditioning, past_indices
from .errors import CalbatchError
from .export import load_onnx
from .metrics import compare, measure
from .rollout import CLASS_CODES, decide, rollout, void_from, void_rule
from .series import read_series
from .volume import AM


def _teacher_forced(sess, meta, s: dict, rule: str) -> np.ndarray:
    frames, a = s["frames"], s["attrs"]
    cd, h0, vs = float(a["cd_percent"]), float(a["uncalendered_top_um"]), float(a["voxel_size_um"])
    out = [frames[0]]
    for t in range(len(frames) - 1):
        x = np.ascontiguousarray(np.moveaxis(frames[past_indices(t)], 0, -1))[None]
        c = conditioning(cd, h0, vs, s["press_z_um"][t], s["press_z_um"][t + 1], s["phase"][t + 1])[None]
        y = sess.run(None, {"frames": x, "cond": c})[0][0]
        if meta.get("kind") == "paper":
            out.append(void_rule(CLASS_CODES[np.argmin(np.abs(y[..., None] - CLASS_CODES), axis=-1)]))
        else:
            out.append(decide(y, frames[t], rule, void_from(s["press_z_um"][t + 1], vs, frames.shape[1])))
    return np.stack(out)


def _scores(truth: np.ndarray, pred: np.ndarray, vs: float, first: int) -> dict:
    """Per-frame R^2 (frames from ``first`` on), AM volume ratio, final porosity and thickness."""
    r2 = [compare(truth[t], pred[t])["r2"] for t in range(first, len(truth))]
    am = [float(np.count_nonzero(pred[t] == AM) / max(np.count_nonzero(truth[t] == AM), 1)) for t in range(len(truth))]
    mt, mp = measure(truth[-1], vs), measure(pred[-1], vs)
    return {"r2_per_frame": r2, "r2_mean": float(np.mean(r2)), "r2_worst": float(np.min(r2)),
            "am_volume_ratio_per_frame": am, "am_volume_error_max": float(np.max(np.abs(np.array(am) - 1))),
            "final_porosity": mp["porosity"], "final_porosity_dem": mt["porosity"],
            "final_porosity_rel_error": (mp["porosity"] - mt["porosity"]) / mt["porosity"] if mt["porosity"] else None,
            "final_thickness_voxels": mp["thickness_voxels"], "final_thickness_dem_voxels": mt["thickness_voxels"]}


def evaluate(model: Path, series: list[Path], rule: str = "conserve", threads: int | None = None) -> dict:
    """The report of ``model`` on each of ``series`` (see the module)."""
    sess, meta = load_onnx(Path(model), threads)
    reports = []
    for path in series:
        s = read_series(Path(path))
        if "frames" not in s:
            raise CalbatchError(f"{path}: no voxel frames (/frames); run `calbatch dem revoxelize` on it first")
        frames, a = s["frames"], s["attrs"]
        vs = float(a["voxel_size_um"])
        kw = {"h0": float(a["uncalendered_top_um"]), "speed": float(a["press_speed_m_s"]),
              "frame_interval_us": float(a["frame_interval_us"]), "dt": float(a.get("timestep_us", 5e-4)),
              "rule": rule, "threads": threads, "progress": False}
        r = {"series": str(path), "cd_percent": float(a["cd_percent"]), "frames": int(len(frames))}
        free1 = rollout(Path(model), frames[0], float(a["cd_percent"]), vs, **kw)
        if len(free1["frames"]) != len(frames):
            raise CalbatchError(f"{path}: the rollout has {len(free1['frames'])} frames, the series {len(frames)}: "
                                "the schedule differs from the DEM's")
        free3 = rollout(Path(model), frames[:3], float(a["cd_percent"]), vs, **kw)
        r["cd_extrapolated"] = bool(free1["attrs"]["cd_extrapolated"])
        r["seconds_per_step"] = float(np.mean(free1["wall_time_s"][1:]))
        r["free_from_frame0"] = _scores(frames, free1["frames"], vs, 1)
        r["free_from_3_frames"] = _scores(frames, free3["frames"], vs, 3)
        r["teacher_forced"] = _scores(frames, _teacher_forced(sess, meta, s, rule), vs, 1)
        r["persistence"] = _scores(frames, np.repeat(frames[:1], len(frames), axis=0), vs, 1)
        reports.append(r)
    keys = ("free_from_frame0", "free_from_3_frames", "teacher_forced", "persistence")
    summary = {k: {"r2_mean": float(np.mean([r[k]["r2_mean"] for r in reports])),
                   "r2_worst": float(np.min([r[k]["r2_worst"] for r in reports])),
                   "final_porosity_abs_rel_error_mean": float(np.mean([abs(r[k]["final_porosity_rel_error"] or 0)
                                                                       for r in reports])),
                   "am_volume_error_max": float(np.max([r[k]["am_volume_error_max"] for r in reports]))}
               for k in keys}
    return {"model": str(model), "decision_rule": rule, "summary": summary, "series": reports}
