"""The core's particle step against its numpy reference (calbatch.surrogate.particle_step's
``_reference_*``), bit for bit: the network's inputs, the positions after a step, a free rollout
with the shipped network and its voxel frames, a batch against its cases one by one."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from calbatch.electrode.particles import checked, minimum_image, neighbours
from calbatch.errors import CalbatchError
from calbatch.model.particle_data import load_particle_file
from calbatch.surrogate import particle_step as ps

ROOT = Path(__file__).resolve().parents[1]
PARTICLES = ROOT / "data/dem/default/particles"
MODEL = ROOT / "python/calbatch/data/model.onnx"
TOLERANCE = {"CBD-CBD": 0.5, "AM-CBD": 0.7, "AM-AM": 1.3}
NZ = 125


def same(a, b) -> bool:
    """Equal bit for bit (dtype, shape and every bit: -0.0 is not 0.0)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def tiny(seed: int):
    """A few dozen spheres in a 9 x 8 um box, periodic in x and y, many near its sides, pressed."""
    rng = np.random.default_rng(seed)
    n = 40
    radii = np.where(rng.random(n) < 0.3, rng.uniform(1.0, 1.6, n), rng.uniform(0.4, 0.9, n))
    phases = np.where(radii > 0.95, 2, 1)
    centres = np.column_stack([rng.uniform(-0.5, 9.5, n), rng.uniform(-0.3, 8.3, n), radii + rng.uniform(0, 6, n)])
    return checked(centres, radii, phases, (9.0, 8.0), 0.4, f"tiny{seed}")


def series(name: str) -> dict:
    return load_particle_file(PARTICLES / f"{name}.h5")


@pytest.mark.parametrize("stage,press", [("press", (8.0, 7.6, 7.1)), ("press", (12.0, 11.0, 10.0)),
                                         ("release", (8.0, 8.0, 8.4)), ("relax", (8.4, 8.4, 8.4))])
def test_features_of_a_tiny_periodic_system_equal_numpy(stage, press):
    p = tiny(1)
    got = ps.graph(p, press[1], press[2], press[0], stage, 33.0)
    want = ps._reference_graph(p, press[1], press[2], press[0], stage, 33.0)
    assert all(same(g, w) for g, w in zip(got, want))
    node, edge, snd, rcv, prior = got
    raw = p.centres[rcv, :2] - p.centres[snd, :2]
    assert (np.abs(raw - edge[:, :2] * 3) > 6).any()  # pairs across the periodic sides are among them
    assert prior[:, 2].any() == (stage == "press" and press[2] < np.max(p.centres[:, 2] + p.radii))


def test_features_and_positions_of_a_dem_frame_equal_numpy():
    s = series("ms4_cd35")
    rng = np.random.default_rng(0)
    for t in (0, int(np.argmin(s["press"])) - 1, len(s["press"]) - 2):
        p = replace(s["p"], centres=s["pos"][t])
        press = (s["press"][max(t - 1, 0)], s["press"][t], s["press"][t + 1])
        args = (p, press[1], press[2], press[0], s["stage"][t + 1], s["cd"])
        got, want = ps.graph(*args), ps._reference_graph(*args)
        assert all(same(g, w) for g, w in zip(got, want))
        # residuals beyond the cap and past both walls among them
        residual = rng.normal(0, 1.0, (p.n, 3)) * np.where(rng.random((p.n, 1)) < 0.1, 4.0, 1.0)
        soft_wall, table, median = ps.softness(37.0)
        settle = dict(ps.NO_PAIRS, **{"AM-AM": median["AM-AM"]})
        hold = dict(ps.NO_PAIRS, **{k: median[k] for k in ("CBD-CBD", "AM-CBD")})
        for args in ((TOLERANCE, ps.PRESS_WALL_UM), (None, ps.PRESS_WALL_UM), (table, soft_wall, settle, hold)):
            a = ps.advance(p, got[4], residual, press[2], *args)
            b = ps._reference_advance(p, want[4], residual, press[2], *args)
            assert same(a.centres, b.centres)


def test_a_free_rollout_with_the_shipped_network_equals_the_python_loop_frame_for_frame():
    s = series("ms2_cd45")
    residual_of = ps.onnx_residual(MODEL)
    press, stage = s["press"], s["stage"]
    core, ref = s["p"], s["p"]
    frame = np.empty(core.grid(NZ), dtype=np.uint8)
    for t in range(6):
        args = ([(press[max(t - 1, 0)], press[t], press[t + 1])], [stage[t + 1]], [s["cd"]], residual_of, ps.SOFT)
        (core,) = ps.step([core], *args, out=[frame], h0=[press[0]])
        (ref,) = ps._reference_step([ref], *args, h0=[press[0]])
        assert same(core.centres, ref.centres) and same(frame, ref.voxelize(NZ)), f"step {t}"
    assert not np.array_equal(core.centres, s["p"].centres)


