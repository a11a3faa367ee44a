"""The rollout engine: a calbatch ONNX model loaded once (its metadata checked), then free rollouts
of any number of cases -- uncalendered structures (or their first three frames) and CDs -- through
the DEM's press schedule (:func:`calbatch.electrode.schedule.press_schedule`), ``batch_size`` cases of one
grid sharing each network call.

Each step, the C++ core assembles the network input window of the whole batch from every case's
last three frames (``_core.rollout_window``) and writes every case's next frame from the network
output into the case's own frames buffer (``_core.rollout_advance``: the decision rule of
:func:`calbatch.surrogate.rules.decide`, or the nearest code for ``paper`` models; the ``particles`` rule,
which labels and moves particles, runs :func:`calbatch.surrogate.rules.decide` itself per case). Python keeps the
cases, gathers each step's conditioning (a row per case, precomputed from the schedule with
:func:`calbatch.model.dataset.conditioning`) and calls the network. At batch size 1 the frames equal
:func:`calbatch.surrogate.rollout.rollout`'s plain Python loop bit for bit; at larger batches they equal
that loop's building blocks run on the same batches (ONNX Runtime does not promise bit-equal
scores across batch sizes; tests/test_engine.py holds both).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import _core
from ..electrode.checks import check_scores
from ..electrode.schedule import press_schedule
from ..electrode.volume import PHASES
from ..errors import CalbatchError
from ..model.dataset import COND_NAMES, conditioning
from ..model.export import load_onnx
from .backends.ort import open_backend
from .rollout import _meta_list, check_input, start_frames, step_plan
from .rules import DEFAULT_RULE, RULES, decide, expected_counts, reach_planned_top

KINDS = ("calbatch", "paper")
CLASS_CODES = [0, 1, 2, 4]


def check_model(meta: dict, session, path) -> None:
    """Refuse a model whose kind, phase codes, class codes or output the engine cannot take (one
    line naming the file and the value). Metadata that older files lack is taken as calbatch's."""
    kind = meta.get("kind", "")
    if kind not in KINDS:
        raise CalbatchError(f"{path}: model kind {kind!r} is not one of {', '.join(KINDS)}")
    ours = {str(k): v for k, v in PHASES.items()}
    if "phase_codes" in meta and _meta_list(meta, "phase_codes", path) != ours:
        raise CalbatchError(f"{path}: model phase codes {meta['phase_codes']} differ from calbatch's {json.dumps(ours)}")
    if kind == "calbatch" and "class_codes" in meta and _meta_list(meta, "class_codes", path) != CLASS_CODES:
        raise CalbatchError(f"{path}: model class codes {meta['class_codes']} differ from calbatch's {CLASS_CODES}")
    lo_hi = _meta_list(meta, "cd_range_percent", path)
    if not (isinstance(lo_hi, list) and len(lo_hi) == 2 and all(isinstance(v, (int, float)) for v in lo_hi)):
        raise CalbatchError(f"{path}: model metadata 'cd_range_percent' must be [low, high], got {lo_hi!r}")
    shape = session.get_outputs()[0].shape
    rank, last = (5, 4) if kind == "calbatch" else (4, None)
    if len(shape) != rank or (last is not None and isinstance(shape[-1], int) and shape[-1] != last):
        want = "(B, nz, ny, nx, 4) class scores" if kind == "calbatch" else "(B, nz, ny, nx) codes"
        raise CalbatchError(f"{path}: model output shape {shape} is not a {kind} model's {want}")


@dataclass(eq=False)
class Case:
    """One rollout: its schedule, frames (the whole series, or a ring of the last three), the
    current frame ``t`` (the next step predicts ``t + 1``), each step's conditioning and the slice
    from which its target frame is void (above the press), and per-frame step timings."""
    cd: float
    h0: float
    sched: dict
    frames: np.ndarray  # (slots, nz, ny, nx): frame k in slot k % slots
    t: int
    cond: np.ndarray  # (n_frames - 1, 7) float32: row t conditions the step t -> t + 1
    first_void: np.ndarray  # (n_frames - 1,) int64: frame t + 1 is void from this slice up
    counts: np.ndarray | None  # (n_frames - 1, 2) int64: frame t + 1's AM and CBD voxels (planned rules)
    wall: np.ndarray  # (n_frames,) seconds of the step that made each frame
    start_frames: int
    extrapolated: bool

    @property
    def n_frames(self) -> int:
        return int(self.sched["n_frames"])

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.frames.shape[1:])

    @property
    def done(self) -> bool:
        return self.t >= self.n_frames - 1

    @property
    def keeps_series(self) -> bool:
        return len(self.frames) == self.n_frames

    def frame(self, k: int) -> np.ndarray:
        """Frame ``k`` (a view); a ring keeps only the last three."""
        if not (0 <= k <= self.t and (self.keeps_series or k > self.t - 3)):
            raise CalbatchError(f"frame {k}: not held (frames up to {self.t} made, a ring keeps the last three)")
        return self.frames[k % len(self.frames)]

    @property
    def final(self) -> np.ndarray:
        if not self.done:
            raise CalbatchError(f"rollout CD {self.cd:g}: not finished (frame {self.t} of {self.n_frames - 1})")
        return self.frame(self.n_frames - 1)


