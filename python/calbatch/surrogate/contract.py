"""The model contract: what a calbatch model file is and what the runtime feeds it, defined once
for the exporter (:mod:`calbatch.model.export`), the training windows (:mod:`calbatch.model.dataset`)
and the runtime (:mod:`calbatch.surrogate.step`).

- a frame model file is ONNX with inputs ``frames`` (B, nz, ny, nx, :data:`N_PAST`) uint8, the
  past frames oldest first (:func:`past_indices`), and ``cond`` (B, 7) float32 (:data:`COND_NAMES`,
  :func:`conditioning`), and string metadata (:data:`MODEL_FORMAT`; read by :class:`ModelFile`);
- a particle model file (:mod:`calbatch.surrogate.particle_step`) has the inputs :data:`PARTICLE_INPUTS`
  (the graph of the spheres) and, besides, its features, cutoff and projection tolerance;
- its kind (:class:`Kind`) says what the output is: class scores over :data:`CLASS_CODES`,
  regressed phase codes, or every sphere's displacement;
- the schedule a rollout follows (:data:`SCHEDULE_KEYS`) defaults to the model's training data's.
"""

from __future__ import annotations

import json
import warnings
from enum import Enum
from pathlib import Path

import numpy as np

from ..electrode.particles import PAIR_TYPES
from ..electrode.schedule import PRESS_SPEED_M_S, STAGES, press_schedule
from ..electrode.volume import CLASS_CODES, CODE_TO_CLASS, PHASES
from ..errors import CalbatchError
from .particle_step import CUTOFF_UM, EDGE_FEATURES, NODE_FEATURES, SOFT, softness_record

MODEL_FORMAT = "calbatch-model/1"
N_PAST = 3  # frames in a network input window
COND_NAMES = ("cd_fraction", "planned_top_current_over_h0", "planned_top_target_over_h0",
              "stage_press", "stage_release", "stage_relax", "voxel_size_over_h0")
FRAME_INPUTS = ("frames", "cond")
PARTICLE_INPUTS = ("node", "edge", "sender", "receiver")
# What a series states about the press schedule it was made with (a model's ``schedule`` entry).
SCHEDULE_KEYS = ("press_speed_m_s", "frame_interval_us", "timestep_us")

__all__ = ["CLASS_CODES", "CODE_TO_CLASS", "COND_NAMES", "DecompositionWarning", "ExtrapolationWarning", "Kind",
           "MODEL_FORMAT", "ModelFile", "N_PAST", "PARTICLE_INPUTS", "SCHEDULE_KEYS", "conditioning", "load_onnx",
           "model_kind", "past_indices", "schedule_params"]


def schedule_params(attrs: dict) -> dict:
    """The press schedule a series was made with (:data:`SCHEDULE_KEYS` found in its attributes)."""
    return {k: float(attrs[k]) for k in SCHEDULE_KEYS if k in attrs}


def conditioning(cd: float, h0: float, voxel_size: float, z_current: float, z_target: float, stage) -> np.ndarray:
    """The conditioning vector of one step (see :data:`COND_NAMES`): ``z_current`` and ``z_target``
    are the planned tops (um) of the current and target frames; ``stage`` is a name or index."""
    s = STAGES.index(stage) if isinstance(stage, str) else int(stage)
    onehot = [1.0 if i == s else 0.0 for i in range(len(STAGES))]
    return np.array([cd / 100, z_current / h0, z_target / h0, *onehot, voxel_size / h0], dtype=np.float32)


def past_indices(t: int) -> list[int]:
    """The input frames of a window at current frame ``t``, oldest first, padded with frame 0."""
    return [max(t - k, 0) for k in range(N_PAST - 1, -1, -1)]


class Kind(Enum):
    """A model's kind: ``calbatch`` (class scores, conditioned on the phase budget's planned tops,
    any grid of its multiple), ``paper`` (the paper's network: regressed codes on its training
    grid, reading only the CD; it gets the press positions as its tops) or ``particles`` (the
    learned particle step: every sphere's displacement; frames are rendered from the spheres)."""

    CALBATCH = "calbatch"
    PAPER = "paper"
    PARTICLES = "particles"

    @property
    def frames(self) -> bool:
        """Whether the model steps voxel frames (else particles)."""
        return self is not Kind.PARTICLES

    @property
    def inputs(self) -> tuple[str, ...]:
        return FRAME_INPUTS if self.frames else PARTICLE_INPUTS

    @property
    def scores(self) -> bool:
        """Whether the output is class scores (B, nz, ny, nx, 4) rather than codes (B, nz, ny, nx)."""
        return self is Kind.CALBATCH

    @property
    def channels(self) -> int:
        return len(CLASS_CODES) if self.scores else 0

    @property
    def planned(self) -> bool:
        """Whether the model was conditioned on the phase budget's planned tops (and carries it)."""
        return self is Kind.CALBATCH

    @property
    def fixed_grid(self) -> bool:
        return self is Kind.PAPER

    @property
    def output(self) -> str:
        if not self.frames:
            return "displacement beyond the press's squeeze (n, 3) um"
        return ("scores over class_codes (B, nz, ny, nx, 4): unnormalised probabilities" if self.scores
                else "codes (B, nz, ny, nx)")

    @classmethod
    def of(cls, name: str, what: str = "kind") -> Kind:
        try:
            return cls(name)
        except ValueError:
            raise CalbatchError(f"{what} {name!r} is not one of {', '.join(k.value for k in cls)}") from None


