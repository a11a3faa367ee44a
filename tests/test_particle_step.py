"""The learned particle step on real DEM particle files: its graph, a few training epochs lowering
the loss, the ONNX export matching Keras, and a free rollout held between the walls."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from calbatch import CalbatchError
from calbatch.electrode.particles import minimum_image, neighbours
from calbatch.electrode.volume import AM
from calbatch.surrogate.particle_step import (
    COLLECTOR_WALL_UM,
    EDGE_FEATURES,
    NODE_FEATURES,
    PRESS_WALL_UM,
    SOFT,
    TOLERANCE_UM,
    graph,
    onnx_residual,
    rollout,
)

ROOT = Path(__file__).resolve().parents[1]
PARTICLES = ROOT / "data/dem/default/particles"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("tensorflow")
    from calbatch.model.particle_data import batch, load_particle_file, sample
    from calbatch.model.particle_train import ParticleOptions, export, train

    out = tmp_path_factory.mktemp("particle_step")
    opts = ParticleOptions(latent=16, rounds=1, epochs=3, batch=2, slab_weight=1.0, ema=0.9, pushforward=1, contacts=SOFT)
    state = train([PARTICLES / "ms1_cd20.h5"], [PARTICLES / "ms2_cd20.h5"], out, opts)
    s = load_particle_file(PARTICLES / "ms2_cd20.h5")
    example = batch([sample(s, 3, np.random.default_rng(0), 0.0)])[:4]
    gap = export(out, opts, out / "step.onnx", example, [PARTICLES / "ms1_cd20.h5"])
    return {"state": state, "gap": gap, "onnx": out / "step.onnx", "series": s, "out": out, "opts": opts}


def test_the_graph_is_every_pair_within_the_cutoff_both_ways():
    from calbatch.model.particle_data import load_particle_file

    s = load_particle_file(PARTICLES / "ms1_cd35.h5")
    node, edge, snd, rcv, prior = graph(s["p"], s["press"][0], s["press"][1], s["press"][0], "press", 35.0)
    ij, _ = neighbours(s["p"], 0.5)
    assert node.shape == (s["p"].n, len(NODE_FEATURES)) and edge.shape == (2 * len(ij), len(EDGE_FEATURES))
    assert set(zip(snd.tolist(), rcv.tolist())) == {*map(tuple, ij.tolist()), *map(tuple, ij[:, ::-1].tolist())}
    # the prior squeezes z only, in proportion to the height, and only while the press goes down
    assert np.all(prior[:, :2] == 0) and np.all(prior[:, 2] <= 0)
    lifted = graph(s["p"], s["press"][0], s["press"][0] + 1, s["press"][0], "release", 35.0)[4]
    assert not lifted.any()
    # every sphere reads what the bed holds: its AM-AM overlap per sphere, more at the press's lowest point
    am = (s["p"].phases[ij[:, 0]] == AM) & (s["p"].phases[ij[:, 1]] == AM)
    d = np.linalg.norm(minimum_image(s["p"].centres[ij[:, 0]] - s["p"].centres[ij[:, 1]], s["p"].box), axis=1)
    overlap = np.clip(s["p"].radii[ij[:, 0]] + s["p"].radii[ij[:, 1]] - d, 0, None)[am]
    assert np.allclose(node[:, -1], overlap.sum() / s["p"].n / 0.1, rtol=1e-5)
    k = int(np.argmin(s["press"]))
    pressed = graph(replace(s["p"], centres=s["pos"][k]), s["press"][k], s["press"][k + 1], s["press"][k - 1], "release", 35.0)[0]
    assert pressed[0, -1] > 2 * node[0, -1]


def test_training_lowers_the_loss_and_resumes(trained):
    log = trained["state"]["log"]
    assert len(log) == 3 and log[-1]["train"] < log[0]["train"] and np.isfinite(log[-1]["val"])
    from calbatch.model.particle_train import train

    again = train([PARTICLES / "ms1_cd20.h5"], [PARTICLES / "ms2_cd20.h5"], trained["out"], trained["opts"])
    assert again["log"] == log  # finished: nothing is run twice


def test_export_matches_keras_and_the_rollout_stays_between_the_walls(trained):
    from calbatch.surrogate.contract import Kind, ModelFile, load_onnx

    session, meta = load_onnx(trained["onnx"])
    model = ModelFile(trained["onnx"], meta, session)
    assert model.kind is Kind.PARTICLES and model.cd_range == (20.0, 20.0) and model.tolerance == SOFT
    assert trained["gap"] < 1e-4
    import onnx

    from calbatch.model.particle_train import TENSORRT_OPS
    assert {n.op_type for n in onnx.load(trained["onnx"]).graph.node} <= TENSORRT_OPS  # no ScatterND with a sum
    s = trained["series"]
    frames = rollout(s["p"], {"press_z_um": s["press"], "phase": s["stage"]}, s["cd"], onnx_residual(trained["onnx"]),
                     TOLERANCE_UM)
    assert frames.shape == s["pos"].shape and np.isfinite(frames).all()
    z, r = frames[..., 2], s["p"].radii
    assert np.all(z >= r - COLLECTOR_WALL_UM - 1e-9) and np.all(z[1:] <= s["press"][1:, None] - r + PRESS_WALL_UM + 1e-9)
    assert replace(s["p"], centres=frames[-1]).voxelize(125).shape == (125, 76, 76)


def test_a_network_that_read_fewer_features_or_rounds_starts_where_it_was(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from calbatch.model.particle_train import ParticleOptions, build, start_from

    opts = ParticleOptions(latent=8, rounds=1)
    rng = np.random.default_rng(0)
    node, edge = rng.normal(size=(5, len(NODE_FEATURES))).astype(np.float32), rng.normal(size=(4, 9)).astype(np.float32)
    snd, rcv = tf.constant([0, 1, 2, 3]), tf.constant([1, 2, 3, 4])
    narrow = build(opts)
    before = narrow(tf.constant(node[:, :-1]), tf.constant(edge), snd, rcv).numpy()
    narrow.save_weights(tmp_path / "narrow.weights.h5")
    wide = build(opts)
    wide(tf.constant(node), tf.constant(edge), snd, rcv)
    start_from(wide, tmp_path / "narrow.weights.h5", opts)
    # the new feature starts at zero weight: whatever it reads, the output is the narrow network's
    assert np.allclose(wide(tf.constant(node), tf.constant(edge), snd, rcv).numpy(), before, atol=1e-6)
    # so does a deeper network: its further rounds start adding nothing
    deep = build(replace(opts, rounds=3))
    deep(tf.constant(node), tf.constant(edge), snd, rcv)
    start_from(deep, tmp_path / "narrow.weights.h5", replace(opts, rounds=3))
    assert np.allclose(deep(tf.constant(node), tf.constant(edge), snd, rcv).numpy(), before, atol=1e-6)
    deep.save_weights(tmp_path / "deep.weights.h5")
    with pytest.raises(CalbatchError, match="3 rounds"):
        start_from(wide, tmp_path / "deep.weights.h5", opts)


def test_the_settling_sweep_takes_am_pairs_back_to_their_median_and_leaves_the_cbd():
    from calbatch.electrode.particles import Particles
    from calbatch.surrogate.particle_step import NO_PAIRS, advance

    # two AM spheres 1.0 um into each other, a CBD sphere 0.5 um into the second
    p = Particles(np.array([[10.0, 10, 10], [15.0, 10, 10], [18.0, 10, 10]]), np.array([3.0, 3.0, 1.0]),
                  np.array([AM, AM, 1], dtype=np.uint8), (30.0, 30.0), 0.4, source="three spheres")
    still = np.zeros((3, 3))
    moved = advance(p, still, still, 40.0, None, settle=dict(NO_PAIRS, **{"AM-AM": 0.3}))
    gap = lambda q, i, j: q.radii[i] + q.radii[j] - np.linalg.norm(q.centres[j] - q.centres[i])  # noqa: E731
    assert gap(moved, 0, 1) == pytest.approx(0.3, abs=1e-12)  # one sweep, back to the settling overlap
    assert np.allclose(moved.centres[2], p.centres[2]) and np.allclose(moved.centres[:, 1:], p.centres[:, 1:])
    assert np.array_equal(advance(p, still, still, 40.0, None).centres, p.centres)  # no settling: as it was


def test_the_hold_pulls_a_cbd_sphere_that_touched_back_and_lets_one_gone_further_go():
    from calbatch.electrode.particles import Particles
    from calbatch.surrogate.particle_step import HOLD_PULL_OFF_UM, NO_PAIRS, advance

    # a CBD sphere touching an AM sphere (0.05 um overlap); the step moves it off along x
    p = Particles(np.array([[10.0, 10, 10], [13.95, 10, 10]]), np.array([3.0, 1.0]), np.array([AM, 1], dtype=np.uint8),
                  (30.0, 30.0), 0.4, source="two spheres")
    hold = dict(NO_PAIRS, **{"AM-CBD": 0.1})
    gap = lambda q: q.radii[0] + q.radii[1] - np.linalg.norm(q.centres[1] - q.centres[0])  # noqa: E731
    for away, held in ((0.2, True), (HOLD_PULL_OFF_UM + 0.2, False)):
        move = np.array([[0.0, 0, 0], [away, 0, 0]])
        moved = advance(p, np.zeros((2, 3)), move, 40.0, None, hold=hold)
        assert gap(moved) == pytest.approx(0.1 if held else 0.05 - away, abs=1e-12), away
    # a pair that did not touch before the step is not held
    apart = replace(p, centres=p.centres + np.array([[0.0, 0, 0], [0.1, 0, 0]]))
    assert gap(advance(apart, np.zeros((2, 3)), np.zeros((2, 3)), 40.0, None, hold=hold)) == pytest.approx(-0.05)


def test_the_contacts_soften_as_the_press_goes_down():
    from calbatch.surrogate.particle_step import DETACH_PERCENT, compression, softness

    deeper = [compression(40.0, z, "press", 50.0) for z in (40.0, 30.0, 20.0)]
    assert deeper == [0.0, 25.0, 50.0]
    walls, tables, medians = zip(*(softness(c) for c in deeper))
    assert walls[0] < walls[1] < walls[2] and all(tables[0][k] < tables[1][k] < tables[2][k] for k in tables[0])
    # the medians (where the AM settles, and the CBD is held) grow too, below the 99th percentiles
    assert all(medians[0][k] < medians[1][k] < medians[2][k] for k in medians[0])
    assert all(m[k] < t[k] for m, t in zip(medians[1:], tables[1:]) for k in m)
    # once the press turns the bed keeps what it held where the press left it (or at its deepest)
    assert compression(40.0, 36.0, "release", 50.0) == DETACH_PERCENT
    assert compression(40.0, 36.0, "release", 20.0) == 20.0
    assert compression(40.0, 24.0, "release", 50.0) == 40.0  # lifting, but still on the bed


def test_a_centred_series_keeps_every_pair_and_loses_only_the_slide():
    from calbatch.model.particle_data import centre, load_particle_file

    s = load_particle_file(PARTICLES / "ms8_cd37.h5")  # its bed slides 2.8 um in one frame of the release
    c = centre(s["pos"], s["p"].box)
    steps = minimum_image(np.diff(s["pos"], axis=0), s["p"].box)[..., :2].mean(axis=1)
    assert np.linalg.norm(steps, axis=1).max() > 2.5
    assert np.abs(minimum_image(np.diff(c, axis=0), s["p"].box)[..., :2].mean(axis=1)).max() < 1e-9
    assert np.all((c[..., :2] >= 0) & (c[..., :2] < np.asarray(s["p"].box)))
    ij, _ = neighbours(s["p"], 0.5)
    for t in (0, len(c) - 1):  # the same electrode: every pair's offset kept
        before = minimum_image(s["pos"][t][ij[:, 1]] - s["pos"][t][ij[:, 0]], s["p"].box)
        assert np.allclose(minimum_image(c[t][ij[:, 1]] - c[t][ij[:, 0]], s["p"].box), before, atol=1e-9)
    assert np.array_equal(load_particle_file(PARTICLES / "ms8_cd37.h5", centred=True)["pos"], c)
