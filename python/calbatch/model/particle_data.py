"""What the particle step trains on: a DEM particle file's transitions as graphs (the features of
frame t, noised, and the residual that reaches the DEM's frame t + 1), the model's own states
(pushforward) and its free rollouts scored against the DEM. Numpy and the core only: the runtime's
features (:mod:`calbatch.surrogate.particle_step`) are the training's, by construction.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..electrode.particles import checked, minimum_image
from ..electrode.volume import AM
from ..errors import CalbatchError
from ..surrogate.particle_step import MAX_RESIDUAL_UM, graph, rollout, step


def load_particle_file(path: Path, centred: bool = False) -> dict:
    """A DEM particle file as the training needs it: positions (frames, n, 3), radii, phases, press
    heights and stages per frame, box and CD; the arrays checked as a particle state is. ``centred``:
    the bed's rigid slide in x and y taken out of every frame (:func:`centre`)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            pos = f["particles/positions"][:].astype(np.float64)
            radii, phases = f["particles/radii"][:], f["particles/phases"][:]
            press, stage = f["press_z_um"][:].astype(np.float64), f["phase"][:].astype(str)
            attrs = dict(f.attrs)
    except (OSError, KeyError) as exc:
        raise CalbatchError(f"{path}: not a DEM particle file ({exc})") from None
    p = checked(pos[0], radii, phases, attrs["box_um"], float(attrs.get("voxel_size_um", 0.4)), str(path))
    if centred:
        pos = centre(pos, p.box)
    return {"pos": pos, "p": p, "press": press, "stage": stage, "cd": float(attrs["cd_percent"]),
            "electrode": int(attrs["microstructure_id"]), "name": Path(path).stem}


def centre(pos: np.ndarray, box) -> np.ndarray:
    """Positions (frames, n, 3) with the bed's rigid slide in x and y taken out: each frame moved
    back by the mean of every sphere's move since frame 0 (minimum image), and wrapped into the box.
    The periodic box has no origin, so a slid bed is the same electrode; the DEM's beds slide as a
    whole when the press lets go (up to 4.1 um in a frame; 29 of the 56 default series more than
    0.5 um in one frame), in directions the press history does not show, and no functional metric
    sees it."""
    steps = minimum_image(np.diff(pos, axis=0), box)[..., :2].mean(axis=1)  # (frames - 1, 2)
    slide = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    out = pos.copy()
    out[..., :2] -= slide[:, None, :]
    out[..., :2] %= np.asarray(box, dtype=np.float64)[:2]
    return out


def windows(series: list[dict]) -> list[tuple[dict, int]]:
    """Every transition (series, t) once: the series of one electrode share their press frames (the
    same pack pressed at the same speed) down to their own lowest point, so the press steps come
    from the electrode's deepest series only."""
    deepest: dict[int, float] = {}
    for s in series:
        deepest[s["electrode"]] = max(deepest.get(s["electrode"], 0.0), s["cd"])
    return [(s, t) for s in series for t in range(len(s["press"]) - 1)
            if not (s["stage"][t + 1] == "press" and s["cd"] < deepest[s["electrode"]])]


def sample(s: dict, t: int, rng: np.random.Generator, noise_um: float, start: np.ndarray | None = None):
    """One training graph: the features of frame ``t`` (or of ``start``, the model's own state at t),
    noised, and the residual that reaches the DEM's frame t + 1 (capped as the runtime caps it)."""
    base = s["pos"][t] if start is None else start
    centres = base + (rng.normal(0.0, noise_um, base.shape) if noise_um > 0 else 0.0)
    p = replace(s["p"], centres=centres)
    press = s["press"]
    node, edge, snd, rcv, prior = graph(p, press[t], press[t + 1], press[max(t - 1, 0)], s["stage"][t + 1], s["cd"])
    delta = s["pos"][t + 1] - centres
    minimum_image(delta, p.box)
    target = delta - prior
    size = np.linalg.norm(target, axis=1, keepdims=True)
    target *= np.minimum(1.0, MAX_RESIDUAL_UM / np.maximum(size, 1e-12))
    return node, edge, snd, rcv, target.astype(np.float32)


def free_rollouts(series: list[dict], residual_of, tolerance: dict[str, float] | str) -> list[np.ndarray]:
    """Every series rolled out freely from its frame 0: positions (frames, n, 3) each."""
    return [rollout(s["p"], {"press_z_um": s["press"], "phase": s["stage"]}, s["cd"], residual_of, tolerance)
            for s in series]


