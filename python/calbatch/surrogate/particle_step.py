"""The learned particle step: a graph of the spheres of one frame, what the network sees of each
sphere and each pair, and the free rollout that moves every sphere in 3-D, sub-voxel.

The state is the particles (:class:`calbatch.electrode.particles.Particles`); frames are rendered
from them by the core's voxelizer, so shapes and volumes are exact by construction. A step is the
press's affine squeeze (the prior: every sphere's z scaled by the press's move while it presses)
plus the network's residual, then hard walls and a projection that pushes apart overlaps deeper
than the DEM shows. The press is slow and the bed damped (quasi-static), so the next frame follows
from this one and the press schedule: no velocities enter, which keeps a free rollout from feeding
on its own drift.

The step's hot loop runs in the C++ core, batched: one call before the network (pairs, features,
prior) and one after it (update, walls, projection, the voxel frame). The numpy version it replaced
stays at the end of this module as the reference it must equal bit for bit.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from .. import _core
from ..electrode.particles import Particles, neighbours, project, tolerance_table
from ..electrode.schedule import STAGES
from ..electrode.volume import AM, CBD
from ..errors import CalbatchError

CUTOFF_UM = 0.5  # a pair is an edge while its gap is below this
NODE_FEATURES = ("z/40", "press gap", "collector gap", "r/3", "AM", "CBD", "press move", "last press move",
                 "press", "release", "relax", "cd/100", "prior dz/0.5", "press - bed top", "AM-AM overlap per sphere/0.1")
# The bed's top is the highest sphere top below which all but this share of the spheres' tops lie:
# the DEM's pack has a few spheres standing proud of it, and a squeeze started at the highest one
# moves the whole bed frames before the press reaches it (the prior's error on the DEM's press
# frames at CD 45-50: mean |dz bias| 0.100 um with the highest sphere, 0.045 with 1 %, 0.108 with 2 %).
TOP_SHARE = 0.01
EDGE_FEATURES = ("dx/3", "dy/3", "dz/3", "d/3", "overlap/0.2", "r_sender/3", "r_receiver/3", "AM sender",
                 "AM receiver")
# The scales the feature names above spell out (fixed with them: a trained network reads them).
Z_SCALE_UM, LENGTH_SCALE_UM, OVERLAP_SCALE_UM, CD_SCALE, STORED_SCALE_UM = 40.0, 3.0, 0.2, 100.0, 0.1
WALL_GAP_UM = (-1.0, 4.0)  # the press and collector gaps are clipped to this range
OUTPUT_SCALE_UM = 0.5  # the network's residual is in units of half a micrometre
MAX_RESIDUAL_UM = 2.0  # the DEM's fastest spheres (the top, springing back) move 1.8 um a frame
COLLECTOR_WALL_UM = 0.2  # how far a sphere may overlap the collector
PRESS_WALL_UM = 1.5  # and the press: the DEM's press is soft, its spheres sink up to 1.4 um into it
# overlaps (um) the projection leaves per pair type: about the DEM's 99th percentile in a bed pressed to
# CD 30 (its spheres rarely overlap deeper; deeper ones in a rollout are drift that eats AM and CBD)
TOLERANCE_UM = {"CBD-CBD": 0.4, "AM-CBD": 0.6, "AM-AM": 1.0}
PROJECTION_SWEEPS = 16  # 4 leave a rollout's overlaps twice the DEM's; 16 hold them near the tolerance
# The DEM's contacts are soft: the deeper the press, the deeper its spheres overlap each other and sink
# into it. SOFT as the tolerance makes the walls and the projection follow that: per compression (the
# press's travel, % of the uncalendered top), how far the top sphere sinks into the press and the 99th
# percentile of the overlaps per pair type (um), measured on the press frames of four training series
# (ms1 CD 50, ms3 CD 50, ms6 CD 47.4, ms8 CD 49.5; Gaussian bins of 2.5 %). With a fixed tolerance (the
# DEM's at CD 30) and a 1.5 um press wall, the top spheres of a CD 30 bed (ms5) and the tenth highest of
# a CD 50 bed (ms2) sat 1.5 um in the press, where the DEM's sink 0.1-0.4 and 0.7 um.
# The last three columns are the median overlaps of the overlapping pairs (CBD-CBD, AM-CBD, AM-AM).
# A free rollout's overlaps pile up at the 99th percentile (at CD 48, the AM-AM 90th percentile 1.83
# um where the DEM's is 1.35): AM volume lost and the pores too open. So while the press presses, one
# sweep takes every AM-AM pair deeper than its median back to it (the press settles the AM). And the
# CBD sticks (the DEM's cohesion): a rollout's CBD drifted off the AM (AM-CBD contact area 7-15 %
# low, pore-CBD 8-12 % high), so every step one sweep pulls the CBD pairs that touched before it,
# and have come less than HOLD_PULL_OFF_UM apart, back to HOLD_SHARE of their median. Chosen on the
# 7 validation series (docs/model.md): the worst AM volume error 3.7 -> 0.7 %, the contact areas
# 9.3 -> 4.8 %, D_eff through the pores alone 31.6 -> 8.9 %.
SOFT = "soft"
SOFTNESS = ((0.0, 0.04, 0.12, 0.13, 0.03, 0.01, 0.01, 0.00), (5.0, 0.08, 0.18, 0.22, 0.09, 0.02, 0.02, 0.01),
            (10.0, 0.15, 0.23, 0.36, 0.25, 0.06, 0.05, 0.03), (15.0, 0.20, 0.26, 0.44, 0.50, 0.11, 0.12, 0.07),
            (20.0, 0.24, 0.30, 0.49, 0.79, 0.17, 0.20, 0.14), (25.0, 0.30, 0.35, 0.57, 1.01, 0.21, 0.28, 0.23),
            (30.0, 0.42, 0.41, 0.64, 1.16, 0.23, 0.34, 0.32), (35.0, 0.61, 0.48, 0.71, 1.31, 0.24, 0.37, 0.43),
            (40.0, 0.88, 0.56, 0.78, 1.48, 0.25, 0.39, 0.54), (45.0, 1.19, 0.64, 0.86, 1.70, 0.28, 0.42, 0.63),
            (50.0, 1.46, 0.70, 0.93, 1.88, 0.30, 0.45, 0.69))
HOLD_SHARE = 0.3
HOLD_PULL_OFF_UM = 0.3
NO_PAIRS = {"CBD-CBD": np.inf, "AM-CBD": np.inf, "AM-AM": np.inf}  # no sweep: no pair type takes part
# Once the press turns, the bed keeps the overlaps it had when the press left it (at CD 50 near 32 %
# compression, where the DEM's 99th percentiles stop falling); a shallower run keeps its deepest.
DETACH_PERCENT = 32.0
_SOFT = np.asarray(SOFTNESS)

# The network runs a batch in parts of at least this many spheres (a case): a part's tensors stay in
# the cache, 15-20 % faster than one joined run of 8 cases on this machine.
PART_SPHERES = 1000


def step(cases: list[Particles], press: list[tuple[float, float, float]], stage_next: list[str], cd: list[float],
         residual_of, tolerance: dict[str, float] | str | None, out: list[np.ndarray] | None = None,
         h0: list[float] | None = None) -> list[Particles]:
    """One step of a batch of cases by one network call: ``press[k]`` is case k's (previous, now,
    next) press height (um), ``stage_next[k]`` the stage of its next frame; the graphs of all cases
    are joined (node indices offset) and ``residual_of(node, edge, snd, rcv)`` -> (n, 3) um moves them.
    ``tolerance``: the projection's (um per pair type; :data:`SOFT`: following the press, which needs
    ``h0[k]``, case k's uncalendered top, the press's first height; None: no projection).
    ``out[k]``: case k's next voxel frame is rendered into it (uint8 (nz, ny, nx) on its grid).
    The core does the work of all cases at once, before the network and after it."""
    node, edge, snd, rcv, prior = features(cases, press, stage_next, cd)
    residual = residual_of(node, edge, snd, rcv)
    walls, tables, settle, hold = contacts(tolerance, press, stage_next, cd, h0)
    return _advance(cases, prior, residual, [pr[2] for pr in press], walls, tables, out, settle, hold,
                    touching(edge, snd, rcv))


def touching(edge: np.ndarray, snd: np.ndarray, rcv: np.ndarray) -> np.ndarray:
    """The pairs (i < j) of a step's graph whose spheres overlap, as its edges show them (m, 2)
    int32: the bonds a hold keeps, found without a second pair search."""
    k = (snd < rcv) & (edge[:, EDGE_FEATURES.index("overlap/0.2")] > 0)
    return np.stack([snd[k], rcv[k]], axis=1)


def compression(h0: float, press_next: float, stage_next: str, cd: float) -> float:
    """How deep the press has squeezed the bed at the next frame (% of the uncalendered top ``h0``),
    as the contacts feel it: after the press turns, no less than where it left the bed."""
    c = 100.0 * (h0 - press_next) / h0
    return c if stage_next == "press" else max(c, min(cd, DETACH_PERCENT))


def softness_record() -> dict:
    """What a model file records of the soft contacts it was chosen with (its ``softness`` entry)."""
    return {"table": [list(r) for r in SOFTNESS], "detach_percent": DETACH_PERCENT, "hold_share": HOLD_SHARE,
            "hold_pull_off_um": HOLD_PULL_OFF_UM}


def softness(c: float) -> tuple[float, dict[str, float], dict[str, float]]:
    """The press wall (um a sphere may sink into the press), the projection's tolerance (the 99th
    percentile) and the median overlap per pair type at compression ``c`` (%), interpolated in
    :data:`SOFTNESS`."""
    at = [float(np.interp(c, _SOFT[:, 0], _SOFT[:, k])) for k in range(1, _SOFT.shape[1])]
    names = ("CBD-CBD", "AM-CBD", "AM-AM")
    return at[0], dict(zip(names, at[1:4])), dict(zip(names, at[4:7]))


def contacts(tolerance, press, stage_next, cd, h0):
    """Each case's press wall, projection tolerance, settling and holding overlaps for this step
    (see :func:`step`): with soft contacts the AM-AM pairs settle while the press presses and the
    CBD pairs are held; else neither (:data:`NO_PAIRS`)."""
    if tolerance != SOFT:
        return [PRESS_WALL_UM] * len(press), [tolerance] * len(press), [NO_PAIRS] * len(press), [NO_PAIRS] * len(press)
    if h0 is None or len(h0) != len(press):
        raise CalbatchError(f"step: soft contacts need each case's uncalendered top (h0), got {h0!r}")
    walls, tables, settle, hold = [], [], [], []
    for h, pr, st, c in zip(h0, press, stage_next, cd):
        wall, table, median = softness(compression(h, pr[2], st, c))
        walls.append(wall)
        tables.append(table)
        settle.append(dict(NO_PAIRS, **{"AM-AM": median["AM-AM"]}) if st == "press" else NO_PAIRS)
        hold.append(dict(NO_PAIRS, **{k: HOLD_SHARE * median[k] for k in ("CBD-CBD", "AM-CBD")}))
    return walls, tables, settle, hold


def features(cases: list[Particles], press: list[tuple[float, float, float]], stage_next: list[str], cd: list[float]):
    """What the network reads of a batch (arguments as :func:`step`), joined: node features (N, 15),
    edge features (E, 9) float32, senders and receivers (E,) int32 (each case's pairs within
    :data:`CUTOFF_UM` both ways, numbered across the batch) and the prior displacement (N, 3) um."""
    if not len(cases) == len(press) == len(stage_next) == len(cd):
        raise CalbatchError(f"step: {len(cases)} cases, {len(press)} press triples, {len(stage_next)} stages and "
                            f"{len(cd)} CDs (one each)")
    bad = [s for s in stage_next if s not in STAGES]
    if bad:
        raise CalbatchError(f"step: unknown stage {bad[0]!r} (expected one of {', '.join(STAGES)})")
    try:
        return _core.particle_step_features(
            [p.centres for p in cases], [p.radii for p in cases], [p.phases for p in cases], _boxes(cases),
            np.asarray(press, dtype=np.float64).reshape(len(cases), 3), np.array([STAGES.index(s) for s in stage_next]),
            np.asarray(cd, dtype=np.float64), cutoff=CUTOFF_UM, z_scale=Z_SCALE_UM, length_scale=LENGTH_SCALE_UM,
            overlap_scale=OVERLAP_SCALE_UM, gap_low=WALL_GAP_UM[0], gap_high=WALL_GAP_UM[1], cd_scale=CD_SCALE,
            prior_scale=OUTPUT_SCALE_UM, top_share=TOP_SHARE,
            stored_scale=STORED_SCALE_UM, stages=len(STAGES), press_stage=STAGES.index("press"), am=AM, cbd=CBD)
    except ValueError as exc:
        raise _refused(cases, exc) from None


def graph(p: Particles, press_now: float, press_next: float, press_prev: float, stage_next: str, cd: float):
    """:func:`features` of one case: the step from ``p`` (press at ``press_now``) to the next frame
    (press at ``press_next``, stage ``stage_next``)."""
    return features([p], [(press_prev, press_now, press_next)], [stage_next], [cd])


def advance(p: Particles, prior: np.ndarray, residual: np.ndarray, press_next: float,
            tolerance: dict[str, float] | None, press_wall: float = PRESS_WALL_UM,
            settle: dict[str, float] = NO_PAIRS, hold: dict[str, float] = NO_PAIRS) -> Particles:
    """The next state: prior + residual (capped at :data:`MAX_RESIDUAL_UM` a sphere), the collector
    and the press (``press_wall`` um soft) as hard walls, overlaps deeper than ``tolerance`` (um per
    pair type) pushed apart, then one sweep taking pairs deeper than ``settle`` (um per pair type)
    back to it, then one pulling the pairs that touched in ``p`` and overlap less than ``hold`` now
    (no more than :data:`HOLD_PULL_OFF_UM` apart) back to it."""
    pairs = None
    if any(np.isfinite(v) for v in hold.values()):
        pairs = touching(*graph(p, 0.0, 0.0, 0.0, "relax", 0.0)[1:4])  # its edges: the press does not enter them
    return _advance([p], prior, residual, [press_next], [press_wall], [tolerance], None, [settle], [hold], pairs)[0]


def _advance(cases, prior, residual, press_next, walls, tolerances, out, settle, hold, pairs) -> list[Particles]:
    if out is not None:
        if len(out) != len(cases):
            raise CalbatchError(f"step: {len(out)} output frames for {len(cases)} cases")
        for p, f in zip(cases, out):
            if np.ndim(f) != 3 or np.shape(f)[1:] != p.grid(1)[1:]:
                raise CalbatchError(f"{p.source}: output frame of shape {np.shape(f)}, the grid is (nz, *{p.grid(1)[1:]})")
    try:
        centres = _core.particle_step_advance(
            [p.centres for p in cases], [p.radii for p in cases], [p.phases for p in cases], _boxes(cases),
            np.asarray(prior, dtype=np.float64), np.asarray(residual, dtype=np.float64),
            np.asarray(press_next, dtype=np.float64), max_residual=MAX_RESIDUAL_UM, collector_wall=COLLECTOR_WALL_UM,
            press_wall=np.asarray(walls, dtype=np.float64),
            tolerance=None if tolerances[0] is None else np.stack([tolerance_table(t) for t in tolerances]),
            iterations=PROJECTION_SWEEPS, settle=np.stack([tolerance_table(t, np.inf) for t in settle]),
            hold=np.stack([tolerance_table(t, np.inf) for t in hold]), pull_off=HOLD_PULL_OFF_UM, contacts=pairs,
            voxel_size=np.array([p.voxel_size for p in cases]), out=out)
    except ValueError as exc:
        raise _refused(cases, exc) from None
    return [replace(p, centres=c) for p, c in zip(cases, centres)]


def _boxes(cases: list[Particles]) -> np.ndarray:
    return np.array([p.box for p in cases], dtype=np.float64).reshape(len(cases), 2)


def _refused(cases: list[Particles], exc: ValueError) -> CalbatchError:
    """The core's refusal as one line naming the case's source."""
    m = re.match(r"case (\d+): (.*)", str(exc))
    if m and int(m[1]) < len(cases):
        return CalbatchError(f"{cases[int(m[1])].source}: {m[2]}")
    return CalbatchError(f"step: {exc}")


def rollout(p0: Particles, schedule: dict, cd: float, residual_of, tolerance: dict[str, float] | str | None = SOFT,
            on_frame=None) -> np.ndarray:
    """Free rollout from ``p0`` through ``schedule`` (:func:`calbatch.electrode.schedule.press_schedule`;
    its first press height is the uncalendered top): ``residual_of(node, edge, snd, rcv)`` -> (n, 3) um
    is the network. Returns the positions of every frame (frames, n, 3); ``on_frame(t, particles)``
    sees each new frame."""
    press, stage = np.asarray(schedule["press_z_um"], float), np.asarray(schedule["phase"]).astype(str)
    frames, p = [p0.centres], p0
    for t in range(len(press) - 1):
        p = step([p], [(press[max(t - 1, 0)], press[t], press[t + 1])], [stage[t + 1]], [cd], residual_of, tolerance,
                 h0=[press[0]])[0]
        frames.append(p.centres)
        if on_frame is not None:
            on_frame(t + 1, p)
    return np.stack(frames)


def onnx_residual(path, workers: int | None = None) -> callable:
    """The network of an exported particle-step file as ``residual_of`` for :func:`step` (see
    :func:`residual_runner`)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return residual_runner(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), workers)