def test_a_batch_of_three_equals_three_single_steps():
    cases, press, stages, cds, h0 = [], [], [], [], []
    for name, t in (("ms1_cd20", 4), ("ms3_cd50", 17), ("ms6_cd47.4", 22)):
        s = series(name)
        t = min(t, len(s["press"]) - 2)
        cases.append(replace(s["p"], centres=s["pos"][t]))
        press.append((s["press"][max(t - 1, 0)], s["press"][t], s["press"][t + 1]))
        stages.append(s["stage"][t + 1])
        cds.append(s["cd"])
        h0.append(s["press"][0])
    assert len(set(stages)) > 1
    # the network runs the joined graph in parts cut where no edge crosses: here its three cases
    residual_of = ps.onnx_residual(MODEL, workers=2)
    graph = ps.features(cases, press, stages, cds)[:4]
    assert ps._cuts(graph[2], graph[3], len(graph[0]), ps.PART_SPHERES) == [cases[0].n, cases[0].n + cases[1].n]
    frames = [np.empty(p.grid(NZ), dtype=np.uint8) for p in cases]
    batch = ps.step(cases, press, stages, cds, residual_of, ps.SOFT, out=frames, h0=h0)
    ref = ps._reference_step(cases, press, stages, cds, residual_of, ps.SOFT, h0=h0)
    for k in range(3):
        one = np.empty_like(frames[k])
        (single,) = ps.step([cases[k]], [press[k]], [stages[k]], [cds[k]], residual_of, ps.SOFT, out=[one], h0=[h0[k]])
        assert same(batch[k].centres, single.centres) and same(frames[k], one)
        assert same(batch[k].centres, ref[k].centres) and same(frames[k], ref[k].voxelize(NZ))


def test_bad_inputs_are_one_line_refusals():
    p = tiny(2)
    node, edge, snd, rcv, prior = ps.graph(p, 8.6, 8.1, 9.0, "press", 30.0)
    residual = np.zeros((p.n, 3))
    residual[3] = np.nan
    with pytest.raises(CalbatchError, match="tiny2: a position is not finite"):
        ps.advance(p, prior, residual, 8.1, TOLERANCE)
    with pytest.raises(CalbatchError, match="tiny2: output frame of shape"):
        ps.step([p], [(9.0, 8.6, 8.1)], ["press"], [30.0], lambda *_: np.zeros((p.n, 3)), None,
                out=[np.empty((NZ, 5, 5), np.uint8)])
    with pytest.raises(CalbatchError, match="unknown stage 'squeeze'"):
        ps.graph(p, 8.6, 8.1, 9.0, "squeeze", 30.0)
    with pytest.raises(CalbatchError, match="tiny2: the pair reach"):
        ps.graph(replace(p, box=(4.0, 4.0)), 8.6, 8.1, 9.0, "press", 30.0)


def test_the_hold_takes_its_bonds_from_the_step_graph_and_refuses_pairs_it_cannot_place():
    """The hold's bonds are the pairs the features found touching (no second search): the core
    refuses a hold without them and pairs that cross cases or leave batch order."""
    from calbatch import _core

    p, q = tiny(3), tiny(4)
    _, edge, snd, rcv, _ = ps.features([p, q], [(9.0, 8.6, 8.1)] * 2, ["press"] * 2, [30.0] * 2)
    pairs = ps.touching(edge, snd, rcv)
    assert len(pairs) and np.all(pairs[:, 0] < pairs[:, 1])
    i, j = pairs[pairs[:, 1] < p.n].T  # case p's: each overlaps, and every overlapping pair is one
    d = np.linalg.norm(minimum_image(p.centres[j] - p.centres[i], p.box), axis=1)
    assert np.all(d < p.radii[i] + p.radii[j])
    ij, delta = neighbours(p)
    assert len(i) == np.sum(np.linalg.norm(delta, axis=1) < p.radii[ij[:, 0]] + p.radii[ij[:, 1]])
    hold = np.full((2, 3, 3), np.inf)
    hold[:, 1, 1] = 0.1
    args = dict(max_residual=2.0, collector_wall=0.2, press_wall=np.array([1.5, 1.5]), tolerance=None, iterations=0,
                hold=hold, pull_off=0.3, voxel_size=np.array([0.4, 0.4]))
    still = [np.zeros((p.n + q.n, 3))] * 2
    call = ([p.centres, q.centres], [p.radii, q.radii], [p.phases, q.phases], np.array([p.box, q.box]), *still,
            np.array([8.1, 8.1]))
    assert len(_core.particle_step_advance(*call, contacts=pairs, **args)) == 2
    with pytest.raises(ValueError, match="a hold needs the contacts"):
        _core.particle_step_advance(*call, **args)
    with pytest.raises(ValueError, match="contacts must pair the spheres of one case"):
        _core.particle_step_advance(*call, contacts=np.array([[0, p.n]], np.int32), **args)
    with pytest.raises(ValueError, match="contacts must pair the spheres of one case"):
        _core.particle_step_advance(*call, contacts=pairs[::-1].copy(), **args)