class Engine:
    """A calbatch ONNX model held open for free rollouts.

    ``model``: the ONNX file; ``backend``: one of :data:`calbatch.surrogate.BACKENDS` (``cpu``: ONNX
    Runtime's CPU provider); ``rule``: the decision rule (:data:`calbatch.surrogate.rules.RULES`);
    ``voxel_size``: um (default: the model's); ``threads``: ONNX Runtime intra-op threads;
    ``batch_size``: cases of one grid sharing a network call; ``opened``: the (session, metadata)
    of :func:`calbatch.model.export.load_onnx` when the caller has opened the file already.
    """

    def __init__(self, model: str | Path, backend: str = "cpu", rule: str = DEFAULT_RULE, voxel_size: float | None = None,
                 threads: int | None = None, batch_size: int = 1, opened: tuple | None = None):
        self.model_path = Path(model)
        if rule not in RULES:
            raise CalbatchError(f"--decision: unknown rule {rule!r} (one of {', '.join(RULES)})")
        if int(batch_size) < 1:
            raise CalbatchError(f"batch_size: must be at least 1, got {batch_size}")
        self.session, self.meta = opened if opened is not None else load_onnx(self.model_path, threads)
        check_model(self.meta, self.session, self.model_path)
        self.kind = self.meta["kind"]
        self.rule, self.batch_size = rule, int(batch_size)
        self.model_voxel_size = float(self.meta.get("voxel_size_um", "nan"))
        self.voxel_size = self.model_voxel_size if voxel_size is None else float(voxel_size)
        self.cd_range = tuple(float(x) for x in _meta_list(self.meta, "cd_range_percent", self.model_path))
        sched = json.loads(self.meta.get("schedule", "{}") or "{}")
        self.speed = sched.get("press_speed_m_s", 0.05)
        self.frame_interval_us = sched.get("frame_interval_us")
        self.dt = sched.get("timestep_us")
        self._decode = "nearest" if self.kind == "paper" else rule
        if self.kind == "calbatch":
            from .budget import from_meta

            from_meta(self.meta, self.model_path)  # refused now rather than at the first case
        self.backend = open_backend(backend, self.model_path, self.session, threads, self.batch_size,
                                    4 if self.kind == "calbatch" else 0)
        self._windows: dict[tuple, np.ndarray] = {}  # per grid: the (batch_size, nz, ny, nx, 3) input window
        self._cond = np.empty((self.batch_size, len(COND_NAMES)), dtype=np.float32)

    def extrapolated(self, cd: float) -> bool:
        """True when ``cd`` lies outside the CD range the model was trained on."""
        lo, hi = self.cd_range
        return not lo - 1e-9 <= cd <= hi + 1e-9

    # --- cases --------------------------------------------------------------------------------

    def start(self, start, cd: float, h0: float | None = None, series: bool = True) -> Case:
        """A case from one volume (nz, ny, nx) or its first three frames, checked against the
        model; ``series``: keep every frame (else a ring of the last three)."""
        given, h0 = start_frames(start, self.voxel_size, h0)
        check_input(self.meta, self.model_path, given.shape[1:], self.voxel_size, h0)
        sched = press_schedule(cd, h0, self.speed, self.frame_interval_us, self.dt)
        n = sched["n_frames"]
        if given.shape[0] > n:
            raise CalbatchError(f"start: {given.shape[0]} frames given, the schedule has only {n}")
        slots = n if series else 3
        frames = np.empty((slots, *given.shape[1:]), dtype=np.uint8)
        for k in range(given.shape[0]):
            frames[k % slots] = given[k]
        vs = self.voxel_size
        plan = step_plan(self.meta, self.model_path, self.rule, sched, cd, h0, given[0], vs)
        tops, stages = plan["top_um"], sched["phase"]
        cond = np.zeros((n - 1, len(COND_NAMES)), dtype=np.float32)
        for t in range(n - 1):  # the network's conditioning of each step, as calbatch.surrogate.rollout.network_inputs
            cond[t] = conditioning(cd, h0, vs, tops[t], tops[t + 1], stages[t + 1])
        first_void, counts = plan["first_void"], plan["counts"]
        return Case(float(cd), float(h0), sched, frames, given.shape[0] - 1, cond, first_void, counts, np.zeros(n),
                    given.shape[0], self.extrapolated(cd))

    def run(self, cases: Sequence[Case], progress: bool = False) -> None:
        """Step every case to its end: each step takes the first ``batch_size`` unfinished cases
        on the first unfinished case's grid (a finished case's place goes to the next)."""
        from tqdm import tqdm

        pending = [c for c in cases if not c.done]
        with tqdm(total=sum(c.n_frames - 1 - c.t for c in pending), desc="rollouts", unit="step", file=sys.stderr,
                  disable=not progress, leave=False) as bar:
            while pending:
                grid = pending[0].grid
                batch = [c for c in pending if c.grid == grid][:self.batch_size]
                self.step(batch)
                bar.update(len(batch))
                pending = [c for c in pending if not c.done]

    def step(self, batch: Sequence[Case]) -> None:
        """One network call for ``batch`` (at most ``batch_size`` unfinished cases of one grid):
        frame t + 1 of each, written in place."""
        t0 = time.perf_counter()
        b = len(batch)
        if not 0 < b <= self.batch_size:
            raise CalbatchError(f"step: {b} cases for a batch size of {self.batch_size}")
        t = np.array([c.t for c in batch], dtype=np.int64)
        frames = [c.frames for c in batch]
        x = self._window(batch[0].grid)[:b]
        _core.rollout_window(frames, t, x)
        cond = self._cond[:b]
        for k, c in enumerate(batch):
            cond[k] = c.cond[c.t]
        out = self.backend.run(x, cond)
        check_scores(out[:b], int(t.max()) + 1)
        first_void = np.array([c.first_void[c.t] for c in batch], dtype=np.int64)
        counts, decode = None, self._decode
        if decode == "particles":  # particles are labelled and moved in numpy: calbatch.surrogate.rules.decide itself
            for k, c in enumerate(batch):
                prev = c.frames[c.t % len(c.frames)]
                c.frames[(c.t + 1) % len(c.frames)] = decide(out[k], prev, "particles", int(first_void[k]),
                                                             tuple(c.counts[c.t]))
        else:
            if decode == "expected":  # numpy's float64 sum, as calbatch.surrogate.rules.decide counts
                counts = np.array([expected_counts(out[k, :first_void[k]].reshape(-1, 4)) for k in range(b)], dtype=np.int64)
            elif decode == "budget":  # the planned counts, given to the core as the expected rule's
                counts, decode = np.array([c.counts[c.t] for c in batch], dtype=np.int64), "expected"
            _core.rollout_advance(out, frames, t, first_void, decode, counts)
        if self._decode == "budget":  # the rule's second pass, as calbatch.surrogate.rules.decide runs it
            for k, c in enumerate(batch):
                slot = (c.t + 1) % len(c.frames)
                c.frames[slot] = reach_planned_top(out[k], c.frames[slot], int(first_void[k]), tuple(counts[k]))
        share = (time.perf_counter() - t0) / b
        for c in batch:
            c.wall[c.t + 1] = share
            c.t += 1

    def _window(self, grid: tuple) -> np.ndarray:
        if grid not in self._windows:
            if len(self._windows) >= 2:  # a screen runs one grid at a time: keep the last two
                self._windows.pop(next(iter(self._windows)))
            self._windows[grid] = np.empty((self.batch_size, *grid, 3), dtype=np.uint8)
        return self._windows[grid]

    def rollouts(self, starts: Sequence, cds: Sequence[float], h0s: Sequence[float | None] | None = None,
                 series: bool = True, progress: bool = False) -> list[Case]:
        """Start and run many cases (batched); returns them finished."""
        h0s = [None] * len(starts) if h0s is None else list(h0s)
        if not len(starts) == len(cds) == len(h0s):
            raise CalbatchError(f"rollouts: {len(starts)} starts, {len(cds)} CDs and {len(h0s)} tops (one each)")
        cases = [self.start(s, cd, h, series) for s, cd, h in zip(starts, cds, h0s)]
        self.run(cases, progress)
        return cases

    def series(self, case: Case, source: str = "calbatch engine") -> dict:
        """A finished case as a series dict (:func:`calbatch.surrogate.rollout.rollout`'s keys and attributes)."""
        if not case.keeps_series:
            raise CalbatchError("series: this case kept only its last three frames (start it with series=True)")
        s, vs = case.sched, self.voxel_size
        nz, ny, nx = case.grid
        attrs = {"cd_percent": case.cd, "uncalendered_top_um": case.h0, "press_lowest_um": float(s["press_lowest_um"]),
                 "press_speed_m_s": float(self.speed), "release_speed_m_s": 2 * float(self.speed),
                 "frame_interval_us": float(s["frame_steps"] * s["dt"]), "timestep_us": float(s["dt"]),
                 "voxel_size_um": vs, "box_um": [nx * vs, ny * vs], "source": source,
                 "model_file": self.model_path.name, "model_kind": self.kind,
                 "model_calbatch_version": self.meta.get("calbatch_version", ""), "decision_rule": self.rule,
                 "start_frames": case.start_frames, "cd_extrapolated": case.extrapolated, "microstructure_id": -1}
        n = case.n_frames
        return {"frames": case.frames, "time_us": s["time_us"], "press_z_um": s["press_z_um"], "phase": s["phase"],
                "wall_time_s": case.wall, "positions": np.zeros((n, 0, 3), np.float32), "radii": np.zeros(0, np.float32),
                "phases": np.zeros(0, np.uint8), "attrs": attrs}