def residual_runner(session, workers: int | None = None) -> callable:
    """``residual_of`` for :func:`step` from an ONNX Runtime session opened on ONE intra-op thread:
    on more, ONNX Runtime's CPU ScatterND (reduction add, the sum over a sphere's pairs in a file
    exported as tf2onnx writes it) races and drops updates (onnxruntime 1.32: 12 runs in 300 wrong on
    one DEM frame's pairs); calbatch's export writes ScatterElements instead, but a file may hold
    either. A joined graph (a batch) is cut instead where no edge crosses into parts of about
    :data:`PART_SPHERES` (a sphere's residual depends on its own graph only), run ``workers`` at a
    time (default: the core's threads)."""
    from concurrent.futures import ThreadPoolExecutor

    names = [i.name for i in session.get_inputs()]
    workers = max(1, workers or _core.max_threads())
    pool = ThreadPoolExecutor(workers) if workers > 1 else None

    def run(node, edge, snd, rcv):
        return session.run(None, dict(zip(names, (node, edge, snd, rcv))))[0].astype(np.float64)

    def residual_of(node, edge, snd, rcv):
        cuts = _cuts(snd, rcv, len(node), PART_SPHERES)
        if not cuts:
            return run(node, edge, snd, rcv)
        part = np.searchsorted(cuts, snd, side="right")  # an edge's part is its sender's
        bounds = [0, *cuts, len(node)]
        args = [(node[a:b], edge[part == k], snd[part == k] - np.int32(a), rcv[part == k] - np.int32(a))
                for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
        return np.concatenate(list(pool.map(lambda x: run(*x), args)) if pool else [run(*x) for x in args])

    return residual_of


def _cuts(snd: np.ndarray, rcv: np.ndarray, n: int, smallest: int) -> list[int]:
    """Node indices c that no edge crosses (none joins a node below c to one at or above it),
    increasing, leaving parts of at least ``smallest`` nodes."""
    lo, hi = np.minimum(snd, rcv), np.maximum(snd, rcv)
    crossing = np.cumsum(np.bincount(lo + 1, minlength=n + 1) - np.bincount(hi + 1, minlength=n + 1))
    cuts = []
    for c in np.flatnonzero(crossing[smallest:n - smallest + 1] == 0) + smallest:
        if c - (cuts[-1] if cuts else 0) >= smallest:
            cuts.append(int(c))
    return cuts


# The reference: the step in numpy, as it was written first. The core's step must equal it bit for
# bit (tests/test_particle_core.py); benchmarks/bench_particle_step.py times the two side by side.

def _reference_graph(p: Particles, press_now: float, press_next: float, press_prev: float, stage_next: str, cd: float):
    ij, delta = neighbours(p, CUTOFF_UM)
    snd = np.concatenate([ij[:, 0], ij[:, 1]]).astype(np.int32)
    rcv = np.concatenate([ij[:, 1], ij[:, 0]]).astype(np.int32)
    dx = np.concatenate([delta, -delta])  # x_receiver - x_sender
    z, r, ph = p.centres[:, 2], p.radii, p.phases
    top = float(np.sort(z + r)[len(z) - max(1, int(len(z) * TOP_SHARE))])
    prior = np.zeros_like(p.centres)
    if stage_next == "press" and press_next < top:
        prior[:, 2] = z * (press_next / min(press_now, top) - 1.0)
    d = np.linalg.norm(dx, axis=1)  # the pairs i -> j first: their distances are the first len(ij)
    am_am = (ph[ij[:, 0]] == AM) & (ph[ij[:, 1]] == AM)
    overlap = (r[ij[:, 0]] + r[ij[:, 1]] - d[:len(ij)])[am_am]
    stored = np.cumsum(np.concatenate([[0.0], overlap[overlap > 0]]))[-1] / len(z) / STORED_SCALE_UM
    stage = np.zeros((len(z), len(STAGES)))
    stage[:, STAGES.index(stage_next)] = 1
    n = len(z)
    node = np.column_stack([z / 40.0, np.clip(press_now - z - r, -1, 4), np.clip(z - r, -1, 4), r / 3, ph == AM,
                            ph == CBD, np.full(n, press_next - press_now), np.full(n, press_now - press_prev), stage,
                            np.full(n, cd / 100), prior[:, 2] / OUTPUT_SCALE_UM, np.full(n, press_now - top),
                            np.full(n, stored)])
    edge = np.column_stack([dx / 3, d / 3, (r[snd] + r[rcv] - d) / 0.2, r[snd] / 3, r[rcv] / 3, ph[snd] == AM,
                            ph[rcv] == AM])
    return node.astype(np.float32), edge.astype(np.float32), snd, rcv, prior


def _reference_advance(p: Particles, prior: np.ndarray, residual: np.ndarray, press_next: float,
                       tolerance: dict[str, float] | None, press_wall: float = PRESS_WALL_UM,
                       settle: dict[str, float] = NO_PAIRS, hold: dict[str, float] = NO_PAIRS,
                       pairs: np.ndarray | None = None) -> Particles:
    size = np.linalg.norm(residual, axis=1, keepdims=True)
    residual = residual * np.minimum(1.0, MAX_RESIDUAL_UM / np.maximum(size, 1e-12))
    centres = p.centres + prior + residual
    centres[:, 2] = np.clip(centres[:, 2], p.radii - COLLECTOR_WALL_UM, press_next - p.radii + press_wall)
    nxt = replace(p, centres=centres)
    if tolerance is not None:
        nxt, _ = project(nxt, press_next + press_wall, tolerance, PROJECTION_SWEEPS)
    if any(np.isfinite(v) for v in settle.values()):
        nxt, _ = project(nxt, press_next + press_wall, settle, 1, average=False)
    if any(np.isfinite(v) for v in hold.values()):
        if pairs is None:
            pairs = touching(*_reference_graph(p, 0.0, 0.0, 0.0, "relax", 0.0)[1:4])
        nxt = _reference_hold(pairs, nxt, hold, press_next + press_wall)
    return nxt


def _reference_hold(ij: np.ndarray, p: Particles, hold: dict[str, float], press_z: float) -> Particles:
    table = tolerance_table(hold, np.inf)
    r, ph, (lx, ly) = p.radii, p.phases, p.box
    bonded = np.isfinite(table[ph[ij[:, 0]], ph[ij[:, 1]]])
    i, j = ij[bonded, 0], ij[bonded, 1]
    x = p.centres

    def wrap(d, length):
        return np.where(d > 0.5 * length, d - length, np.where(d < -0.5 * length, d + length, d))

    d = np.stack([wrap(x[j, 0] - x[i, 0], lx), wrap(x[j, 1] - x[i, 1], ly), x[j, 2] - x[i, 2]], axis=1)
    dist = np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2])
    overlap, target = r[i] + r[j] - dist, table[ph[i], ph[j]]
    held = (dist > 0) & (overlap < target) & (-overlap <= HOLD_PULL_OFF_UM)
    i, j, d, dist, overlap, target = i[held], j[held], d[held], dist[held], overlap[held], target[held]
    wi, wj = 1 / (r[i] * r[i] * r[i]), 1 / (r[j] * r[j] * r[j])
    u = d / dist[:, None]
    shift = np.zeros_like(x)
    np.add.at(shift, i, u * ((target - overlap) * wi / (wi + wj))[:, None])
    np.add.at(shift, j, -(u * ((target - overlap) * wj / (wi + wj))[:, None]))
    count = np.bincount(i, minlength=p.n) + np.bincount(j, minlength=p.n)
    x = x + shift / np.maximum(count, 1)[:, None]
    x[:, 2] = np.maximum(np.minimum(x[:, 2], press_z - r), r)
    x[:, 0] -= lx * np.floor(x[:, 0] / lx)
    x[:, 1] -= ly * np.floor(x[:, 1] / ly)
    return replace(p, centres=x)


def _reference_step(cases: list[Particles], press, stage_next, cd, residual_of, tolerance, h0=None) -> list[Particles]:
    graphs = [_reference_graph(p, now, nxt, prev, st, c) for p, (prev, now, nxt), st, c in zip(cases, press, stage_next, cd)]
    offsets = np.cumsum([0] + [p.n for p in cases])
    residual = residual_of(np.concatenate([g[0] for g in graphs]), np.concatenate([g[1] for g in graphs]),
                           np.concatenate([g[2] + o for g, o in zip(graphs, offsets)]).astype(np.int32),
                           np.concatenate([g[3] + o for g, o in zip(graphs, offsets)]).astype(np.int32))
    walls, tables, settle, hold = contacts(tolerance, press, stage_next, cd, h0)
    return [_reference_advance(p, g[4], residual[a:b], pr[2], t, w, st, ho, touching(*g[1:4]))
            for p, g, a, b, pr, w, t, st, ho in zip(cases, graphs, offsets[:-1], offsets[1:], press, walls, tables,
                                                   settle, hold)]