def pushforward_states(s: dict, steps: int, residual_of, tolerance: dict[str, float] | str) -> dict[int, list[np.ndarray]]:
    """The model's own states of one series: from every DEM frame t0, ``steps`` steps (all starts
    in one batch); returns {t: [positions reached at t, one per start that reached it]}."""
    press, stage, frames = s["press"], s["stage"], len(s["press"])
    starts = list(range(frames - 1))
    cases = [replace(s["p"], centres=s["pos"][t]) for t in starts]
    out: dict[int, list[np.ndarray]] = {}
    for k in range(1, steps + 1):
        live = [(t0, c) for t0, c in zip(starts, cases) if t0 + k < frames]
        if not live:
            break
        ts = [t0 + k - 1 for t0, _ in live]
        moved = step([c for _, c in live], [(press[max(t - 1, 0)], press[t], press[t + 1]) for t in ts],
                     [stage[t + 1] for t in ts], [s["cd"]] * len(ts), residual_of, tolerance, h0=[press[0]] * len(ts))
        starts, cases = [t0 for t0, _ in live], moved
        for t, c in zip(ts, moved):
            out.setdefault(t + 1, []).append(c.centres)
    return out


def score_series(s: dict, trajectory: np.ndarray) -> dict:
    """How far one free rollout (positions (frames, n, 3)) is from its DEM series: R2 per voxel per
    frame (final, mean, worst), the final frame's porosity and thickness errors (signed, % and
    voxels), the AM volume's error (final and worst frame, %) and every particle's final drift
    (median and 90th percentile, um)."""
    from ..electrode.metrics import compare, measure

    p, nz = s["p"], 125
    got = [replace(p, centres=x).voxelize(nz) for x in trajectory]
    want = [replace(p, centres=x).voxelize(nz) for x in s["pos"]]
    r2 = [compare(w, g)["r2"] for g, w in zip(got[1:], want[1:])]
    am = [100 * (np.sum(g == AM) - np.sum(w == AM)) / np.sum(w == AM) for g, w in zip(got, want)]
    mg, mw = measure(got[-1], p.voxel_size), measure(want[-1], p.voxel_size)
    drift = np.linalg.norm(minimum_image(trajectory[-1] - s["pos"][-1], p.box), axis=1)
    return {"r2": float(r2[-1]), "r2_mean": float(np.mean(r2)), "r2_worst": float(np.min(r2)),
            "porosity_err_pct": float(100 * (mg["porosity"] - mw["porosity"]) / mw["porosity"]),
            "thickness_err_vox": float((mg["thickness_um"] - mw["thickness_um"]) / p.voxel_size),
            "am_err_pct": float(am[-1]), "am_err_worst_frame_pct": float(max(am, key=abs)),
            "drift_median_um": float(np.median(drift)), "drift_p90_um": float(np.percentile(drift, 90))}


def rollout_score(series: list[dict], trajectories: list[np.ndarray]) -> dict:
    """Free rollouts against the DEM in brief (what picks the best epoch): mean over series of the
    final frame's R2 per voxel, |porosity error| (%), |thickness error| (voxels) and median drift (um)."""
    rows = [score_series(s, t) for s, t in zip(series, trajectories)]
    keys = {"r2": "r2", "porosity_pct": "porosity_err_pct", "thickness_vox": "thickness_err_vox",
            "drift_um": "drift_median_um"}
    return {k: float(np.mean([abs(r[v]) for r in rows])) for k, v in keys.items()}


def batch(graphs: list[tuple]) -> tuple:
    """Graphs joined into one, their node indices offset; last, each node's graph (int32)."""
    offsets = np.cumsum([0] + [len(g[0]) for g in graphs[:-1]])
    return (np.concatenate([g[0] for g in graphs]), np.concatenate([g[1] for g in graphs]),
            np.concatenate([g[2] + o for g, o in zip(graphs, offsets)]).astype(np.int32),
            np.concatenate([g[3] + o for g, o in zip(graphs, offsets)]).astype(np.int32),
            np.concatenate([g[4] for g in graphs]),
            np.concatenate([np.full(len(g[0]), k, np.int32) for k, g in enumerate(graphs)]))
