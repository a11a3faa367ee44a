"""The stepping loop of a particle model (kind ``particles``): the same door as a frame model's
(:class:`calbatch.surrogate.step.Stepper` opens a particle model's file as :class:`ParticleStepper`),
so rollout, screen, optimize, bench and evaluate run either kind unchanged.

A case's state is its spheres. It starts from the particles its source holds, exactly (a DEM
pack or series: :meth:`ParticleStepper.particles_of`), else from a sphere decomposition of its
voxels (:func:`calbatch.electrode.particles.decompose`, its fidelity in one line, a
:class:`DecompositionWarning`). Each step moves a whole batch of cases by one network call
(:func:`calbatch.surrogate.particle_step.step`) and renders every case's frame with the core's
voxelizer from the positions as a particle file stores them (float32), so the series, its
metrics and its transport are what a frame model's are, and a particle file written beside the
series gives back the same frames.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..electrode.particles import Particles, checked, decompose, fidelity_line, particles_of
from ..electrode.series import READABLE_PACKS, READABLE_SERIES
from ..electrode.volume import read_volume, split_h5_path
from ..errors import CalbatchError
from . import particle_step
from .contract import DecompositionWarning, Kind, ModelFile, load_onnx
from .rules import DEFAULT_RULE, rule_named
from .step import Case, Stepper, start_frames

PARTICLE_RULE = "particle step"  # what a particle series records as its decision rule: none, the voxels are rendered
_CACHED_SOURCES = 4  # a screen runs one electrode after another: the last few stay decomposed


@dataclass(frozen=True)
class ParticleSource:
    """What a particle case starts from: the spheres of frame ``frame`` (0 but for a decomposition
    of a later frame), every frame's positions when the source is a series (``positions`` (frames,
    n, 3), for a start from later frames and teacher forcing), and a decomposition's fidelity line
    (``note``; empty when the DEM's own)."""

    particles: Particles
    positions: np.ndarray | None = None
    note: str = ""
    frame: int = 0

    def at(self, frame: int) -> Particles:
        """The spheres of frame ``frame`` (checked as a particle state is)."""
        p = self.particles
        if frame == self.frame:
            return p
        if self.positions is None or frame >= len(self.positions):
            raise CalbatchError(f"{p.source}: frame {frame}: the particles are known for frame {self.frame} only "
                                "(a DEM series holds every frame's)")
        return checked(self.positions[frame], p.radii, p.phases, p.box, p.voxel_size, f"{p.source}:{frame}",
                       ("/particles/positions", "/particles/radii", "/particles/phases"))


@dataclass(eq=False)
class ParticleCase(Case):
    """A :class:`Case` whose state is its spheres: ``state`` (frame ``t``'s), ``positions`` (every
    frame's as stored, float32, when the series is kept), the press height and stage of every
    frame, the true positions of a teacher-forced case and how its start was found (``note``)."""

    state: Particles | None = None
    positions: np.ndarray | None = None
    press: np.ndarray | None = None
    stages: np.ndarray | None = None
    truth: np.ndarray | None = None
    note: str = ""


class ParticleStepper(Stepper):
    """A particle model held open, stepping cases (the methods of :class:`Stepper`). ``rule`` is
    accepted for the same door and unused: the frames are rendered from the spheres. Runs on
    ONNX Runtime's CPU provider (``backend`` ``cpu``), its session on one thread (on more its sums
    over the pairs race); ``threads``: a batch's parts run that many side by side."""

    steps_particles = True

    def __init__(self, model: str | Path, backend: str = "cpu", rule: str = DEFAULT_RULE, voxel_size: float | None = None,
                 threads: int | None = None, batch_size: int = 1):
        self._open(model, backend, rule, voxel_size, threads, batch_size)

    def _open(self, model, backend: str, rule: str, voxel_size: float | None, threads: int | None,
              batch_size: int) -> None:
        self.model_path = Path(model)
        rule_named(rule)
        if backend != "cpu":
            from ..data import frame_model_path

            raise CalbatchError(f"backend {backend!r}: a particle model runs on ONNX Runtime's CPU (backend cpu); "
                                f"the GPU backends run the frame model (--model {frame_model_path()})")
        if int(batch_size) < 1:
            raise CalbatchError(f"batch_size: must be at least 1, got {batch_size}")
        self.session, self.meta = load_onnx(self.model_path, 1)
        self.model = ModelFile(self.model_path, self.meta, self.session)
        if self.model.kind is not Kind.PARTICLES:
            raise CalbatchError(f"{self.model_path}: a {self.model.kind.value} model, not a particle model")
        self.rule, self.batch_size = rule, int(batch_size)
        self.voxel_size = self.model.voxel_size if voxel_size is None else float(voxel_size)
        self.tolerance = self.model.tolerance
        self._sources: dict[tuple, ParticleSource] = {}
        self.backend = _CpuBackend(self.session)
        # the network: every sphere's displacement beyond the prior, (n, 3) um; ``threads`` runs
        # a batch's parts side by side (one session thread each: more race, see residual_runner)
        self.residual = particle_step.residual_runner(self.session, threads)

    # --- the start ----------------------------------------------------------------------------

    def particles_of(self, spec, frame: int = 0) -> ParticleSource:
        """The start of the file ``spec``: a DEM pack's particles (the file, or its ``/volume``), a
        DEM series' (every frame's; ``file.h5:/frames/K`` names frame K), the example electrode's
        pack, else a decomposition of the volume (frame ``frame`` of a series without particles)."""
        key = (str(spec), int(frame))
        if key not in self._sources:
            if len(self._sources) >= _CACHED_SOURCES:
                self._sources.pop(next(iter(self._sources)))
            self._sources[key] = self._read_source(str(spec), int(frame))
        return self._sources[key]

    def _read_source(self, spec: str, frame: int) -> ParticleSource:
        from ..data import example_pack_path, example_volume_path

        if spec == example_volume_path():  # the example electrode is its pack's voxels
            spec = str(example_pack_path())
        path, inner = split_h5_path(spec)
        if Path(path).suffix.lower() in (".h5", ".hdf5") and Path(path).is_file():
            fmt = _h5_format(path)
            if fmt in READABLE_PACKS and inner in (None, "/volume"):
                return ParticleSource(particles_of(path))
            if fmt in READABLE_SERIES and (inner is None or inner.startswith("/frames")):
                from ..electrode.series import read_series

                positions = read_series(Path(path), frames=False)["positions"]
                if positions.ndim == 3 and positions.shape[1] > 0:
                    if inner in (None, "/frames"):  # the whole series
                        return ParticleSource(replace(particles_of(path, 0), source=path), positions)
                    last = inner.rsplit("/", 1)[1]
                    if last.isdigit():  # one frame, as a start
                        return ParticleSource(particles_of(path, int(last)))
                if inner in (None, "/frames"):  # a frame model's rollout: no particles
                    spec = f"{path}:/frames/{frame}"
                    return self._decomposed(read_volume(spec), spec, frame)
        return self._decomposed(read_volume(spec), spec)

    def _decomposed(self, volume: np.ndarray, source: str, frame: int = 0) -> ParticleSource:
        p = decompose(volume, self.voxel_size, source)
        note = fidelity_line(p)
        warnings.warn(f"particle model: started from a sphere decomposition: {note}", DecompositionWarning, stacklevel=3)
        return ParticleSource(p, None, note, frame)

    def start(self, start, cd: float, h0: float | None = None, series: bool = True, forced: np.ndarray | None = None,
              speed: float | None = None, frame_interval_us: float | None = None, dt: float | None = None,
              particles: ParticleSource | None = None) -> ParticleCase:
        """A case as :meth:`Stepper.start`; ``particles``: its source (:meth:`particles_of`; None:
        a decomposition of the last given frame). A case started from k frames steps from frame
        k - 1's particles; a teacher-forced one (``forced``) needs the source's every frame."""
        given, h0 = start_frames(start, self.voxel_size, h0)
        vs = self.voxel_size
        nz, ny, nx = given.shape[1:]
        self.model.check_input(given.shape[1:], vs, h0)
        sched = self.model.schedule(cd, h0, speed, frame_interval_us, dt)
        n, k = int(sched["n_frames"]), given.shape[0]
        if k > n:
            raise CalbatchError(f"start: {k} frames given, the schedule has only {n}")
        if forced is not None and len(forced) != n:
            raise CalbatchError(f"forced: {len(forced)} true frames, the schedule has {n}")
        if particles is None:
            particles = self._decomposed(given[-1], "start" if k == 1 else f"start frame {k - 1}", k - 1)
        first = particles.at(k - 1)
        box = (nx * vs, ny * vs)
        if not np.allclose(first.box, box, rtol=1e-6):
            raise CalbatchError(f"{first.source}: particles in a box of {first.box[0]:g} x {first.box[1]:g} um, the grid "
                                f"of {nx} x {ny} voxels of {vs:g} um is {box[0]:g} x {box[1]:g} um")
        truth = None
        if forced is not None:
            if particles.positions is None or len(particles.positions) != n or particles.positions.shape[1] != first.n:
                raise CalbatchError(f"{first.source}: teacher forcing a particle model needs the true particles of "
                                    f"all {n} frames (a DEM series holding /particles)")
            truth = np.asarray(particles.positions, dtype=np.float64)
            bad = np.flatnonzero(~np.isfinite(truth).all(axis=(1, 2)))
            if bad.size:
                raise CalbatchError(f"{first.source}: /particles/positions: frame {bad[0]} holds a non-finite position")
        slots = n if series or forced is not None else 3
        frames = np.empty((slots, nz, ny, nx), dtype=np.uint8)
        if forced is not None:
            frames[:] = forced
        for j in range(k):
            frames[j % slots] = given[j]
        state = replace(first, voxel_size=vs)
        positions = None
        if slots == n:
            positions = np.zeros((n, state.n, 3), dtype=np.float32)
            positions[k - 1] = state.centres
            if particles.positions is not None and k > 1:
                positions[:k] = particles.positions[:k]
        case = ParticleCase(float(cd), float(h0), sched, frames, k - 1, np.zeros((n - 1, 0), np.float32),
                            np.zeros(n - 1, np.int64), None, np.zeros(n), k, self.model.extrapolated(cd),
                            state=state, positions=positions, press=np.asarray(sched["press_z_um"], dtype=np.float64),
                            stages=np.asarray(sched["phase"]).astype(str), truth=truth, note=particles.note)
        if forced is not None:
            case.forced, case.predicted = forced, frames.copy()
        return case

    # --- the step -----------------------------------------------------------------------------

    def step(self, batch: Sequence[ParticleCase]) -> None:
        """One network call for ``batch`` (at most ``batch_size`` unfinished cases): frame t + 1
        of each, its particles moved and its voxels rendered."""
        t0 = time.perf_counter()
        b = len(batch)
        if not 0 < b <= self.batch_size:
            raise CalbatchError(f"step: {b} cases for a batch size of {self.batch_size}")
        press = [(c.press[max(c.t - 1, 0)], c.press[c.t], c.press[c.t + 1]) for c in batch]
        moved = particle_step.step([c.state for c in batch], press, [str(c.stages[c.t + 1]) for c in batch],
                                   [c.cd for c in batch], self.residual, self.tolerance, h0=[c.press[0] for c in batch])
        for c, p in zip(batch, moved):
            stored = p.centres.astype(np.float32)
            if not np.isfinite(stored).all():
                raise CalbatchError(f"rollout CD {c.cd:g}: frame {c.t + 1}: the particle step gave non-finite positions")
            nz = c.frames.shape[1]
            # rendered from what a particle file keeps (float32 centres and radii): it revoxelizes to this frame
            frame = replace(p, centres=stored.astype(np.float64), radii=p.radii.astype(np.float32).astype(np.float64)).voxelize(nz)
            slot = (c.t + 1) % len(c.frames)
            if c.positions is not None:
                c.positions[c.t + 1] = stored
            if c.truth is not None:  # teacher forcing: the prediction kept, the true state stepped from
                c.predicted[slot] = frame
                c.state = replace(p, centres=c.truth[c.t + 1])
            else:
                c.frames[slot] = frame
                c.state = p
        share = (time.perf_counter() - t0) / b
        for c in batch:
            c.wall[c.t + 1] = share
            c.t += 1

    def series(self, case: ParticleCase, source: str = "calbatch engine", attrs: dict | None = None) -> dict:
        """A finished case as a series dict, with its particles of every frame (the DEM's format)."""
        s = super().series(case, source, attrs)
        s["positions"], s["radii"] = case.positions, case.state.radii.astype(np.float32)
        s["phases"] = case.state.phases.astype(np.uint8)
        s["attrs"].update({"decision_rule": PARTICLE_RULE, "start_particles": case.note or "as the source holds them"})
        return s


class _CpuBackend:
    """What runs a particle model's network, as a frame model's backend names it: ONNX Runtime's
    CPU session, whatever the grid."""

    name = "cpu"

    def __init__(self, session):
        self._session = session

    def session(self, _grid=None):
        return self._session


def _h5_format(path: str) -> str:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return str(f.attrs.get("format", ""))
    except OSError as exc:
        raise CalbatchError(f"{path}: cannot read HDF5 ({exc})") from None


_SIBLINGS: dict[type, type] = {}


def particle_class(cls: type) -> type:
    """The class a particle model's file opens as when ``cls`` (a :class:`Stepper` or a subclass,
    such as :class:`calbatch.Predictor`) is asked for: ``cls`` with the particle stepping loop."""
    if cls is Stepper:
        return ParticleStepper
    if cls not in _SIBLINGS:
        _SIBLINGS[cls] = type(cls.__name__, (cls, ParticleStepper), {"__doc__": cls.__doc__,
                                                                     "__module__": cls.__module__})
    return _SIBLINGS[cls]


Stepper.particle_sibling = staticmethod(particle_class)
