"""The learned particle step: a graph of the spheres of one frame, what the network sees of each
sphere and each pair, and the free rollout that moves every sphere in 3-D, sub-voxel.

The state is the particles (:class:`calbatch.electrode.particles.Particles`); frames are rendered
from them by the core's voxelizer, so shapes and volumes are exact by construction. A step is the
press's affine squeeze (the prior: every sphere's z scaled by the press's move while it presses)
plus the network's residual, then hard walls and a projection that pushes apart overlaps deeper
than the DEM shows. The press is slow and the bed damped (quasi-static), so the next frame follows
from this one and the press schedule: no velocities enter, which keeps a free rollout from feeding
on its own drift.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..electrode.particles import Particles, neighbours, project
from ..electrode.schedule import STAGES
from ..electrode.volume import AM, CBD

CUTOFF_UM = 0.5  # a pair is an edge while its gap is below this
NODE_FEATURES = ("z/40", "press gap", "collector gap", "r/3", "AM", "CBD", "press move", "last press move",
                 "press", "release", "relax", "cd/100", "prior dz/0.5", "press - top")
EDGE_FEATURES = ("dx/3", "dy/3", "dz/3", "d/3", "overlap/0.2", "r_sender/3", "r_receiver/3", "AM sender",
                 "AM receiver")
OUTPUT_SCALE_UM = 0.5  # the network's residual is in units of half a micrometre
MAX_RESIDUAL_UM = 2.0  # the DEM's fastest spheres (the top, springing back) move 1.8 um a frame
COLLECTOR_WALL_UM = 0.2  # how far a sphere may overlap the collector
PRESS_WALL_UM = 1.5  # and the press: the DEM's press is soft, its spheres sink up to 1.4 um into it
# overlaps (um) the projection leaves per pair type: about the DEM's 99th percentile in a bed pressed to
# CD 30 (its spheres rarely overlap deeper; deeper ones in a rollout are drift that eats AM and CBD)
TOLERANCE_UM = {"CBD-CBD": 0.4, "AM-CBD": 0.6, "AM-AM": 1.0}
PROJECTION_SWEEPS = 16  # 4 leave a rollout's overlaps twice the DEM's; 16 hold them near the tolerance


def graph(p: Particles, press_now: float, press_next: float, press_prev: float, stage_next: str, cd: float):
    """The step from ``p`` (press at ``press_now``) to the next frame (press at ``press_next``, stage
    ``stage_next``): node features (n, 14), edge features (m, 9), senders and receivers (m,) int32
    (every pair both ways) and the prior displacement (n, 3) in um."""
    ij, delta = neighbours(p, CUTOFF_UM)
    snd = np.concatenate([ij[:, 0], ij[:, 1]]).astype(np.int32)
    rcv = np.concatenate([ij[:, 1], ij[:, 0]]).astype(np.int32)
    dx = np.concatenate([delta, -delta])  # x_receiver - x_sender
    z, r, ph = p.centres[:, 2], p.radii, p.phases
    top = float(np.max(z + r))
    prior = np.zeros_like(p.centres)
    if stage_next == "press" and press_next < top:
        prior[:, 2] = z * (press_next / min(press_now, top) - 1.0)
    stage = np.zeros((len(z), len(STAGES)))
    stage[:, STAGES.index(stage_next)] = 1
    n = len(z)
    node = np.column_stack([z / 40.0, np.clip(press_now - z - r, -1, 4), np.clip(z - r, -1, 4), r / 3, ph == AM,
                            ph == CBD, np.full(n, press_next - press_now), np.full(n, press_now - press_prev), stage,
                            np.full(n, cd / 100), prior[:, 2] / OUTPUT_SCALE_UM, np.full(n, press_now - top)])
    d = np.linalg.norm(dx, axis=1)
    edge = np.column_stack([dx / 3, d / 3, (r[snd] + r[rcv] - d) / 0.2, r[snd] / 3, r[rcv] / 3, ph[snd] == AM,
                            ph[rcv] == AM])
    return node.astype(np.float32), edge.astype(np.float32), snd, rcv, prior


def advance(p: Particles, prior: np.ndarray, residual: np.ndarray, press_next: float,
            tolerance: dict[str, float] | None) -> Particles:
    """The next state: prior + residual (capped at :data:`MAX_RESIDUAL_UM` a sphere), the collector
    and the press as hard walls, overlaps deeper than ``tolerance`` (um per pair type) pushed apart."""
    size = np.linalg.norm(residual, axis=1, keepdims=True)
    residual = residual * np.minimum(1.0, MAX_RESIDUAL_UM / np.maximum(size, 1e-12))
    centres = p.centres + prior + residual
    centres[:, 2] = np.clip(centres[:, 2], p.radii - COLLECTOR_WALL_UM, press_next - p.radii + PRESS_WALL_UM)
    nxt = replace(p, centres=centres)
    if tolerance is not None:
        nxt, _ = project(nxt, press_next + PRESS_WALL_UM, tolerance, PROJECTION_SWEEPS)
    return nxt


def step(cases: list[Particles], press: list[tuple[float, float, float]], stage_next: list[str], cd: list[float],
         residual_of, tolerance: dict[str, float] | None) -> list[Particles]:
    """One step of a batch of cases by one network call: ``press[k]`` is case k's (previous, now,
    next) press height (um), ``stage_next[k]`` the stage of its next frame; the graphs of all cases
    are joined (node indices offset) and ``residual_of(node, edge, snd, rcv)`` -> (n, 3) um moves them."""
    graphs = [graph(p, now, nxt, prev, st, c) for p, (prev, now, nxt), st, c in zip(cases, press, stage_next, cd)]
    offsets = np.cumsum([0] + [p.n for p in cases])
    residual = residual_of(np.concatenate([g[0] for g in graphs]), np.concatenate([g[1] for g in graphs]),
                           np.concatenate([g[2] + o for g, o in zip(graphs, offsets)]).astype(np.int32),
                           np.concatenate([g[3] + o for g, o in zip(graphs, offsets)]).astype(np.int32))
    return [advance(p, g[4], residual[a:b], pr[2], tolerance)
            for p, g, a, b, pr in zip(cases, graphs, offsets[:-1], offsets[1:], press)]


def rollout(p0: Particles, schedule: dict, cd: float, residual_of, tolerance: dict[str, float] | None = None,
            on_frame=None) -> np.ndarray:
    """Free rollout from ``p0`` through ``schedule`` (:func:`calbatch.electrode.schedule.press_schedule`):
    ``residual_of(node, edge, snd, rcv)`` -> (n, 3) um is the network. Returns the positions of every
    frame (frames, n, 3); ``on_frame(t, particles)`` sees each new frame."""
    press, stage = np.asarray(schedule["press_z_um"], float), np.asarray(schedule["phase"]).astype(str)
    frames, p = [p0.centres], p0
    for t in range(len(press) - 1):
        p = step([p], [(press[max(t - 1, 0)], press[t], press[t + 1])], [stage[t + 1]], [cd], residual_of, tolerance)[0]
        frames.append(p.centres)
        if on_frame is not None:
            on_frame(t + 1, p)
    return np.stack(frames)


def onnx_residual(path) -> callable:
    """The network of an exported particle-step file as ``residual_of`` for :func:`rollout`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda node, edge, snd, rcv: session.run(None, dict(zip(names, (node, edge, snd, rcv))))[0].astype(np.float64)