class ExtrapolationWarning(UserWarning):
    """A rollout at a CD outside the range the model was trained on."""


class DecompositionWarning(UserWarning):
    """A particle model started from spheres decomposed from voxels: how faithfully, in one line."""


def load_onnx(path: Path, threads: int | None = None):
    """(onnxruntime session, metadata dict) of a calbatch model file; a missing, corrupt or
    foreign file is a CalbatchError naming it."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise CalbatchError(f"{path}: no such model file")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    # no busy-waiting threads: on a shared 2-core machine spinning costs more than it saves
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise CalbatchError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0][:120]})") from None
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    if meta.get("format") != MODEL_FORMAT:
        raise CalbatchError(f"{path}: not a calbatch model (metadata 'format' is {meta.get('format')!r}, "
                            f"expected {MODEL_FORMAT!r})")
    kind = Kind.of(meta.get("kind", ""), f"{path}: model kind")
    names = sorted(i.name for i in sess.get_inputs())
    if names != sorted(kind.inputs):
        raise CalbatchError(f"{path}: model inputs {names} are not a {kind.value} model's ({', '.join(kind.inputs)})")
    return sess, meta


def model_kind(path) -> Kind:
    """The kind of the model file ``path`` (a one-line error if it is not a calbatch model)."""
    return Kind.of(load_onnx(Path(path), 1)[1]["kind"])


class ModelFile:
    """A model file's metadata, read and checked once (one line naming the file and the value where
    the runtime cannot take it). Metadata that older files lack is taken as calbatch's defaults."""

    def __init__(self, path, meta: dict, session=None):
        self.path, self.meta = path, meta
        self.kind = Kind.of(meta.get("kind", ""), f"{path}: model kind")
        ours = {str(k): v for k, v in PHASES.items()}
        if "phase_codes" in meta and self.entry("phase_codes") != ours:
            raise CalbatchError(f"{path}: model phase codes {meta['phase_codes']} differ from calbatch's {json.dumps(ours)}")
        codes = CLASS_CODES.tolist()
        if self.kind.scores and "class_codes" in meta and self.entry("class_codes") != codes:
            raise CalbatchError(f"{path}: model class codes {meta['class_codes']} differ from calbatch's {codes}")
        lo_hi = self.entry("cd_range_percent")
        if not (isinstance(lo_hi, list) and len(lo_hi) == 2 and all(isinstance(v, (int, float)) for v in lo_hi)):
            raise CalbatchError(f"{path}: model metadata 'cd_range_percent' must be [low, high], got {lo_hi!r}")
        self.cd_range = (float(lo_hi[0]), float(lo_hi[1]))
        self.voxel_size = float(meta.get("voxel_size_um", "nan"))
        sched = json.loads(meta.get("schedule", "{}") or "{}")
        speed_key, interval_key, dt_key = SCHEDULE_KEYS
        self.speed = sched.get(speed_key, PRESS_SPEED_M_S)
        self.frame_interval_us, self.dt = sched.get(interval_key), sched.get(dt_key)
        self.version = meta.get("calbatch_version", "")
        if not self.kind.frames:
            self._check_particles(session)
            return
        if session is not None:
            shape = session.get_outputs()[0].shape
            last = self.kind.channels or None
            if len(shape) != (5 if last else 4) or (last is not None and isinstance(shape[-1], int) and shape[-1] != last):
                want = "(B, nz, ny, nx, 4) class scores" if last else "(B, nz, ny, nx) codes"
                raise CalbatchError(f"{path}: model output shape {shape} is not a {self.kind.value} model's {want}")
        if self.kind.planned and self.entry("conditioning") != list(COND_NAMES):
            raise CalbatchError(f"{path}: the model was trained on the conditioning {meta['conditioning']}, calbatch now "
                                f"gives {list(COND_NAMES)}: train it again")

    def _check_particles(self, session) -> None:
        """A particle model's graph features, cutoff and projection tolerance: those the runtime
        computes (:mod:`calbatch.surrogate.particle_step`), else one line naming the entry."""
        path = self.path
        for key, ours in (("node_features", list(NODE_FEATURES)), ("edge_features", list(EDGE_FEATURES))):
            if self.entry(key) != ours:
                raise CalbatchError(f"{path}: model metadata {key!r} {self.meta[key]} differs from calbatch's {ours}: "
                                    "train it again")
        cutoff = self.entry("cutoff_um")
        if not isinstance(cutoff, (int, float)) or abs(cutoff - CUTOFF_UM) > 1e-9:
            raise CalbatchError(f"{path}: model metadata 'cutoff_um' {cutoff!r}: calbatch's graph takes pairs within "
                                f"{CUTOFF_UM:g} um")
        tol = self.entry("tolerance_um")
        if tol == SOFT:  # the contacts follow the press, as the table the model was trained with
            ours = softness_record()
            if self.entry("softness") != ours:
                raise CalbatchError(f"{path}: model metadata 'softness' {self.meta.get('softness')} differs from "
                                    f"calbatch's {json.dumps(ours)}: train it again")
            self.tolerance = SOFT
        elif not (isinstance(tol, dict) and set(tol) == set(PAIR_TYPES)
                and all(isinstance(v, (int, float)) and v >= 0 for v in tol.values())):
            raise CalbatchError(f"{path}: model metadata 'tolerance_um' must give an overlap >= 0 um for each of "
                                f"{', '.join(PAIR_TYPES)} (or \"{SOFT}\"), got {self.meta['tolerance_um']}")
        else:
            self.tolerance = {k: float(v) for k, v in tol.items()}
        if session is not None:
            shape = session.get_outputs()[0].shape
            if len(shape) != 2 or (isinstance(shape[-1], int) and shape[-1] != 3):
                raise CalbatchError(f"{path}: model output shape {shape} is not a particle model's (n, 3) displacements")

    def entry(self, key: str):
        """The JSON metadata entry ``key``, or a one-line error naming it."""
        try:
            return json.loads(self.meta[key])
        except (KeyError, ValueError):
            raise CalbatchError(f"{self.path}: model metadata {key!r} missing or unreadable") from None

    @property
    def wall_overlap(self) -> int:
        """The slices above the press the model was trained to fill (``wall_overlap_voxels``; 0 for
        models made before it was recorded: they were trained with the void from the press up)."""
        value = self.meta.get("wall_overlap_voxels", "0")
        try:
            slices = int(value)
        except (TypeError, ValueError):
            slices = -1
        if slices < 0:
            raise CalbatchError(f"model metadata 'wall_overlap_voxels': expected a whole number >= 0, got {value!r}")
        return slices

    def budget(self) -> dict:
        """The model's phase budget (:func:`calbatch.surrogate.budget.from_meta`), checked."""
        from .budget import from_meta

        return from_meta(self.meta, self.path)

    def extrapolated(self, cd: float, warn: bool = False) -> bool:
        """True when ``cd`` lies outside the CD range the model was trained on; ``warn``: also an
        :class:`ExtrapolationWarning`."""
        lo, hi = self.cd_range
        out = not lo - 1e-9 <= cd <= hi + 1e-9
        if out and warn:
            warnings.warn(f"CD {cd:g} % is outside the model's trained range {lo:g}-{hi:g} %: an extrapolation",
                          ExtrapolationWarning, stacklevel=3)
        return out

    def schedule(self, cd: float, h0: float, speed: float | None = None, frame_interval_us: float | None = None,
                 dt: float | None = None) -> dict:
        """The press schedule to ``cd`` (:func:`calbatch.electrode.schedule.press_schedule`), speed,
        frame interval and time step defaulting to the model's training data's."""
        return press_schedule(cd, h0, self.speed if speed is None else speed,
                              self.frame_interval_us if frame_interval_us is None else frame_interval_us,
                              self.dt if dt is None else dt)

    def check_input(self, shape, voxel_size: float, h0: float) -> None:
        """Refuse a grid or voxel size the model cannot take (one line naming the value): a frame
        model takes its training voxel size and grid (or its multiples)."""
        path = self.path
        if not voxel_size > 0:
            raise CalbatchError(f"voxel size {voxel_size:g} um: must be positive")
        # a particle model's features are in um: its frames render exactly on any grid
        if self.kind.frames and not abs(voxel_size - self.voxel_size) <= 1e-6 * self.voxel_size:
            raise CalbatchError(f"voxel size {voxel_size:g} um: the model {path} was trained at {self.voxel_size:g} um")
        nz, ny, nx = shape
        if self.kind.frames:
            self._check_grid(shape)
        if nz * voxel_size < h0:
            raise CalbatchError(f"grid {list(shape)}: {nz} slices x {voxel_size:g} um hold less than the "
                                f"electrode's {h0:.2f} um")

    def _check_grid(self, shape) -> None:
        """A frame model's grid: its training grid, or multiples of its factor."""
        path, grid = self.path, self.entry("grid_zyx")
        nz, ny, nx = shape
        if json.loads(self.meta.get("fixed_grid", "false")) and list(shape) != list(grid):
            raise CalbatchError(f"grid {list(shape)}: the model {path} takes only its training grid {grid} (z, y, x)")
        m = int(self.meta.get("grid_multiple_xy", "1"))
        if ny % m or nx % m or min(ny, nx) < 2 * m or nz < 2 * m:
            raise CalbatchError(f"grid {list(shape)}: the model {path} needs x and y multiples of {m} "
                                f"(and every side at least {2 * m})")
