"""Load a calbatch model once, then roll out and measure any number of (structure, CD) cases with
no reload and no file I/O per call: the Python API for optimisation loops, and the screen's worker.

The rollout loop is :func:`calbatch.rollout.rollout`'s (the reference), taking an open ONNX Runtime
session instead of a file: the same input window (:func:`calbatch.dataset.past_indices`), the same
conditioning (:func:`calbatch.dataset.conditioning`) and the same decision
(:func:`calbatch.rollout.decide`), so a case's frames equal ``rollout()``'s bit for bit (a test holds
it to that). Several cases on one grid can share each network call (``batch_size``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CalbatchError
from ..export import load_onnx
from ..rollout import RULES, check_input, electrode_top, network_inputs, next_frame, start_frames
from ..schedule import press_schedule
from ..volume import validate

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "data" / "model.onnx"


def shipped_model(option: str = "the model argument") -> Path:
    """The shipped model's path, or a one-line error naming ``option`` when there is none yet."""
    if not SHIPPED_MODEL.is_file():
        raise CalbatchError(f"no shipped model yet ({SHIPPED_MODEL} is missing): give a model file with {option}")
    return SHIPPED_MODEL


def _meta_list(meta: dict, key: str, path) -> list:
    try:
        return json.loads(meta[key])
    except (KeyError, ValueError):
        raise CalbatchError(f"{path}: model metadata {key!r} missing or unreadable") from None


@dataclass
class _Case:
    """One rollout in progress: its frames (filled as it goes), schedule and step timings."""
    cd: float
    h0: float
    frames: np.ndarray
    sched: dict
    t: int  # current frame: the next step predicts frame t + 1
    wall: np.ndarray = field(default=None)  # type: ignore[assignment]

    @property
    def done(self) -> bool:
        return self.t >= len(self.frames) - 1


