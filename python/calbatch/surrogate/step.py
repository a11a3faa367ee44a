"""The one stepping loop of a frame model: schedule -> plan -> conditioning -> network -> decision.
A :class:`Stepper` holds a calbatch ONNX model open (its metadata checked once, :class:`ModelFile`);
:meth:`Stepper.start` makes a :class:`Case` (the schedule of its CD, the phase budget's plan and
every step's conditioning); :meth:`Stepper.step` advances up to ``batch_size`` cases of one grid by
one network call. The free rollout (:func:`calbatch.surrogate.rollout.rollout`), the teacher-forced
evaluation (a case started with its true frames, ``forced``) and :class:`calbatch.Predictor` all
step here.

Each step, the C++ core assembles the network input window of the whole batch from every case's
last three frames (``_core.rollout_window``) and writes every case's next frame from the network
output into the case's own frames buffer (``_core.rollout_advance``, by the rule's
:class:`_core.Decision`; the ``particles`` rule, which labels and moves particles, runs
:func:`calbatch.surrogate.rules.decide` per case). The frames equal a plain loop of
:func:`calbatch.surrogate.rules.decide` over the same network outputs bit for bit (ONNX Runtime
does not promise bit-equal scores across batch sizes; tests/test_engine.py holds both).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import _core
from ..electrode.checks import check_scores
from ..electrode.volume import validate
from ..errors import CalbatchError
from .backends import open_backend
from .contract import COND_NAMES, ModelFile, conditioning, load_onnx
from .rules import DEFAULT_RULE, NEAREST, decide, expected_counts, reach_planned_top, rule_named, solid_top


def void_from(press_z: float, voxel_size: float, nz: int, overlap: int = 0) -> int:
    """The first known-void slice with the press at ``press_z`` (um): ``overlap`` slices past the
    first slice whose centre lies above the press (spheres overlap the press wall; a model's
    :attr:`ModelFile.wall_overlap`)."""
    return int(np.clip(np.floor(press_z / voxel_size - 0.5) + 1 + overlap, 0, nz))


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


@dataclass(eq=False)
class Case:
    """One rollout: its schedule, frames (the whole series, or a ring of the last three), the
    current frame ``t`` (the next step predicts ``t + 1``), each step's conditioning and the slice
    from which its target frame is void (above the press), and per-frame step timings. A
    ``forced`` case (teacher forcing) steps from its true frames: each prediction goes to
    ``predicted`` and the true frame takes its place."""
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
    forced: np.ndarray | None = None  # the true frames of a teacher-forced case
    predicted: np.ndarray | None = None  # a teacher-forced case's one-step predictions (frame 0 as given)

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


class Stepper:
    """A calbatch ONNX model held open, stepping cases.

    ``model``: the ONNX file; ``backend``: one of :data:`calbatch.surrogate.BACKENDS` (``cpu``: ONNX
    Runtime's CPU provider); ``rule``: the decision rule (:data:`calbatch.surrogate.rules.RULES`);
    ``voxel_size``: um (default: the model's); ``threads``: ONNX Runtime intra-op threads;
    ``batch_size``: cases of one grid sharing a network call.

    A particle model's file opens as the sibling that steps particles
    (:class:`calbatch.surrogate.particle_stepper.ParticleStepper`, same methods), so every caller
    has one door whatever the model's kind.
    """

    steps_particles = False
    # cls -> the class a particle model's file makes of it; set by calbatch.surrogate.particle_stepper,
    # which the package imports
    particle_sibling = None

    def __init__(self, model: str | Path, backend: str = "cpu", rule: str = DEFAULT_RULE, voxel_size: float | None = None,
                 threads: int | None = None, batch_size: int = 1):
        self.model_path = Path(model)
        rule_named(rule)
        if int(batch_size) < 1:
            raise CalbatchError(f"batch_size: must be at least 1, got {batch_size}")
        self.session, self.meta = load_onnx(self.model_path, threads)
        self.model = ModelFile(self.model_path, self.meta, self.session)
        if not self.model.kind.frames:  # a particle model: this object becomes its particle sibling
            self.__class__ = Stepper.particle_sibling(type(self))
            self._open(model, backend, rule, voxel_size, threads, batch_size)
            return
        self.rule, self.batch_size = rule, int(batch_size)
        self.decision = rule_named(rule) if self.model.kind.scores else NEAREST
        self.voxel_size = self.model.voxel_size if voxel_size is None else float(voxel_size)
        if self.model.kind.planned:
            self.model.budget()  # refused now rather than at the first case
        self.backend = open_backend(backend, self.model_path, self.session, threads, self.batch_size,
                                    self.model.kind.channels)
        self._windows: dict[tuple, np.ndarray] = {}  # per grid: the (batch_size, nz, ny, nx, 3) input window
        self._cond = np.empty((self.batch_size, len(COND_NAMES)), dtype=np.float32)

    def extrapolated(self, cd: float) -> bool:
        """True when ``cd`` lies outside the CD range the model was trained on."""
        return self.model.extrapolated(cd)

    def plan(self, sched: dict, cd: float, h0: float, frame0: np.ndarray) -> dict:
        """A case's plan (:func:`calbatch.surrogate.budget.plan`): the planned top of every frame (the
        network's conditioning), each step's first void slice and, for a planned rule, its (AM,
        CBD) counts (else None; the first void is then the press plus the model's wall overlap).
        Models that do not read the plan get the press positions as their tops."""
        nz, pz = frame0.shape[0], sched["press_z_um"]
        if self.model.kind.planned:
            from .budget import plan

            p = plan(self.model.budget(), sched, cd, h0, frame0)
        else:
            p = {"top_um": np.asarray(pz, dtype=np.float64)}
        if not (self.decision.planned and self.model.kind.planned):
            overlap = self.model.wall_overlap
            p["first_void"] = np.array([void_from(pz[t + 1], self.voxel_size, nz, overlap) for t in range(len(pz) - 1)],
                                       dtype=np.int64)
            p["counts"] = None
        return p

    def particles_of(self, spec, frame: int = 0):  # noqa: ARG002 (the particle stepper's)
        """What a particle model starts from in the file ``spec`` (see the particle stepper); a
        frame model steps from the voxels alone: None."""

    def start(self, start, cd: float, h0: float | None = None, series: bool = True, forced: np.ndarray | None = None,
              speed: float | None = None, frame_interval_us: float | None = None, dt: float | None = None,
              particles=None) -> Case:  # noqa: ARG002 (a particle model's start)
        """A case from one volume (nz, ny, nx) or its first three frames, checked against the
        model; ``series``: keep every frame (else a ring of the last three); ``forced``: the true
        frames of a teacher-forced case (``start`` is then its frame 0); the schedule's ``speed``,
        ``frame_interval_us`` and ``dt`` default to the model's training data; ``particles``
        (:meth:`particles_of`) is for particle models: a frame model steps from the voxels."""
        given, h0 = start_frames(start, self.voxel_size, h0)
        vs = self.voxel_size
        self.model.check_input(given.shape[1:], vs, h0)
        sched = self.model.schedule(cd, h0, speed, frame_interval_us, dt)
        n = sched["n_frames"]
        if given.shape[0] > n:
            raise CalbatchError(f"start: {given.shape[0]} frames given, the schedule has only {n}")
        if forced is not None and len(forced) != n:
            raise CalbatchError(f"forced: {len(forced)} true frames, the schedule has {n}")
        slots = n if series or forced is not None else 3
        frames = np.empty((slots, *given.shape[1:]), dtype=np.uint8)
        if forced is not None:
            frames[:] = forced
        for k in range(given.shape[0]):
            frames[k % slots] = given[k]
        plan = self.plan(sched, cd, h0, given[0])
        tops, stages = plan["top_um"], sched["phase"]
        cond = np.zeros((n - 1, len(COND_NAMES)), dtype=np.float32)
        for t in range(n - 1):
            cond[t] = conditioning(cd, h0, vs, tops[t], tops[t + 1], stages[t + 1])
        case = Case(float(cd), float(h0), sched, frames, given.shape[0] - 1, cond, plan["first_void"], plan["counts"],
                    np.zeros(n), given.shape[0], self.model.extrapolated(cd))
        if forced is not None:
            case.forced, case.predicted = forced, frames.copy()
        return case

    def run(self, cases: Sequence[Case], progress: bool = False, desc: str = "rollouts") -> None:
        """Step every case to its end: each step takes the first ``batch_size`` unfinished cases
        on the first unfinished case's grid (a finished case's place goes to the next)."""
        from tqdm import tqdm

        pending = [c for c in cases if not c.done]
        with tqdm(total=sum(c.n_frames - 1 - c.t for c in pending), desc=desc, unit="step", file=sys.stderr,
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
        self._decide(out, batch, t, first_void)
        share = (time.perf_counter() - t0) / b
        for c in batch:
            c.wall[c.t + 1] = share
            c.t += 1
            if c.forced is not None:  # teacher forcing: the prediction kept, the true frame stepped from
                slot = c.t % len(c.frames)
                c.predicted[slot] = c.frames[slot]
                c.frames[slot] = c.forced[c.t]

    def _decide(self, out: np.ndarray, batch: Sequence[Case], t: np.ndarray, first_void: np.ndarray) -> None:
        """Every case's frame t + 1 from the network output by the rule (as :func:`decide` does it)."""
        rule, counts = self.decision, None
        if rule.planned:
            counts = np.array([c.counts[c.t] for c in batch], dtype=np.int64)
        if rule.core is None:  # particles are labelled and moved in numpy: decide itself
            for k, c in enumerate(batch):
                prev = c.frames[c.t % len(c.frames)]
                c.frames[(c.t + 1) % len(c.frames)] = decide(out[k], prev, rule.name, int(first_void[k]), tuple(counts[k]))
            return
        if rule.core is _core.Decision.counts and counts is None:  # numpy's float64 sums, as decide counts
            counts = np.array([expected_counts(out[k, :first_void[k]].reshape(-1, 4)) for k in range(len(batch))],
                              dtype=np.int64)
        _core.rollout_advance(out, [c.frames for c in batch], t, first_void, rule.core, counts)
        if rule.lifts:
            for k, c in enumerate(batch):
                slot = (c.t + 1) % len(c.frames)
                c.frames[slot] = reach_planned_top(out[k], c.frames[slot], int(first_void[k]), tuple(counts[k]))

    def _window(self, grid: tuple) -> np.ndarray:
        if grid not in self._windows:
            if len(self._windows) >= 2:  # a screen runs one grid at a time: keep the last two
                self._windows.pop(next(iter(self._windows)))
            self._windows[grid] = np.empty((self.batch_size, *grid, 3), dtype=np.uint8)
        return self._windows[grid]

    def cases(self, starts: Sequence, cds: Sequence[float], h0s: Sequence[float | None] | None = None,
              series: bool = True, progress: bool = False, particles: Sequence | None = None) -> list[Case]:
        """Start and run many cases (batched); returns them finished. ``particles``: per start,
        what a particle model starts from (:meth:`particles_of`; None: from the voxels)."""
        h0s = [None] * len(starts) if h0s is None else list(h0s)
        particles = [None] * len(starts) if particles is None else list(particles)
        if not len(starts) == len(cds) == len(h0s) == len(particles):
            raise CalbatchError(f"rollouts: {len(starts)} starts, {len(cds)} CDs, {len(h0s)} tops and {len(particles)} "
                                "particle states (one each)")
        cases = [self.start(s, cd, h, series, particles=p) for s, cd, h, p in zip(starts, cds, h0s, particles)]
        self.run(cases, progress)
        return cases

    def series(self, case: Case, source: str = "calbatch engine", attrs: dict | None = None) -> dict:
        """A finished case as a series dict (:func:`calbatch.electrode.series.read_series`'s keys);
        ``attrs``: further attributes (``microstructure_id`` defaults to -1)."""
        if not case.keeps_series:
            raise CalbatchError("series: this case kept only its last three frames (start it with series=True)")
        s, vs = case.sched, self.voxel_size
        nz, ny, nx = case.grid
        speed = float(s["press_speed_m_s"])
        a = dict(attrs or {})
        a.update({"cd_percent": case.cd, "uncalendered_top_um": case.h0, "press_lowest_um": float(s["press_lowest_um"]),
                  "press_speed_m_s": speed, "release_speed_m_s": 2 * speed,
                  "frame_interval_us": float(s["frame_steps"] * s["dt"]), "timestep_us": float(s["dt"]),
                  "voxel_size_um": vs, "box_um": [nx * vs, ny * vs], "source": source,
                  "model_file": self.model_path.name, "model_kind": self.model.kind.value,
                  "model_calbatch_version": self.model.version, "decision_rule": self.rule,
                  "start_frames": case.start_frames, "cd_extrapolated": case.extrapolated})
        a.setdefault("microstructure_id", -1)
        n = case.n_frames
        return {"frames": case.frames, "time_us": s["time_us"], "press_z_um": s["press_z_um"], "phase": s["phase"],
                "wall_time_s": case.wall, "positions": np.zeros((n, 0, 3), np.float32), "radii": np.zeros(0, np.float32),
                "phases": np.zeros(0, np.uint8), "attrs": a}
