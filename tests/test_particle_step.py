"""The learned particle step on real DEM particle files: its graph, a few training epochs lowering
the loss, the ONNX export matching Keras, and a free rollout held between the walls."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from calbatch.electrode.particles import neighbours
from calbatch.surrogate.particle_step import (
    COLLECTOR_WALL_UM,
    EDGE_FEATURES,
    NODE_FEATURES,
    PRESS_WALL_UM,
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
    opts = ParticleOptions(latent=16, rounds=1, epochs=3, batch=2)
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
    assert model.kind is Kind.PARTICLES and model.cd_range == (20.0, 20.0) and model.tolerance == TOLERANCE_UM
    assert trained["gap"] < 1e-4
    s = trained["series"]
    frames = rollout(s["p"], {"press_z_um": s["press"], "phase": s["stage"]}, s["cd"], onnx_residual(trained["onnx"]),
                     TOLERANCE_UM)
    assert frames.shape == s["pos"].shape and np.isfinite(frames).all()
    z, r = frames[..., 2], s["p"].radii
    assert np.all(z >= r - COLLECTOR_WALL_UM - 1e-9) and np.all(z[1:] <= s["press"][1:, None] - r + PRESS_WALL_UM + 1e-9)
    assert replace(s["p"], centres=frames[-1]).voxelize(125).shape == (125, 76, 76)