class Predictor:
    """A calbatch ONNX model held open (metadata checked once), with :meth:`rollout` (a series, as
    :func:`calbatch.rollout.rollout`) and :meth:`predict` (final structure, metrics, optionally the
    series and the Fick solve) for one or many cases.

    ``model``: the ONNX file (default: the shipped model); ``rule``: the decision rule
    (:data:`calbatch.rollout.RULES`); ``voxel_size``: um (default: the model's); ``threads``:
    ONNX Runtime intra-op threads; ``batch_size``: cases on one grid sharing a network call
    (1 = the reference's exact calls).
    """

    def __init__(self, model: str | Path | None = None, rule: str = "conserve", voxel_size: float | None = None,
                 threads: int | None = None, batch_size: int = 1):
        self.model_path = Path(model) if model is not None else shipped_model("Predictor(model=...)")
        self.session, self.meta = load_onnx(self.model_path, threads)
        if rule not in RULES:
            raise CalbatchError(f"--decision: unknown rule {rule!r} (one of {', '.join(RULES)})")
        self.rule = rule
        self.model_voxel_size = float(self.meta.get("voxel_size_um", "nan"))
        self.voxel_size = self.model_voxel_size if voxel_size is None else float(voxel_size)
        self.cd_range = tuple(float(x) for x in _meta_list(self.meta, "cd_range_percent", self.model_path))
        sched = json.loads(self.meta.get("schedule", "{}") or "{}")
        self.speed = sched.get("press_speed_m_s", 0.05)
        self.frame_interval_us = sched.get("frame_interval_us")
        self.dt = sched.get("timestep_us")
        if int(batch_size) < 1:
            raise CalbatchError(f"batch_size: must be at least 1, got {batch_size}")
        self.batch_size = int(batch_size)

    # --- checks -------------------------------------------------------------------------------

    def extrapolated(self, cd: float) -> bool:
        """True when ``cd`` lies outside the CD range the model was trained on."""
        lo, hi = self.cd_range
        return not lo - 1e-9 <= cd <= hi + 1e-9

    def check(self, volume: np.ndarray, source: str = "start") -> tuple[np.ndarray, float]:
        """The validated volume and its top h0, or a one-line error (bad codes, grid, voxel size)."""
        volume = validate(volume, source)
        h0 = electrode_top(volume, self.voxel_size, source)
        check_input(self.meta, self.model_path, volume.shape, self.voxel_size, h0)
        return volume, h0

    # --- the rollout loop ---------------------------------------------------------------------

    def _start(self, start: np.ndarray, cd: float, h0: float | None) -> _Case:
        given, h0 = start_frames(start, self.voxel_size, h0)
        check_input(self.meta, self.model_path, given.shape[1:], self.voxel_size, h0)
        sched = press_schedule(cd, h0, self.speed, self.frame_interval_us, self.dt)
        n = sched["n_frames"]
        if given.shape[0] > n:
            raise CalbatchError(f"start: {given.shape[0]} frames given, the schedule has only {n}")
        frames = np.empty((n, *given.shape[1:]), dtype=np.uint8)
        frames[:given.shape[0]] = given
        return _Case(float(cd), float(h0), frames, sched, given.shape[0] - 1, np.zeros(n))

    def _step(self, cases: list[_Case]) -> None:
        """One network call for ``cases`` (all on one grid, none done): frame t + 1 of each."""
        t0 = time.perf_counter()
        xs, cs = zip(*(network_inputs(c.frames, c.t, c.cd, c.h0, self.voxel_size, c.sched) for c in cases))
        x = xs[0] if len(cases) == 1 else np.concatenate(xs)
        cond = cs[0] if len(cases) == 1 else np.concatenate(cs)
        out = self.session.run(None, {"frames": x, "cond": cond})[0]
        for k, c in enumerate(cases):  # the same per-step rule as calbatch.rollout, so the frames are equal bit for bit
            c.frames[c.t + 1] = next_frame(out[k], c.frames[c.t], self.meta.get("kind", ""), self.rule,
                                           c.sched["press_z_um"][c.t + 1], self.voxel_size)
        share = (time.perf_counter() - t0) / len(cases)
        for c in cases:
            c.wall[c.t + 1] = share
            c.t += 1

    def _run(self, cases: list[_Case]) -> None:
        """Step every case to its end, ``batch_size`` cases of one grid per network call."""
        pending = [c for c in cases if not c.done]
        while pending:
            grid = pending[0].frames.shape[1:]
            batch = [c for c in pending if c.frames.shape[1:] == grid][:self.batch_size]
            self._step(batch)
            pending = [c for c in pending if not c.done]

    def _series(self, case: _Case, start_frames: int) -> dict:
        s = case.sched
        nz, ny, nx = case.frames.shape[1:]
        vs = self.voxel_size
        attrs = {"cd_percent": case.cd, "uncalendered_top_um": case.h0, "press_lowest_um": float(s["press_lowest_um"]),
                 "press_speed_m_s": float(self.speed), "release_speed_m_s": 2 * float(self.speed),
                 "frame_interval_us": float(s["frame_steps"] * s["dt"]), "timestep_us": float(s["dt"]),
                 "voxel_size_um": vs, "box_um": [nx * vs, ny * vs], "source": "calbatch screen",
                 "model_file": self.model_path.name, "model_kind": self.meta.get("kind", ""),
                 "model_calbatch_version": self.meta.get("calbatch_version", ""), "decision_rule": self.rule,
                 "start_frames": start_frames, "cd_extrapolated": self.extrapolated(case.cd), "microstructure_id": -1}
        n = len(case.frames)
        return {"frames": case.frames, "time_us": s["time_us"], "press_z_um": s["press_z_um"], "phase": s["phase"],
                "wall_time_s": case.wall, "positions": np.zeros((n, 0, 3), np.float32), "radii": np.zeros(0, np.float32),
                "phases": np.zeros(0, np.uint8), "attrs": attrs}

    def rollouts(self, starts: Sequence[np.ndarray], cds: Sequence[float], h0s: Sequence[float | None] | None = None) -> list[dict]:
        """Series dicts (:func:`calbatch.rollout.rollout`'s keys) of many cases, batched."""
        h0s = [None] * len(starts) if h0s is None else list(h0s)
        cases = [self._start(s, cd, h) for s, cd, h in zip(starts, cds, h0s)]
        self._run(cases)
        return [self._series(c, 1 if np.asarray(s).ndim == 3 else 3) for c, s in zip(cases, starts)]

    def rollout(self, start: np.ndarray, cd: float, h0: float | None = None) -> dict:
        """One case's series (``start``: one volume or its first three frames), as ``rollout()``."""
        return self.rollouts([start], [cd], [h0])[0]

    # --- predict: rollout + metrics (+ Fick) --------------------------------------------------

    def predict(self, structures, cds, series: bool = False, metrics: bool = True, fick: bool | dict = False,
                comm=None):
        """Roll out and measure: ``structures`` one volume (nz, ny, nx) or a sequence of them,
        ``cds`` one CD (%) or a sequence (one value is used for every structure, one structure for
        every value). Returns one result dict for one structure and one CD, else a list of them.

        Each result: ``cd_percent``, ``cd_extrapolated``, ``final`` (uint8 volume), ``metrics``
        (:func:`calbatch.metrics.measure` of the final structure), ``fick``
        (:class:`calbatch.transport.TransportResult` as a dict, when ``fick`` is true or a dict of
        :class:`~calbatch.transport.FickSolver` options; solved on ``comm``, default this process
        alone), ``series`` (when asked), ``timings_s``. Nothing is read from or written to disk.
        """
        one_structure = isinstance(structures, np.ndarray) and structures.ndim == 3
        one_cd = np.ndim(cds) == 0
        vols = [structures] if one_structure else list(structures)
        values = [float(cds)] if one_cd else [float(c) for c in cds]
        if len(vols) == 1 and len(values) > 1:
            vols = vols * len(values)
        elif len(values) == 1 and len(vols) > 1:
            values = values * len(vols)
        if len(vols) != len(values):
            raise CalbatchError(f"predict: {len(vols)} structures but {len(values)} CDs (give one, or as many)")
        t0 = time.perf_counter()
        runs = self.rollouts(vols, values)
        t_roll = (time.perf_counter() - t0) / max(len(runs), 1)
        results = []
        for cd, run in zip(values, runs):
            r = {"cd_percent": cd, "cd_extrapolated": run["attrs"]["cd_extrapolated"], "final": run["frames"][-1],
                 "timings_s": {"rollout": t_roll}}
            r.update(self.measure(r["final"], metrics, fick, comm, r["timings_s"]))
            if series:
                r["series"] = run
            results.append(r)
        return results[0] if one_structure and one_cd else results

    def measure(self, volume: np.ndarray, metrics: bool = True, fick: bool | dict = False, comm=None,
                timings: dict | None = None) -> dict:
        """``metrics`` and ``fick`` of one volume (see :meth:`predict`), timing each into ``timings``."""
        from ..metrics import measure

        timings = {} if timings is None else timings
        out: dict = {}
        if metrics:
            t0 = time.perf_counter()
            out["metrics"] = measure(volume, self.voxel_size)
            timings["metrics"] = time.perf_counter() - t0
        if fick:
            from mpi4py import MPI

            from ..transport import FickSolver

            t0 = time.perf_counter()
            options = fick if isinstance(fick, dict) else {}
            out["fick"] = FickSolver(volume, comm=MPI.COMM_SELF if comm is None else comm, **options).solve().to_dict()
            timings["fick"] = time.perf_counter() - t0
        return out
