"""Inverse design: the compression degree (CD) that gives an uncalendered electrode a target -- a
porosity, a tortuosity factor tau, or the lowest tau at a porosity of at most X -- found by a real
optimizer (scipy's brentq and bounded Brent) over the model's CD range. Each evaluation is a full
free rollout through :class:`calbatch.screen.Predictor` (loaded once), the final structure's
metrics and, where tau is needed, the Fick solve.

The search scans the CD range on a coarse grid first (``grid`` points): that gives the reachable
range, so a target outside it is refused with that range named rather than met by a silent best
effort, and it brackets the answer (or, for a curve that is not monotone, the lowest-CD crossing).
The model's curves are piecewise constant at the scale of a voxel slice, so the answer's residual
cannot be smaller than one such step. Entry points: :func:`load_electrode`, :func:`optimize`; the
settings as a YAML file: :mod:`calbatch.optimize.config`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..electrode.checks import check_frames
from ..errors import CalbatchError

KINDS = ("porosity", "tau", "min_tau")


@dataclass(frozen=True)
class Target:
    """``porosity`` or ``tau``: reach ``value``; ``min_tau``: the lowest tau at porosity <= ``value``."""
    kind: str
    value: float

    def __post_init__(self):
        if self.kind not in KINDS:
            raise CalbatchError(f"target: unknown kind {self.kind!r} (one of {', '.join(KINDS)})")
        if not (math.isfinite(self.value) and self.value > 0):
            raise CalbatchError(f"target {self.kind}: must be a positive number, got {self.value:g}")
        if self.kind != "tau" and not self.value < 1:
            raise CalbatchError(f"target {self.describe()}: a porosity must be below 1")

    @property
    def needs_fick(self) -> bool:
        return self.kind != "porosity"

    def describe(self) -> str:
        return f"lowest tau at porosity <= {self.value:g}" if self.kind == "min_tau" else f"{self.kind} {self.value:g}"


# --- the electrode --------------------------------------------------------------------------------

def load_electrode(spec: str | None) -> dict:
    """``volume``, ``h0`` (um, None: from the volume), ``pack`` (for a DEM check, or None) and
    ``source`` (the file a particle model reads its particles from) of a
    volume spec, a pack file (.h5 from ``calbatch dem pack``) or None/``example`` (the shipped
    example electrode, read from the pack it was voxelized from: the DEM's top and a DEM check)."""
    import h5py

    from ..data import example_volume_path
    from ..dem.reference import default_pack, read_electrode
    from ..electrode.volume import read_volume, volume_attrs

    if spec in (None, "example"):  # its top from its voxels, as every command takes it; its pack for a DEM check
        return {"volume": read_volume(example_volume_path()), "h0": None, "pack": str(default_pack()), "name": "example",
                "source": example_volume_path(),
                "voxel_size": volume_attrs(example_volume_path()).get("voxel_size_um")}
    path = Path(spec)
    if path.suffix in (".h5", ".hdf5") and path.is_file():
        try:
            with h5py.File(path, "r") as f:
                is_pack = str(f.attrs.get("format", "")).startswith("calbatch-dem-pack")
        except OSError:
            raise CalbatchError(f"{path}: cannot read HDF5") from None
        if is_pack:
            e = read_electrode(path)
            return {"volume": e["volume"], "h0": e["h0"], "pack": str(path), "name": str(path), "source": str(path),
                    "voxel_size": e["voxel_size"]}
    if Path(spec).is_dir():
        raise CalbatchError(f"{spec}: is a folder, not a volume or pack file")
    attrs = volume_attrs(spec)
    return {"volume": read_volume(spec), "h0": attrs.get("top_um"), "pack": None, "name": str(spec), "source": str(spec),
            "voxel_size": attrs.get("voxel_size_um")}


# --- the curve, evaluated on demand ---------------------------------------------------------------

class Curve:
    """The model's metrics as functions of the CD for one electrode; every evaluation is recorded
    (and cached: brentq and Brent may ask for a CD twice)."""

    def __init__(self, predictor, electrode: dict, fick: dict | None, bar=None):
        """``fick``: FickSolver options ({} for the defaults), or None for no Fick solves."""
        self.predictor, self.electrode, self.fick, self.bar = predictor, electrode, fick, bar
        source = electrode.get("source")  # a particle model's start (a frame model's: None)
        self.particles = predictor.particles_of(source) if source else None
        self.points: dict[float, dict] = {}
        self.stage = "scan"

    def __call__(self, cd: float) -> dict:
        cd = float(cd)
        if cd not in self.points:
            t0 = time.perf_counter()
            e = self.electrode  # the final frame only: the rollout keeps a ring of the last three
            case = self.predictor.cases([e["volume"]], [cd], [e["h0"]], series=False, particles=[self.particles])[0]
            final = case.final
            check_frames([e["volume"], final], {"voxel_size_um": self.predictor.voxel_size, "uncalendered_top_um": case.h0,
                                                "press_lowest_um": case.sched["press_lowest_um"]})
            m = self.predictor.measure(final)["metrics"]
            p = {"cd_percent": cd, "porosity": m["porosity"], "thickness_um": m["thickness_um"],
                 "stage": self.stage, "cd_extrapolated": self.predictor.extrapolated(cd)}
            if self.fick is not None and m["porosity"] > 0:
                f = self.predictor.measure(final, metrics=False, fick=self.fick or True)["fick"]
                p.update(tau=f["tau"], d_eff=f["d_eff_rel"], fick_converged=f["converged"])
            elif self.fick is not None:  # no pore left: nothing diffuses
                p.update(tau=math.inf, d_eff=0.0, fick_converged=True)
            p["seconds"] = time.perf_counter() - t0
            self.points[cd] = p
            if self.bar is not None:
                self.bar.update(None, f"CD {cd:.3f}: porosity {p['porosity']:.4f}"
                                + (f" tau {p['tau']:.3f}" if "tau" in p else "") + f" ({p['seconds']:.1f} s, {self.stage})")
        return self.points[cd]

    def value(self, key: str, cd: float) -> float:
        v = self(cd)[key]
        return float(v) if v is not None else math.inf

    def sorted(self) -> list[dict]:
        return [self.points[k] for k in sorted(self.points)]


def _reach(curve: Curve, key: str) -> tuple[dict, dict]:
    pts = [p for p in curve.sorted() if math.isfinite(p[key])]
    if not pts:
        raise CalbatchError(f"no evaluated CD gives a finite {key} (no percolating pore path?)")
    return min(pts, key=lambda p: p[key]), max(pts, key=lambda p: p[key])


def _out_of_reach(target: Target, key: str, lo: dict, hi: dict, n: int) -> CalbatchError:
    return CalbatchError(
        f"target {target.describe()} is out of reach for this electrode: the model gives {key} "
        f"{lo[key]:.4f} (CD {lo['cd_percent']:g} %) to {hi[key]:.4f} (CD {hi['cd_percent']:g} %) "
        f"over the CDs searched ({n} sampled)")


def _root(curve: Curve, key: str, goal: float, a: float, b: float, xtol: float) -> float:
    """brentq on curve(cd)[key] - goal over the bracket [a, b]."""
    from scipy.optimize import brentq

    curve.stage = f"brentq {key}"
    return float(brentq(lambda cd: curve.value(key, cd) - goal, a, b, xtol=xtol))


def _first_bracket(points: list[dict], key: str, goal: float) -> tuple[float, float] | None:
    for p, q in zip(points, points[1:]):
        if (p[key] - goal) * (q[key] - goal) < 0:
            return p["cd_percent"], q["cd_percent"]
    return None


def _reach_target(curve: Curve, target: Target, grid: list[float], xtol: float) -> dict:
    key = target.kind
    scan = [curve(cd) for cd in grid]
    lo, hi = _reach(curve, key)
    if not lo[key] <= target.value <= hi[key]:
        raise _out_of_reach(target, key, lo, hi, len(grid))
    exact = [p for p in scan if p[key] == target.value]
    if exact:
        return {"cd_percent": exact[0]["cd_percent"], "method": "grid (exact)"}
    bracket = _first_bracket(scan, key, target.value)
    if bracket is None:  # only where a scanned value is not finite
        raise CalbatchError(f"target {target.describe()}: no two neighbouring CDs of the scan bracket it")
    a, b = bracket
    root = _root(curve, key, target.value, a, b, xtol)
    # the curve steps at voxel slices: of the CDs tried in the bracket, the one closest to the target
    # (on a plateau, the one nearest the crossing)
    near = [p for p in curve.sorted() if a <= p["cd_percent"] <= b]
    best = min(near, key=lambda p: (abs(p[key] - target.value), abs(p["cd_percent"] - root)))
    return {"cd_percent": best["cd_percent"], "method": "brentq", "bracket": [a, b]}


def _min_tau(curve: Curve, target: Target, grid: list[float], xtol: float) -> dict:
    """The lowest tau at porosity <= X: the feasible CDs' interval around the best scanned point
    (its ends found by brentq on the porosity), then bounded Brent on tau inside it."""
    from scipy.optimize import minimize_scalar

    x = target.value
    scan = [curve(cd) for cd in grid]
    feasible = [i for i, p in enumerate(scan) if p["porosity"] <= x and math.isfinite(p["tau"])]
    if not feasible:
        lo, hi = _reach(curve, "porosity")
        raise _out_of_reach(Target("porosity", x), "porosity", lo, hi, len(grid))
    best = min(feasible, key=lambda i: scan[i]["tau"])
    ends = []
    for step in (-1, 1):  # walk out from the best point to the feasible interval's ends
        i = best
        while 0 <= i + step < len(scan) and i + step in feasible:
            i += step
        if 0 <= i + step < len(scan):
            edge = _root(curve, "porosity", x, *sorted((scan[i]["cd_percent"], scan[i + step]["cd_percent"])), xtol)
            ends.append(edge if curve(edge)["porosity"] <= x else scan[i]["cd_percent"])
        else:
            ends.append(scan[i]["cd_percent"])
    a, b = ends
    if b - a > xtol:
        curve.stage = "bounded Brent tau"
        big = max(p["tau"] for p in curve.sorted() if math.isfinite(p["tau"]))
        minimize_scalar(lambda cd: curve.value("tau", cd) if curve(cd)["porosity"] <= x else 2 * big,
                        bounds=(a, b), method="bounded", options={"xatol": xtol})
    ok = [p for p in curve.sorted() if p["porosity"] <= x and math.isfinite(p["tau"])]
    return {"cd_percent": min(ok, key=lambda p: p["tau"])["cd_percent"], "method": "brentq + bounded Brent",
            "feasible_interval": [a, b]}


def optimize(electrode: dict, target: Target, predictor, cd_range: tuple[float, float] | None = None,
             grid: int = 5, xtol: float = 0.1, fick: dict | None = None, progress: bool = False,
             allow_extrapolation: bool = False) -> dict:
    """The CD that meets ``target`` for ``electrode`` (:func:`load_electrode`) with ``predictor``
    (a :class:`calbatch.screen.Predictor`); ``cd_range`` defaults to the model's trained range;
    ``fick``: :class:`calbatch.transport.FickSolver` options. See the module."""
    from ..common.progress import Progress
    from ..electrode.checks import cd_margin, check_cd

    lo, hi = (float(c) for c in (cd_range or predictor.cd_range))
    if not 0 < lo < hi < 90:
        raise CalbatchError(f"--cd-range: expected 0 < LO < HI < 90 percent, got {lo:g} {hi:g}")
    if grid < 2:
        raise CalbatchError(f"--grid: at least 2 CDs to scan, got {grid}")
    if not xtol > 0:
        raise CalbatchError(f"--xtol: must be positive, got {xtol:g}")
    if not allow_extrapolation:
        for cd in (lo, hi):
            check_cd(cd, predictor.cd_range, cd_margin(predictor.meta), "--cd-range: CD")
    vs = electrode.get("voxel_size") or predictor.voxel_size  # what the file states, if it does
    if abs(vs - predictor.voxel_size) > 1e-6 * predictor.voxel_size:
        raise CalbatchError(f"{electrode['name']}: voxels of {vs:g} um; the model takes {predictor.voxel_size:g} um")
    predictor.check(electrode["volume"], electrode["name"])
    start = predictor.measure(electrode["volume"], fick=(fick or {}) if target.needs_fick else False)
    uncalendered = {"porosity": start["metrics"]["porosity"], **({"tau": start["fick"]["tau"]} if "fick" in start else {})}
    if target.kind == "porosity" and not target.value < uncalendered["porosity"]:  # pressing only closes pores: say so before any rollout
        raise CalbatchError(f"target {target.describe()} is out of reach: the uncalendered electrode's porosity is "
                            f"{uncalendered['porosity']:.4f} and calendering lowers it")
    t0 = time.perf_counter()
    bar = Progress("optimize", None, "rollout", progress)
    curve = Curve(predictor, electrode, (fick or {}) if target.needs_fick else None, bar)
    cds = np.linspace(lo, hi, grid).tolist()
    found = _min_tau(curve, target, cds, xtol) if target.kind == "min_tau" else _reach_target(curve, target, cds, xtol)
    answer = dict(curve(found.pop("cd_percent")))
    seconds = time.perf_counter() - t0
    key = "tau" if target.kind == "tau" else "porosity"
    if target.kind != "min_tau":
        answer["residual"] = answer[key] - target.value
    points = curve.sorted()
    return {"electrode": electrode["name"], "model": str(predictor.model_path), "target": target.describe(),
            "target_kind": target.kind, "target_value": target.value, "cd_range": [lo, hi],
            "trained_cd_range": [float(c) for c in predictor.cd_range], "uncalendered": uncalendered, "grid": grid,
            "xtol": xtol, **found, "answer": answer, "evaluations": len(points), "seconds": seconds,
            "reachable": {k: [float(np.nanmin([p[k] for p in points])), float(np.nanmax([p[k] for p in points]))]
                          for k in ("porosity", "tau") if k in points[0]},
            "curve": points}


def check_with_dem(result: dict, electrode: dict, predictor, fick: dict | None, pack: str | None = None,
                   settings: dict | None = None, progress: bool | None = None) -> dict:
    """Run the DEM generator at the answer's CD on the electrode's pack (or ``pack``), at
    ``settings`` (:func:`calbatch.dem.reference.dem_settings`, default: the default dataset's), and compare
    its final porosity (and tau) with the target and the model's prediction."""
    import tempfile

    from ..dem.reference import dem_settings, run_dem

    pack = pack or electrode.get("pack")
    if pack is None:
        raise CalbatchError(f"--check-dem: the electrode {electrode['name']} is a volume, not a pack; name the pack "
                            "it was voxelized from: --check-dem PACK.h5")
    cd, answer = result["answer"]["cd_percent"], result["answer"]
    with tempfile.TemporaryDirectory() as tmp:
        series, wall = run_dem(Path(pack), cd, settings or dem_settings(), Path(tmp) / "check.h5", progress)
    m = predictor.measure(series["frames"][-1], fick=(fick or {}) if result["target_kind"] != "porosity" else False)
    check = {"pack": str(pack), "cd_percent": cd, "dem_wall_s": wall, "dem_settings": settings or dem_settings(),
             "dem_porosity": m["metrics"]["porosity"],
             "dl_porosity": answer["porosity"],
             "dl_minus_dem_porosity_points": 100 * (answer["porosity"] - m["metrics"]["porosity"])}
    if result["target_kind"] == "porosity":
        check["dem_minus_target_points"] = 100 * (m["metrics"]["porosity"] - result["target_value"])
    if "fick" in m:
        check.update(dem_tau=m["fick"]["tau"], dl_tau=answer["tau"],
                     dl_tau_rel_error=(answer["tau"] - m["fick"]["tau"]) / m["fick"]["tau"])
    if result["target_kind"] == "tau":
        check["dem_tau_minus_target"] = m["fick"]["tau"] - result["target_value"]
    return check
