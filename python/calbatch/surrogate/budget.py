"""The phase budget: how thick a calendered electrode is and how much AM and CBD its voxels hold at
every frame of the press schedule, learned from the training series as smooth functions of what the
schedule makes known in advance. The planned top conditions the network (its affine squeeze and
stretch follow it), and the ``budget`` decision rule gives each rollout frame the planned voxel
counts below the planned top: the network decides where the material goes.

Why: a rollout that keeps the previous frame's counts (``conserve``) cannot follow the DEM, whose
voxel AM and CBD volumes fall as spheres overlap under the press (AM by up to 10 %, CBD by up to
45 % at CD 50) and partly recover on release; and a frame model's spring-back drifts with the CD.
Both are smooth, nearly universal functions of the press strain and the CD across electrodes
(docs/model.md has the measurements), so they are fitted once, here, rather than re-decided by the
network every step.

Per target y (the top in voxels; the AM and CBD voxel counts over frame 0's):
- while the press moves down, a cubic in the press strain s = 1 - z_press / h0 (for the top: its
  height over the press, the spheres' overlap of the press wall);
- the relaxed value after release, a quadratic in the CD (for the top: its height over the press's
  lowest point, the spring-back);
- between the two, y = y_final + (y_lowest - y_final) g(tau): a piecewise-linear decay in the time
  since the press started lifting, in frame intervals.
Everything is fitted by least squares (numpy) and stored as plain numbers in the model's metadata.
"""

from __future__ import annotations

import json

import numpy as np

from ..electrode.schedule import schedule_of_series
from ..electrode.volume import AM, CBD
from ..errors import CalbatchError
from .rules import solid_top

TARGETS = ("top", "am", "cbd")
TAU_NODES = [0.5 * k for k in range(21)]  # release time, in frame intervals (0 .. 10)
BUDGET_FORMAT = 1


def frame_budget(frames: np.ndarray) -> np.ndarray:
    """Per frame (n, 3): the top (slices up to the highest holding solid), the AM and CBD voxel counts."""
    frames = np.asarray(frames)
    out = np.zeros((len(frames), 3), dtype=np.float64)
    for k, f in enumerate(frames):
        out[k] = solid_top(f), np.count_nonzero(f == AM), np.count_nonzero(f == CBD)
    return out


def schedule_features(sched: dict, cd: float, h0: float) -> dict:
    """What the schedule tells about every frame: the press strain, whether the press still moves
    down, and the time since it started lifting (frame intervals; 0 before)."""
    pz = np.asarray(sched["press_z_um"], dtype=np.float64)
    release_us = sched["press_steps"] * sched["dt"]
    interval = sched["frame_steps"] * sched["dt"]
    time_us = np.asarray(sched["time_us"], dtype=np.float64)
    return {"strain": np.clip(1 - pz / h0, 0, None), "pressing": np.asarray(sched["phase"]) == "press",
            "tau": np.clip((time_us - release_us) / interval, 0, None), "cd": float(cd), "h0": float(h0),
            "press_z": pz}


def _press_basis(s):
    s = np.asarray(s, dtype=np.float64)
    return np.stack([s, s ** 2, s ** 3], axis=-1)  # zero at s = 0: frame 0 is its own reference


def _cd_basis(cd):
    cd = np.asarray(cd, dtype=np.float64) / 100
    return np.stack([np.ones_like(cd), cd, cd ** 2], axis=-1)


def _hat(tau):
    """Piecewise-linear interpolation weights of ``tau`` on TAU_NODES (constant past the last)."""
    nodes = np.asarray(TAU_NODES)
    tau = np.clip(np.asarray(tau, dtype=np.float64), nodes[0], nodes[-1])
    w = np.zeros((tau.size, nodes.size))
    k = np.clip(np.searchsorted(nodes, tau, side="right") - 1, 0, nodes.size - 2)
    frac = (tau - nodes[k]) / (nodes[k + 1] - nodes[k])
    w[np.arange(tau.size), k] = 1 - frac
    w[np.arange(tau.size), k + 1] = frac
    return w


