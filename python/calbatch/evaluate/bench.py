"""DL against DEM on the same electrode: for a pack (the uncalendered electrode as particles and
voxels) and one or more CDs, the DEM calendering (LIGGGHTS, at the settings that made the default
dataset: :mod:`calbatch.dem.reference`) and the model's free rollout
(:class:`calbatch.surrogate.predictor.Predictor`) side by side, with per step the DEM and DL wall
times and their ratio, and per case the DL result's accuracy against that DEM run (R^2 per frame,
final porosity, contact areas, thickness, D_eff and tau by the Fick solver).

Also :func:`project_dem_cost`: what the DEM would cost at the paper's settings (real AM stiffness,
CT-shaped particles), projected from the measured cost by the DEM's own scaling -- a projection,
not a measurement. Entry point: :func:`dl_vs_dem`.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..dem.reference import default_pack, dem_settings, read_electrode, run_dem
from ..errors import CalbatchError

CONTACTS = ("AM-CBD", "pore-AM", "pore-CBD")
# The accuracy the model aims at in a free rollout against the DEM, and the speed per step (CPU) that
# makes it worth using instead of the DEM.
GOALS = {"r2_mean": 0.75, "r2_worst": 0.60, "porosity_rel_error": 0.01, "contact_area_rel_error_mean": 0.05,
         "d_eff_rel_error": 0.03, "tau_rel_error": 0.025, "speedup_per_step": 50.0}


# --- one case -------------------------------------------------------------------------------------

def _rel(value: float, reference: float) -> float:
    return float((value - reference) / reference) if reference else float("nan")


def _time_dl(predictor, electrode: dict, cd: float, repeats: int) -> tuple[dict, np.ndarray, float]:
    """The DL rollout ``repeats`` times: the series, the median wall time of each step, and the
    median wall time of a whole rollout. The rollouts must agree (the model is deterministic)."""
    runs, totals = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runs.append(predictor.rollout(electrode["volume"], cd, h0=electrode["h0"],
                                      particles=predictor.particles_of(electrode["pack"])))
        totals.append(time.perf_counter() - t0)
    if any(not np.array_equal(r["frames"], runs[0]["frames"]) for r in runs[1:]):
        raise CalbatchError(f"CD {cd:g}: repeated rollouts of the same case differ; the backend is not deterministic")
    return runs[0], np.median([r["wall_time_s"] for r in runs], axis=0), float(np.median(totals))


def compare_case(dem_series: dict, dl_series: dict, dl_step_s: np.ndarray, predictor, fick) -> dict:
    """Per frame (wall times, ratio, R^2, AM volume) and per case (timings, accuracy) of one
    DL rollout against the DEM series of the same case."""
    from ..electrode.metrics import compare

    truth, pred = dem_series["frames"], dl_series["frames"]
    if truth.shape != pred.shape:
        raise CalbatchError(f"CD {dem_series['attrs']['cd_percent']:g}: the DEM series has frames {truth.shape}, the "
                            f"rollout {pred.shape}: the model's schedule or grid differs from the DEM's settings")
    dem_s = np.asarray(dem_series["wall_time_s"], dtype=float)
    frames = []
    for t in range(1, len(truth)):
        am_dem = np.count_nonzero(truth[t] == 2)
        frames.append({"frame": t, "phase": str(dem_series["phase"][t]), "press_z_um": float(dem_series["press_z_um"][t]),
                       "dem_s": float(dem_s[t]), "dl_s": float(dl_step_s[t]), "ratio": float(dem_s[t] / dl_step_s[t]),
                       "r2": compare(truth[t], pred[t])["r2"],
                       "am_volume_ratio": float(np.count_nonzero(pred[t] == 2) / max(am_dem, 1))})
    dl_timings: dict = {}
    m_dem, m_dl = predictor.measure(truth[-1], fick=fick), predictor.measure(pred[-1], fick=fick, timings=dl_timings)
    md, mp = m_dem["metrics"], m_dl["metrics"]
    r2 = [f["r2"] for f in frames]
    contacts = {k: {"dl_um2": mp["contact_area_um2"][k], "dem_um2": md["contact_area_um2"][k],
                    "rel_error": _rel(mp["contact_area_um2"][k], md["contact_area_um2"][k])} for k in CONTACTS}
    accuracy = {
        "r2_mean": float(np.mean(r2)), "r2_worst": float(np.min(r2)),
        "am_volume_error_max": float(np.max([abs(f["am_volume_ratio"] - 1) for f in frames])),
        "porosity_dl": mp["porosity"], "porosity_dem": md["porosity"],
        "porosity_rel_error": _rel(mp["porosity"], md["porosity"]),
        "porosity_points": 100 * (mp["porosity"] - md["porosity"]),
        "thickness_voxels_dl": mp["thickness_voxels"], "thickness_voxels_dem": md["thickness_voxels"],
        "contact_areas": contacts,
        "contact_area_rel_error_mean": float(np.mean([abs(c["rel_error"]) for c in contacts.values()])),
    }
    if fick:
        fd, fp = m_dem["fick"], m_dl["fick"]
        accuracy.update({"d_eff_dl": fp["d_eff_rel"], "d_eff_dem": fd["d_eff_rel"],
                         "d_eff_rel_error": _rel(fp["d_eff_rel"], fd["d_eff_rel"]),
                         "tau_dl": fp["tau"], "tau_dem": fd["tau"], "tau_rel_error": _rel(fp["tau"], fd["tau"]),
                         "fick_converged": bool(fd["converged"] and fp["converged"])})
    dl_steps, dem_steps = float(np.sum(dl_step_s[1:])), float(np.sum(dem_s[1:]))
    press = [f for f in frames if f["phase"] == "press"]
    timing = {
        "frames": int(len(truth)), "steps": int(len(truth) - 1),
        "dem_s_per_step": dem_steps / len(frames), "dl_s_per_step": dl_steps / len(frames),
        "ratio_per_step": dem_steps / dl_steps,
        "dem_s_per_press_step": float(np.mean([f["dem_s"] for f in press])) if press else float("nan"),
        "dem_startup_s": float(dem_s[0]), "dem_case_s": float(np.sum(dem_s)),
        "dl_case_s": dl_steps + sum(dl_timings.values()),  # rollout steps + metrics + Fick
    }
    timing["ratio_per_case"] = timing["dem_case_s"] / timing["dl_case_s"]
    return {"timing": timing, "accuracy": accuracy, "per_frame": frames}


def goals_met(case: dict) -> dict:
    """Each goal of :data:`GOALS` that this case can be judged on: met or not."""
    a, t = case["accuracy"], case["timing"]
    out = {"r2_mean": a["r2_mean"] >= GOALS["r2_mean"], "r2_worst": a["r2_worst"] >= GOALS["r2_worst"],
           "porosity_rel_error": abs(a["porosity_rel_error"]) <= GOALS["porosity_rel_error"],
           "contact_area_rel_error_mean": a["contact_area_rel_error_mean"] <= GOALS["contact_area_rel_error_mean"],
           "speedup_per_step": t["ratio_per_step"] >= GOALS["speedup_per_step"]}
    for k in ("d_eff_rel_error", "tau_rel_error"):
        if k in a:
            out[k] = bool(abs(a[k]) <= GOALS[k])
    return out


# --- the whole benchmark --------------------------------------------------------------------------

def dl_vs_dem(pack: Path | None, cds: list[float], model: Path | None = None, settings: dict | None = None,
              threads: int | None = None, repeats: int = 3, fick: bool | dict = True, keep: Path | None = None,
              clump_spheres: int = 20, backends: list[str] | None = None, renders: Path | None = None,
              progress: bool | None = None) -> dict:
    """Every CD of ``cds`` on ``pack`` (default: the example electrode's) by DEM and by the model;
    see the module. ``keep``: a folder for the DEM and DL series (else they are discarded);
    ``clump_spheres``: spheres per CT-shaped particle in the projection (:func:`project_dem_cost`);
    ``backends``: the DL backends timed (:data:`calbatch.surrogate.BACKENDS`; default ``cpu``; ``all``:
    every one that opens here). The first one's rollout is the one compared with the DEM. ``renders``:
    a path stem for a 3-D picture per case, DEM against model at the final frame (``STEM_cdCD.png``)."""
    from tqdm import tqdm

    from ..electrode.series import write_series
    from ..surrogate.predictor import Predictor

    if not cds:
        raise CalbatchError("--cd: give at least one CD")
    if repeats < 1:
        raise CalbatchError(f"--repeats: must be at least 1, got {repeats}")
    pack = default_pack() if pack is None else Path(pack)
    electrode = read_electrode(pack)
    settings = dem_settings() if settings is None else settings
    t0 = time.perf_counter()
    predictors, unavailable = _open_backends(Predictor, model, threads, backends or ["cpu"])
    predictor = next(iter(predictors.values()))
    load_s = time.perf_counter() - t0
    if abs(electrode["voxel_size"] - predictor.voxel_size) > 1e-6 * predictor.voxel_size:
        raise CalbatchError(f"{pack}: voxels of {electrode['voxel_size']:g} um; the model {predictor.model_path} "
                            f"takes {predictor.voxel_size:g} um")
    predictor.check(electrode["volume"], str(pack))
    cases = []
    show = sys.stderr.isatty() if progress is None else progress
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(keep) if keep is not None else Path(tmp)
        for cd in tqdm(cds, desc="dl-vs-dem", unit="case", file=sys.stderr, disable=not show, leave=False):
            dl = {name: _time_dl(p, electrode, cd, repeats) for name, p in predictors.items()}
            dl_series, dl_step_s, dl_rollout_s = next(iter(dl.values()))
            dem_series, dem_wall = run_dem(pack, cd, settings, folder / f"dem_cd{cd:g}.h5", progress)
            case = compare_case(dem_series, dl_series, dl_step_s, predictor, fick)
            dem_steps = float(np.sum(dem_series["wall_time_s"][1:]))
            case["timing"].update({"dl_rollout_s": dl_rollout_s, "dem_run_s": dem_wall, "backends": {
                name: {"dl_s_per_step": float(np.mean(st[1:])), "ratio_per_step": dem_steps / float(np.sum(st[1:])),
                       "dl_rollout_s": total, "same_frames": bool(np.array_equal(s["frames"], dl_series["frames"]))}
                for name, (s, st, total) in dl.items()}})
            case = {"cd_percent": float(cd), "cd_extrapolated": predictor.extrapolated(cd), **case}
            case["goals_met"] = goals_met(case)
            if renders is not None:
                case["render"] = _render_case(Path(f"{renders}_cd{cd:g}.png"), pack, cd, dem_series, dl_series,
                                              predictor, electrode["voxel_size"])
            if keep is not None:
                dl_series["wall_time_s"] = dl_step_s
                write_series(folder / f"dl_cd{cd:g}.h5", dl_series)
                case["files"] = {"dem": str(folder / f"dem_cd{cd:g}.h5"), "dl": str(folder / f"dl_cd{cd:g}.h5")}
            cases.append(case)
    mean_dem = float(np.nanmean([c["timing"]["dem_s_per_press_step"] for c in cases]))
    return {
        "pack": str(pack), "h0_um": electrode["h0"], "grid_zyx": list(electrode["volume"].shape),
        "model": str(predictor.model_path), "model_load_s": load_s,
        "dl_backend": _backend(predictor, threads, electrode["volume"].shape), "dl_backends": list(predictors), "dl_backends_unavailable": unavailable,
        "dl_repeats": repeats,
        "dem_settings": settings, "goals": GOALS, "cases": cases,
        "projection": project_dem_cost(mean_dem, spheres_per_particle=clump_spheres),
    }


def _render_case(path: Path, pack: Path, cd: float, dem: dict, dl: dict, predictor, voxel_size: float) -> str | None:
    """DEM against model at the final frame in 3-D (None where VTK is not installed)."""
    from ..view import side_by_side, unavailable

    if unavailable():
        return None
    where = f"{Path(pack).stem}, CD {cd:g} %, final frame {len(dem['frames']) - 1}"
    return side_by_side(path, [(f"DEM (LIGGGHTS)\n{where}", dem["frames"][-1]),
                               (f"model {Path(predictor.model_path).name}\n{where}", dl["frames"][-1])], voxel_size)


def _open_backends(predictor_class, model, threads, names: list[str]) -> tuple[dict, dict]:
    """A predictor per backend name; with ``all``, every backend that opens (the others with their
    one-line reason), else every name given must open."""
    from ..surrogate import BACKENDS

    every = names == ["all"]
    opened, unavailable = {}, {}
    for name in BACKENDS if every else names:
        try:
            opened[name] = predictor_class(model, threads=threads, backend=name)
        except CalbatchError as exc:
            if not every:
                raise
            unavailable[name] = str(exc)
    if not opened:
        raise CalbatchError("--backend all: no backend opens here: " + "; ".join(f"{k}: {v}" for k, v in unavailable.items()))
    return opened, unavailable


def _backend(predictor, threads, grid) -> dict:
    """What ran the network of the first backend (the one compared with the DEM): TensorRT, or
    the execution providers of the ONNX Runtime session that ran ``grid``."""
    import onnxruntime

    backend = predictor.backend
    if backend.name == "tensorrt":
        return {"name": "tensorrt", "version": backend.trt.__version__, "providers_used": [],
                "providers_available": [], "threads": threads}
    return {"name": "onnxruntime", "version": onnxruntime.__version__,
            "providers_used": backend.session(tuple(grid)).get_providers(),
            "providers_available": onnxruntime.get_available_providers(), "threads": threads}


# --- projection of the DEM's cost at the paper's settings -----------------------------------------

def contact_time(am_modulus_gpa: float, wall_modulus_gpa: float, cbd_modulus_gpa: float = 2.0,
                 d_am: float = 2.5, d_cbd: float = 2.0) -> float:
    """The shortest contact time scale sqrt(m*/k_n) (us) over the contact types of the smallest
    particles, with LIGGGHTS' hooke stiffness k_n = 16/15 sqrt(R*) Y* (15 m* v^2 / (16 sqrt(R*) Y*))^(1/5)
    (v the characteristic velocity, 1 m/s). The time step is a fixed fraction of it."""
    from ..dem.settings import AM_DENSITY, CONTACT, cbd_density

    nu_am, nu_cbd, nu_wall = CONTACT["poisson"][0], CONTACT["poisson"][1], CONTACT["poisson"][2]

    def y_star(e1, n1, e2, n2):
        return 1e6 / ((1 - n1 ** 2) / e1 + (1 - n2 ** 2) / e2)  # GPa -> kPa, the pressure unit of `units micro`

    def t(m, r, y):
        k = 16 / 15 * np.sqrt(r) * y * (15 * m / (16 * np.sqrt(r) * y)) ** 0.2
        return float(np.sqrt(m / k))

    m_am, m_cbd = AM_DENSITY * np.pi / 6 * d_am ** 3, cbd_density() * np.pi / 6 * d_cbd ** 3
    r_am, r_cbd = d_am / 2, d_cbd / 2
    e_am, e_cbd, e_w = am_modulus_gpa, cbd_modulus_gpa, wall_modulus_gpa
    return min(t(m_am / 2, r_am / 2, y_star(e_am, nu_am, e_am, nu_am)),
               t(m_cbd / 2, r_cbd / 2, y_star(e_cbd, nu_cbd, e_cbd, nu_cbd)),
               t(m_am * m_cbd / (m_am + m_cbd), r_am * r_cbd / (r_am + r_cbd), y_star(e_am, nu_am, e_cbd, nu_cbd)),
               t(m_am, r_am, y_star(e_am, nu_am, e_w, nu_wall)), t(m_cbd, r_cbd, y_star(e_cbd, nu_cbd, e_w, nu_wall)))


def project_dem_cost(seconds_per_frame: float, real_am_modulus_gpa: float = 200.0, spheres_per_particle: int = 20,
                     n_am: int = 140, n_cbd: int = 923) -> dict:
    """A PROJECTION (not a measurement) of the DEM's cost a frame at the paper's settings from the
    measured ``seconds_per_frame``: the time step shrinks with the shortest contact time at the real
    AM modulus (the walls as stiff, steel), so a frame takes more steps; CT-shaped particles as
    rigid clumps of ``spheres_per_particle`` spheres (an assumption) multiply the spheres, and a
    step costs in proportion to them (the time step stays set by the smallest sphere and the clump's
    mass, so it does not shrink further)."""
    from ..dem.settings import CONTACT

    e_am, e_wall = CONTACT["youngs_modulus_gpa"][0], CONTACT["youngs_modulus_gpa"][2]
    steps = contact_time(e_am, e_wall) / contact_time(real_am_modulus_gpa, real_am_modulus_gpa)
    spheres = (n_am * spheres_per_particle + n_cbd) / (n_am + n_cbd)
    return {"kind": "projection", "measured_s_per_frame": seconds_per_frame,
            "am_modulus_gpa": {"calbatch": e_am, "real": real_am_modulus_gpa}, "steps_factor": steps,
            "spheres_per_particle": spheres_per_particle, "spheres_factor": spheres,
            "projected_s_per_frame_real_stiffness": seconds_per_frame * steps,
            "projected_s_per_frame_paper_settings": seconds_per_frame * steps * spheres,
            "paper_s_per_frame": 47 * 60.0}
