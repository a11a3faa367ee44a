"""``calbatch evaluate``: an exported model against DEM series.

Per series, every pass below is a full series of frames scored against the DEM's
(:mod:`calbatch.evaluate.scores`: per frame MSE, MAE, R^2, IoU, phase volumes, thickness; on the
final relaxed frame porosity, contact areas, D_eff and tau as value / DEM / relative error):

- ``free_from_frame0``, ``free_from_3_frames``: free rollouts (:func:`calbatch.surrogate.rollout.rollout`)
  from the uncalendered frame alone and from the first three DEM frames;
- ``teacher_forced``: every step from the true previous frames (one step out);
- ``persistence`` and ``press_affine``: the baselines of :mod:`calbatch.evaluate.baselines`;
- ``twin``: a twin DEM series (the same pack and CD rerun with another time step), the ceiling,
  when one is given; twins are matched to series by microstructure id and CD.

A particle model starts from the series' own particles (it needs series that hold them) and adds
the particle view (``particles``): every particle's distance from its DEM position per frame, as
median and 90th percentile, for the free rollouts and, beside them, the twin's.

The training set's same-CD mean porosity (from the model's metadata) is scored on porosity alone.
Inputs are all checked before any work starts; the JSON report and the plots
(:mod:`calbatch.evaluate.plots`) are written at the end.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from ..electrode.series import read_series
from ..errors import CalbatchError
from ..surrogate.contract import ExtrapolationWarning, ModelFile
from ..surrogate.rules import DEFAULT_RULE
from ..surrogate.step import Stepper
from . import baselines
from .scores import CONTACTS, PORES_ALONE, final_scores, final_state, frame_state, particle_drift, per_frame, triple

PASSES = ("free_from_frame0", "free_from_3_frames", "teacher_forced", "persistence", "press_affine", "twin")
MIN_FRAMES = 4  # three given frames and one to predict


class _Case:
    """One series (and its twin) read and checked against the model."""

    def __init__(self, path: Path, model: ModelFile, stepper: Stepper | None = None):
        self.path = Path(path)
        s = read_series(self.path)
        if "frames" not in s:
            raise CalbatchError(f"{path}: no voxel frames (/frames); run `calbatch dem revoxelize` on it first")
        if len(s["frames"]) < MIN_FRAMES:
            raise CalbatchError(f"{path}: series has {len(s['frames'])} frames, evaluate needs at least {MIN_FRAMES}")
        a = s["attrs"]
        try:
            self.cd, self.h0, self.vs = float(a["cd_percent"]), float(a["uncalendered_top_um"]), float(a["voxel_size_um"])
            self.key = (int(a["microstructure_id"]), round(self.cd, 6))
            self.kw = {"h0": self.h0, "speed": float(a["press_speed_m_s"]), "frame_interval_us": float(a["frame_interval_us"]),
                       "dt": float(a["timestep_us"]) if "timestep_us" in a else None}
        except KeyError as exc:
            raise CalbatchError(f"{path}: series attribute {exc.args[0]!r} missing") from None
        model.check_input(s["frames"].shape[1:], self.vs, self.h0)
        self.s, self.frames = s, s["frames"]
        self.particles = None  # a particle model's start: the series' own particles, every frame
        if stepper is not None and stepper.steps_particles:
            pos = s["positions"]
            if pos.ndim != 3 or pos.shape[1] == 0:
                raise CalbatchError(f"{path}: holds no particles (/particles/positions); a particle model is evaluated "
                                    "on DEM series that hold them")
            if len(pos) != len(self.frames):
                raise CalbatchError(f"{path}: /particles/positions has {len(pos)} frames, /frames {len(self.frames)}")
            self.particles = stepper.particles_of(self.path)
        self.twin: dict | None = None
        self.twin_path: Path | None = None

    def attach_twin(self, path: Path, twin: dict) -> None:
        if self.twin is not None:
            raise CalbatchError(f"{path}: a second twin for {self.path} (the first is {self.twin_path})")
        if twin["frames"].shape != self.frames.shape:
            raise CalbatchError(f"{path}: twin frames {list(twin['frames'].shape)} differ from {self.path}'s "
                                f"{list(self.frames.shape)} (frames, z, y, x)")
        vs = twin["attrs"].get("voxel_size_um")
        if vs is None:
            raise CalbatchError(f"{path}: series attribute 'voxel_size_um' missing")
        if self.particles is not None and twin["positions"].shape != self.s["positions"].shape:
            raise CalbatchError(f"{path}: twin particles {list(twin['positions'].shape)} differ from {self.path}'s "
                                f"{list(self.s['positions'].shape)} (frames, n, 3)")
        if abs(float(vs) - self.vs) > 1e-9:
            raise CalbatchError(f"{path}: twin voxel size {float(vs):g} um, {self.path} has {self.vs:g} um")
        self.twin, self.twin_path = twin, Path(path)


def _attach_twins(cases: list[_Case], twins) -> None:
    by_key = {}
    for c in cases:
        by_key.setdefault(c.key, []).append(c)
    for path in twins:
        t = read_series(Path(path))
        if "frames" not in t:
            raise CalbatchError(f"{path}: no voxel frames (/frames); run `calbatch dem revoxelize` on it first")
        try:
            key = (int(t["attrs"]["microstructure_id"]), round(float(t["attrs"]["cd_percent"]), 6))
        except KeyError as exc:
            raise CalbatchError(f"{path}: series attribute {exc.args[0]!r} missing") from None
        if key not in by_key:
            raise CalbatchError(f"{path}: twin of microstructure {key[0]} at CD {key[1]:g} % matches none of the series")
        for c in by_key[key]:
            c.attach_twin(Path(path), t)


def _rollout(stepper: Stepper, case: _Case, given: int = 1, forced: bool = False):
    """One case of ``case``'s schedule stepped to its end: free from its first ``given`` frames, or
    teacher-forced (every step from the true frames)."""
    c = stepper.start(case.frames[0] if given == 1 else case.frames[:given], case.cd, forced=case.frames if forced else None,
                      particles=case.particles, **case.kw)
    stepper.run([c])
    return c


def teacher_forced(stepper: Stepper, case: _Case) -> np.ndarray:
    """Frame t + 1 predicted from the true frames up to t, for every t (frame 0 as given)."""
    return _rollout(stepper, case, forced=True).predicted


def _predictions(stepper: Stepper, case: _Case) -> tuple[dict, dict, bool, dict | None]:
    """Every pass's frames (see the module), the model's seconds per step, the extrapolation flag
    and, for a particle model, the particle view."""
    frames = case.frames
    free1, free3 = _rollout(stepper, case), _rollout(stepper, case, 3)
    if free1.n_frames != len(frames):
        raise CalbatchError(f"{case.path}: the rollout has {free1.n_frames} frames, the series {len(frames)}: "
                            "the schedule differs from the DEM's")
    t0 = time.perf_counter()
    forced = teacher_forced(stepper, case)
    timing = {"rollout_s_per_step": float(np.mean(free1.wall[1:])), "teacher_forced_s": time.perf_counter() - t0}
    preds = {"free_from_frame0": (free1.frames, 1), "free_from_3_frames": (free3.frames, 3),
             "teacher_forced": (forced, 1), "persistence": (baselines.persistence(frames[0], len(frames)), 1),
             "press_affine": (baselines.press_affine(frames[0], case.s["press_z_um"], case.h0), 1)}
    if case.twin is not None:
        preds["twin"] = (case.twin["frames"], 1)
    drift = None
    if case.particles is not None:
        p, dem = case.particles.particles, case.s["positions"]
        drift = {"free_from_frame0": particle_drift(free1.positions, dem, p.box, p, frames),
                 "free_from_3_frames": particle_drift(free3.positions, dem, p.box, p, frames)}
        if case.twin is not None:
            drift["twin"] = particle_drift(case.twin["positions"], dem, p.box, p, frames)
    return preds, timing, free1.extrapolated, drift


def _slices(frames: np.ndarray, picks) -> np.ndarray:
    """x-z slices at mid y of the frames ``picks`` (for the plots)."""
    return np.stack([frames[i][:, frames.shape[2] // 2, :] for i in picks])


def evaluate_case(stepper: Stepper, case: _Case, fick: bool) -> tuple[dict, dict]:
    """The report of one series, and its slices for the plots."""
    preds, timing, extrapolated, drift = _predictions(stepper, case)
    frames, vs = case.frames, case.vs
    t0 = time.perf_counter()
    dem_states = [frame_state(f, vs) for f in frames]
    dem_final = final_state(frames[-1], vs, fick)
    # the uncalendered electrode, CD 0 in the plots (which draw the transport with the CBD conducting)
    dem_initial = final_state(frames[0], vs, fick, pores_alone=False)
    passes = {}
    for name, (pred, first) in preds.items():
        scores = per_frame(frames, pred, dem_states, vs, first)
        scores["final"] = final_scores(final_state(pred[-1], vs, fick), dem_final)
        passes[name] = scores
    timing["scoring_s"] = time.perf_counter() - t0
    base = baselines.training_porosity(stepper.meta, case.cd)
    a = case.s["attrs"]
    report = {"series": str(case.path), "microstructure_id": case.key[0], "cd_percent": case.cd,
              "cd_extrapolated": extrapolated, "frames": int(len(frames)),
              "time_us": np.asarray(case.s["time_us"]).tolist(), "stage": [str(p) for p in case.s["phase"]],
              "timestep_us": float(a["timestep_us"]) if "timestep_us" in a else None,
              "twin": str(case.twin_path) if case.twin_path else None,
              "twin_timestep_us": float(case.twin["attrs"].get("timestep_us", np.nan)) if case.twin else None,
              "dem": {"frames": dem_states, "final": dem_final, "initial": dem_initial}, "passes": passes,
              "training_mean_porosity": (None if base is None else {"porosity": triple(base["mean"], dem_final["porosity"]),
                                                                    "training_series": base["n"]}),
              "timings": timing}
    if drift is not None:
        report["particles"] = drift
    picks = sorted({0, int(np.argmin(case.s["press_z_um"])), len(frames) // 4, len(frames) - 1})
    slices = {"frames": picks, "dem": _slices(frames, picks), "free_from_frame0": _slices(preds["free_from_frame0"][0], picks)}
    if "twin" in preds:
        slices["twin"] = _slices(preds["twin"][0], picks)
    slices["final"] = {"dem": frames[-1], "model": preds["free_from_frame0"][0][-1], "voxel_size": vs}  # the 3-D render
    return report, slices


def _abs_stats(values) -> dict:
    v = [abs(x) for x in values if x is not None and np.isfinite(x)]
    return {"mean_abs": float(np.mean(v)) if v else None, "worst_abs": float(np.max(v)) if v else None, "n": len(v)}


def summarize(reports: list[dict]) -> dict:
    """Per pass, over the series: means and worst values of the per-series numbers."""
    summary = {}
    for name in PASSES:
        got = [r["passes"][name] for r in reports if name in r["passes"]]
        if not got:
            continue
        fin = [p["final"] for p in got]
        entry = {"series": len(got), "r2_mean": float(np.mean([p["r2_mean"] for p in got])),
                 "r2_worst": float(np.min([p["r2_worst"] for p in got])),
                 "mse_mean": float(np.mean([p["mse_mean"] for p in got])), "mae_mean": float(np.mean([p["mae_mean"] for p in got])),
                 "iou_mean": {k: float(np.mean([p["iou_mean"][k] for p in got])) for k in got[0]["iou_mean"]},
                 "am_volume_error_max": max((p["am_volume_error_max"] for p in got if p["am_volume_error_max"] is not None),
                                            default=None),
                 "final_porosity_error": _abs_stats(f["porosity"]["rel_error"] for f in fin),
                 "final_thickness_error_voxels": _abs_stats(f["thickness_voxels"]["error"] for f in fin),
                 "contact_area_error": _abs_stats(f["contact_area_um2"][k]["rel_error"] for f in fin for k in CONTACTS)}
        for suffix in ("", PORES_ALONE):
            if all(f"d_eff_rel{suffix}" in f for f in fin):
                entry[f"d_eff_error{suffix}"] = _abs_stats(f[f"d_eff_rel{suffix}"]["rel_error"] for f in fin)
                entry[f"tau_error{suffix}"] = _abs_stats(f[f"tau{suffix}"]["rel_error"] for f in fin)
        summary[name] = entry
    base = [r["training_mean_porosity"] for r in reports if r["training_mean_porosity"]]
    if base:
        summary["training_mean_porosity"] = {"series": len(base),
                                             "final_porosity_error": _abs_stats(b["porosity"]["rel_error"] for b in base)}
    return summary


def drift_summary(reports: list[dict]) -> dict:
    """Per pass of the particle view, over the series: the mean final median and 90th percentile
    drift (um), the same with the bed's rigid slide taken out, the slide, and R2 per frame with the
    slide taken out (mean, and the worst frame of any series); empty for a frame model."""
    drifts: dict[str, list] = {}
    for r in reports:
        for name, d in r.get("particles", {}).items():
            drifts.setdefault(name, []).append(d)
    keys = ("final_median_um", "final_p90_um", "final_aligned_median_um", "final_aligned_p90_um", "final_slide_um",
            "aligned_r2_mean")
    return {name: {"series": len(v), **{k: float(np.mean([d[k] for d in v])) for k in keys},
                   "aligned_r2_worst": float(np.min([d["aligned_r2_worst"] for d in v]))} for name, v in drifts.items()}


def evaluate(model: Path, series, twins=(), rule: str = DEFAULT_RULE, threads: int | None = None, fick: bool = True,
             out: Path | None = None, progress: bool = False) -> dict:
    """The report of ``model`` on each of ``series`` (see the module); with ``out`` also the PNG
    plots there (listed under ``plots``). A CD outside the model's trained range is flagged
    ``cd_extrapolated`` and warned about (:class:`calbatch.surrogate.contract.ExtrapolationWarning`)."""
    from ..common.progress import Progress

    model = Path(model)
    stepper = Stepper(model, rule=rule, threads=threads)
    meta = stepper.meta
    if fick:  # fail now, not after the rollouts
        import mpi4py  # noqa: F401
        import petsc4py  # noqa: F401
    cases = [_Case(Path(p), stepper.model, stepper) for p in series]
    _attach_twins(cases, twins)
    reports, slices = [], []
    bar = Progress("evaluate", len(cases), "series", progress)
    t0 = time.perf_counter()
    for case in cases:
        r, sl = evaluate_case(stepper, case, fick)
        bar.update(None, f"{case.path.name} CD {case.cd:g}")
        if r["cd_extrapolated"]:
            lo, hi = stepper.model.cd_range
            warnings.warn(f"{case.path}: CD {case.cd:g} % is outside the model's trained range {lo:g}-{hi:g} %: "
                          "an extrapolation (flagged cd_extrapolated)", ExtrapolationWarning, stacklevel=2)
        reports.append(r)
        slices.append(sl)
    report = {"model": str(model), "model_kind": meta.get("kind", ""), "cd_range_percent": meta.get("cd_range_percent"),
              "decision_rule": rule, "fick": fick, "has_training_porosity": "training_final_porosity_by_cd" in meta,
              "summary": summarize(reports), "series": reports, "wall_time_s": time.perf_counter() - t0}
    if stepper.steps_particles:
        report["particle_drift"] = drift_summary(reports)
    if out is not None:
        from ..view import unavailable
        from .plots import plot_all

        report["plots"] = plot_all(report, slices, Path(out))
        if unavailable():
            report["render_skipped"] = unavailable()
    return report