def _ratios(b: np.ndarray) -> np.ndarray:
    """(n, 3): the top as it is, the AM and CBD counts over frame 0's (1 for a phase frame 0 lacks)."""
    return np.column_stack([b[:, 0], np.where(b[0, 1:] > 0, b[:, 1:] / np.maximum(b[0, 1:], 1), 1.0)])


def _lstsq(a, b, ridge=1e-6):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ b)


def _reference(feat: dict, vs: float):
    """The schedule's own part of each target: the top rides on the press (pressing) or on its
    lowest point (after); the counts are ratios to frame 0's."""
    lowest = feat["h0"] * (1 - feat["cd"] / 100) / vs
    return feat["press_z"] / vs, lowest


def fit(series: list[dict], vs: float) -> dict:
    """The budget from training series: dicts with ``features`` (:func:`schedule_features`) and
    ``budget`` (:func:`frame_budget` of their frames)."""
    if not series:
        raise CalbatchError("phase budget: no training series to fit it on")
    press_rows, final_rows, release_rows = [], [], []
    for s in series:
        f, b = s["features"], s["budget"]
        press_ref, lowest = _reference(f, vs)
        ratio = _ratios(b)
        y = np.column_stack([b[:, 0] - press_ref, ratio[:, 1:]]) - [0, 1, 1]
        y_final = np.array([b[-1, 0] - lowest, ratio[-1, 1] - 1, ratio[-1, 2] - 1])
        for k in np.flatnonzero(f["pressing"]):
            press_rows.append((f["strain"][k], y[k]))
        final_rows.append((f["cd"], y_final))
        release_rows.append((f, b))
    s_press = np.array([r[0] for r in press_rows])
    y_press = np.array([r[1] for r in press_rows])
    press = _lstsq(_press_basis(s_press), y_press)  # (3 coefficients, 3 targets)
    cds = np.array([r[0] for r in final_rows])
    final = _lstsq(_cd_basis(cds), np.array([r[1] for r in final_rows]), ridge=1e-4)
    budget = {"format": BUDGET_FORMAT, "voxel_size_um": vs, "press": press.tolist(), "final": final.tolist(),
              "tau_nodes": TAU_NODES}
    # the decay between the lowest and the relaxed value: least squares over the node values,
    # y - y_final = (y_lowest - y_final) g(tau), with a little smoothing
    nodes = len(TAU_NODES)
    rows, rhs = [[] for _ in TARGETS], [[] for _ in TARGETS]
    for f, b in release_rows:
        after = ~f["pressing"]
        lo, fin = _ends(budget, f)
        ratio = _ratios(b)
        hats = _hat(f["tau"][after])
        for j in range(3):
            rows[j].append(hats * (lo[j] - fin[j]))
            rhs[j].append(ratio[after, j] - fin[j])
    smooth = np.diff(np.eye(nodes), n=2, axis=0) * 1e-2
    decay = []
    for j in range(3):
        a = np.vstack(rows[j] + [smooth * max(np.abs(np.vstack(rows[j])).max(), 1e-12)])
        b = np.concatenate(rhs[j] + [np.zeros(nodes - 2)])
        decay.append(np.clip(_lstsq(a, b), -0.5, 1.5).tolist())
    budget["decay"] = decay
    return budget


def _ends(budget: dict, feat: dict):
    """Each target's value at the press's lowest point and relaxed, in its units (the top in
    voxels, the counts as ratios to frame 0's)."""
    vs = budget["voxel_size_um"]
    _, lowest = _reference(feat, vs)
    s_max = feat["cd"] / 100
    lo = np.asarray(budget["press"]).T @ _press_basis(s_max) + [0, 1, 1]
    fin = np.asarray(budget["final"]).T @ _cd_basis(feat["cd"]) + [0, 1, 1]
    return lo + [lowest, 0, 0], fin + [lowest, 0, 0]


