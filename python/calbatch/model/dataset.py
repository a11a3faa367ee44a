"""Training windows from DEM series files: the paper's sliding window (3 past frames -> the next
frame) with the conditioning the process makes known in advance, the paper's split, and a lazy
stream (one window's frames read from disk at a time) for training.

A window at current frame ``t`` holds the inputs ``frames[t-2], frames[t-1], frames[t]`` (indices
below 0 are copies of frame 0, so a rollout can start from one uncalendered volume) and the
``horizon`` targets ``frames[t+1 .. t+horizon]`` (horizon > 1 for unrolled / pushforward training),
with one conditioning vector per target (:data:`COND_NAMES`). The electrode's top in the
conditioning is the one the phase budget plans (:mod:`calbatch.surrogate.budget`, fitted on the training
series; :func:`attach_budget`), in training as in a rollout, never the DEM frame's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..electrode.schedule import schedule_of_series, stage_index
from ..errors import CalbatchError
from ..surrogate.contract import COND_NAMES, N_PAST, conditioning, past_indices

# The paper's split (Table 2): electrode 4 wholly held out; electrode 1 tests CD 45, 2 CD 35, 3 CD 25, 45.
PAPER_TEST = {"electrodes": (4,), "cases": {1: (45.0,), 2: (35.0,), 3: (25.0, 45.0)}}


@dataclass
class SeriesInfo:
    """What the dataset needs to know of a series file without reading its frames."""
    path: str
    electrode: int
    cd: float
    n_frames: int
    shape: tuple
    voxel_size: float
    h0: float
    sched: dict = field(repr=False)
    stage: np.ndarray = field(repr=False)
    top: np.ndarray | None = field(default=None, repr=False)  # planned top per frame (um): attach_budget

    def cond(self, t: int) -> np.ndarray:
        """Conditioning of the step from frame ``t`` to frame ``t + 1``."""
        if self.top is None:
            raise CalbatchError(f"{self.path}: no planned top (attach a phase budget first)")
        return conditioning(self.cd, self.h0, self.voxel_size, self.top[t], self.top[t + 1], self.stage[t + 1])


def attach_budget(infos: list[SeriesInfo], budget: dict) -> None:
    """Give every series the planned top of each frame that ``budget`` gives its schedule."""
    from ..surrogate.budget import planned_top

    for s in infos:
        s.top = planned_top(budget, s.sched, s.cd, s.h0)


def scan(paths, budget: dict | None = None) -> list[SeriesInfo]:
    """Read the attributes and sizes of series files (not their frames); refuse files without
    voxel frames or with fewer than 4 frames, naming the file. ``budget``: attach its planned tops
    (:func:`attach_budget`)."""
    import h5py

    from ..electrode.series import read_series

    infos = []
    for p in sorted(str(p) for p in paths):
        s = read_series(Path(p), frames=False)  # checks the format, names the file on error
        with h5py.File(p, "r") as f:
            if "frames" not in f:
                raise CalbatchError(f"{p}: no voxel frames (/frames); run `calbatch dem revoxelize` on it first")
            shape = tuple(int(n) for n in f["frames"].shape)
            dtype = f["frames"].dtype
        if dtype != np.uint8:
            raise CalbatchError(f"{p}: /frames must be uint8 phase codes, got {dtype}")
        if shape[0] < N_PAST + 1:
            raise CalbatchError(f"{p}: series has {shape[0]} frames, a window needs at least {N_PAST + 1}")
        a = s["attrs"]
        try:
            sched = schedule_of_series(a)
            infos.append(SeriesInfo(p, int(a["microstructure_id"]), float(a["cd_percent"]), shape[0], shape[1:],
                                    float(a["voxel_size_um"]), float(a["uncalendered_top_um"]), sched,
                                    stage_index(s["phase"])))
        except KeyError as exc:
            raise CalbatchError(f"{p}: series attribute {exc.args[0]!r} missing") from None
        if sched["n_frames"] != shape[0]:
            raise CalbatchError(f"{p}: {shape[0]} frames, its press schedule has {sched['n_frames']}")
    if budget is not None:
        attach_budget(infos, budget)
    return infos


def parse_split(text: str) -> dict:
    """``"4;1:45;2:35;3:25,45"`` -> the test split: whole electrodes, then electrode:CD,CD cases."""
    electrodes, cases = [], {}
    try:
        for part in filter(None, (x.strip() for x in text.split(";"))):
            if ":" in part:
                e, cds = part.split(":")
                cases[int(e)] = tuple(float(c) for c in cds.split(","))
            else:
                electrodes.append(int(part))
    except ValueError:
        raise CalbatchError(f"test_split: expected e.g. '4;1:45;2:35;3:25,45', got {text!r}") from None
    return {"electrodes": tuple(electrodes), "cases": cases}


def split(infos: list[SeriesInfo], test: dict | None = None, val_fraction: float = 0.15, seed: int = 0) -> dict:
    """Whole series into ``train``, ``val`` and ``test`` (lists of :class:`SeriesInfo`): test by
    ``test`` (default :data:`PAPER_TEST`), validation a seeded random ``val_fraction`` of the rest
    (at least one series when the fraction is positive and two or more remain)."""
    test = PAPER_TEST if test is None else test
    if not 0 <= val_fraction < 1:
        raise CalbatchError(f"val_fraction: must be in [0, 1), got {val_fraction:g}")

    def is_test(s: SeriesInfo) -> bool:
        cds = test.get("cases", {}).get(s.electrode, ())
        return s.electrode in test.get("electrodes", ()) or any(abs(s.cd - c) < 1e-6 for c in cds)

    tests = [s for s in infos if is_test(s)]
    rest = [s for s in infos if not is_test(s)]
    n_val = 0 if val_fraction == 0 or len(rest) < 2 else max(1, int(round(val_fraction * len(rest))))
    order = np.random.default_rng(seed).permutation(len(rest))
    val_idx = set(order[:n_val].tolist())
    return {"train": [s for i, s in enumerate(rest) if i not in val_idx],
            "val": [s for i, s in enumerate(rest) if i in val_idx], "test": tests}


def window_indices(infos: list[SeriesInfo], horizon: int = 1) -> list[tuple[int, int]]:
    """Every (series index, current frame t) whose ``horizon`` targets exist: t = 0 .. F-1-horizon."""
    if horizon < 1:
        raise CalbatchError(f"horizon: must be at least 1, got {horizon}")
    return [(i, t) for i, s in enumerate(infos) for t in range(s.n_frames - horizon)]


def read_window(info: SeriesInfo, t: int, horizon: int = 1, frames=None):
    """``(inputs (3, nz, ny, nx), cond (horizon, 7), targets (horizon, nz, ny, nx))`` of one window.
    ``frames`` may be an open h5py dataset or an array; only the needed frames are read."""
    import h5py

    if not 0 <= t <= info.n_frames - 1 - horizon:
        raise CalbatchError(f"{info.path}: no window at frame {t} with horizon {horizon} ({info.n_frames} frames)")
    need = sorted(set(past_indices(t)) | set(range(t + 1, t + horizon + 1)))
    if frames is None:
        with h5py.File(info.path, "r") as f:
            got = {i: f["frames"][i] for i in need}
    else:
        got = {i: np.asarray(frames[i]) for i in need}
    inputs = np.stack([got[i] for i in past_indices(t)])
    targets = np.stack([got[i] for i in range(t + 1, t + horizon + 1)])
    cond = np.stack([info.cond(k) for k in range(t, t + horizon)])
    return inputs, cond, targets


def wrap_crop(arrays, y0: int, x0: int, size: tuple[int, int]):
    """The same periodic (wrapped) crop of ``size`` (cy, cx) at (y0, x0) of each ``[..., y, x]`` array."""
    out = []
    for a in arrays:
        ny, nx = a.shape[-2:]
        iy = (y0 + np.arange(size[0])) % ny
        ix = (x0 + np.arange(size[1])) % nx
        out.append(np.take(np.take(a, iy, axis=-2), ix, axis=-1))
    return out


class WindowStream:
    """Windows of some series, read lazily from disk, in a seeded shuffled order (one pass per
    iteration; each iteration reshuffles), optionally cropped in x/y with periodic wrap."""

    def __init__(self, infos: list[SeriesInfo], horizon: int = 1, crop: tuple[int, int] | None = None,
                 shuffle: bool = True, seed: int = 0, max_windows: int | None = None):
        if not infos:
            raise CalbatchError("dataset: no series in this split")
        shapes = {s.shape for s in infos}
        if crop is None and len(shapes) > 1:
            raise CalbatchError(f"dataset: series of different grids {sorted(shapes)} need a crop")
        if crop is not None and any(c > min(min(s.shape[1:]) for s in infos) or c < 1 for c in crop):
            raise CalbatchError(f"crop {crop}: must be between 1 and the smallest x/y size")
        self.infos, self.horizon, self.crop = infos, horizon, crop
        self.shuffle, self.max_windows = shuffle, max_windows
        self.index = window_indices(infos, horizon)
        self.rng = np.random.default_rng(seed)
        self.nz = max(s.shape[0] for s in infos)

    def __len__(self) -> int:
        return len(self.index) if self.max_windows is None else min(self.max_windows, len(self.index))

    def __iter__(self):
        import h5py

        order = self.rng.permutation(len(self.index)) if self.shuffle else np.arange(len(self.index))
        order = order[:len(self)]
        # A few open files at a time; only a window's frames are read (gzip chunks of one frame).
        handles: dict[int, object] = {}
        try:
            for k in order:
                i, t = self.index[k]
                if i not in handles:
                    if len(handles) > 4:
                        handles.pop(next(iter(handles))).close()
                    handles[i] = h5py.File(self.infos[i].path, "r")
                x, c, y = read_window(self.infos[i], t, self.horizon, handles[i]["frames"])
                if self.crop is not None:
                    y0, x0 = (int(self.rng.integers(n)) for n in x.shape[-2:])
                    x, y = wrap_crop((x, y), y0, x0, self.crop)
                yield x, c, y
        finally:
            for h in handles.values():
                h.close()

    def batches(self, batch_size: int):
        """Numpy batches ``(inputs (B,3,z,y,x) uint8, cond (B,H,7) f32, targets (B,H,z,y,x) uint8)``."""
        buf = []
        for item in self:
            buf.append(item)
            if len(buf) == batch_size:
                yield tuple(np.stack(a) for a in zip(*buf))
                buf = []
        if buf:
            yield tuple(np.stack(a) for a in zip(*buf))

    def tf_dataset(self, batch_size: int):
        """The stream as a ``tf.data.Dataset`` of batches (prefetched, read on a background thread)."""
        import tensorflow as tf

        z, (cy, cx) = self.nz, self.crop or self.infos[0].shape[1:]
        sig = (tf.TensorSpec((N_PAST, z, cy, cx), tf.uint8), tf.TensorSpec((self.horizon, len(COND_NAMES)), tf.float32),
               tf.TensorSpec((self.horizon, z, cy, cx), tf.uint8))
        return tf.data.Dataset.from_generator(lambda: iter(self), output_signature=sig).batch(batch_size).prefetch(1)

    def steps(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)