def predict(budget: dict, feat: dict) -> np.ndarray:
    """Per frame (n, 3): the top (slices, float) and the AM and CBD counts as ratios to frame 0's."""
    press_ref, _ = _reference(feat, budget["voxel_size_um"])
    out = np.asarray(budget["press"]).T @ _press_basis(feat["strain"]).T  # (3, n)
    out = out.T + [0, 1, 1]
    out[:, 0] += press_ref
    lo, fin = _ends(budget, feat)
    after = ~feat["pressing"]
    g = _hat(feat["tau"][after]) @ np.asarray(budget["decay"]).T  # (m, 3)
    out[after] = fin + (lo - fin) * g
    return out


def plan(budget: dict, sched: dict, cd: float, h0: float, frame0: np.ndarray) -> dict:
    """A rollout's plan from frame 0 and the schedule: ``top_um`` (n,), the planned top of every
    frame (the network's conditioning); per step t -> t + 1 ``first_void`` (n - 1,), the slice
    from which frame t + 1 is void, and ``counts`` (n - 1, 2) of its AM and CBD voxels."""
    nz = frame0.shape[0]
    b0 = frame_budget(frame0[None])[0]
    pred = predict(budget, schedule_features(sched, cd, h0))
    top_um = pred[:, 0] * budget["voxel_size_um"]
    pred = pred[1:]
    first_void = np.clip(np.rint(pred[:, 0]), 1, nz).astype(np.int64)
    counts = np.rint(np.column_stack([pred[:, 1] * b0[1], pred[:, 2] * b0[2]])).astype(np.int64)
    return {"top_um": top_um, "first_void": first_void, "counts": np.maximum(counts, 0)}


def planned_top(budget: dict, sched: dict, cd: float, h0: float) -> np.ndarray:
    """The planned top (um) of every frame of a schedule."""
    return predict(budget, schedule_features(sched, cd, h0))[:, 0] * budget["voxel_size_um"]


def from_meta(meta: dict, path) -> dict:
    """The budget stored in a model's metadata (``phase_budget``), checked."""
    if "phase_budget" not in meta:
        raise CalbatchError(f"{path}: the model has no phase budget (exported before calbatch stored one); "
                            "re-export it or choose the rule conserve")
    try:
        budget = json.loads(meta["phase_budget"])
        assert budget["format"] == BUDGET_FORMAT
        assert np.asarray(budget["press"], dtype=float).shape == (3, 3)
        assert np.asarray(budget["final"], dtype=float).shape == (3, 3)
        assert np.asarray(budget["decay"], dtype=float).shape == (3, len(budget["tau_nodes"]))
        assert budget["tau_nodes"] == TAU_NODES and float(budget["voxel_size_um"]) > 0
    except (ValueError, KeyError, TypeError, AssertionError):
        raise CalbatchError(f"{path}: model metadata 'phase_budget' is unreadable") from None
    return budget


def fit_series_files(paths, vs: float) -> dict:
    """:func:`fit` on series files (their voxel frames and schedules), naming a file that does not
    fit its own schedule."""
    import h5py

    series = []
    for path in paths:
        try:
            with h5py.File(path, "r") as f:
                attrs, frames = dict(f.attrs), f["frames"][:]
        except (OSError, KeyError):
            raise CalbatchError(f"{path}: unreadable, or no voxel frames (/frames)") from None
        sched = schedule_of_series(attrs)
        if sched["n_frames"] != len(frames):
            raise CalbatchError(f"{path}: {len(frames)} frames, its press schedule has {sched['n_frames']}")
        feat = schedule_features(sched, float(attrs["cd_percent"]), float(attrs["uncalendered_top_um"]))
        series.append({"features": feat, "budget": frame_budget(frames)})
    return fit(series, vs)
