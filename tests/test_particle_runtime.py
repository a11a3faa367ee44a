"""A particle model through the commands a frame model runs in: rollout (and its particle file),
screen, evaluate's particle view, the Python API, and the bad inputs that are one line, exit 2,
nothing written. The model is the shipped particle step; the electrodes are the example's pack
and the DEM's own series (CD 20: 15 frames, a second or two a rollout)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from calbatch.errors import CalbatchError
from calbatch.surrogate.particle_step import SOFT
from conftest import assert_one_line_error, particle_volume, run_cli

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "python" / "calbatch" / "data" / "model.onnx"
FRAME_MODEL = ROOT / "python" / "calbatch" / "data" / "frame_model.onnx"
PARTICLES = ROOT / "data" / "dem" / "default" / "particles"


def model_with(path: Path, source: Path = MODEL, **meta) -> Path:
    """A copy of ``source`` with metadata entries replaced."""
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(source))
    entries = {p.key: p.value for p in proto.metadata_props}
    entries.update(meta)
    del proto.metadata_props[:]
    for k, v in entries.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))
    return path


def revoxelized(name: str, out: Path) -> Path:
    from calbatch.dem.calender import revoxelize

    revoxelize([PARTICLES / f"{name}.h5"], out)
    return out


@pytest.fixture(scope="module")
def series20(tmp_path_factory) -> Path:
    """The DEM's series of the example electrode at CD 20, with frames."""
    return revoxelized("ms1_cd20", tmp_path_factory.mktemp("series") / "ms1_cd20.h5")


def test_a_particle_model_opens_through_the_frame_models_door():
    from calbatch import Predictor
    from calbatch.surrogate.contract import Kind
    from calbatch.surrogate.particle_stepper import ParticleStepper
    from calbatch.surrogate.step import Stepper

    s, p = Stepper(MODEL), Predictor(MODEL)
    assert type(s) is ParticleStepper and isinstance(p, Predictor) and isinstance(p, ParticleStepper)
    assert s.model.kind is Kind.PARTICLES and s.model.cd_range == (20.0, 50.0)
    assert s.tolerance == SOFT  # the walls and the projection follow the press
    assert type(Predictor(FRAME_MODEL)) is Predictor and not Stepper(FRAME_MODEL).steps_particles


def test_rollout_end_to_end_with_its_particle_file(tmp_path):
    """From the example electrode (its pack's particles, exactly) through the CLI; the particle
    file revoxelizes to the very frames of the series."""
    from calbatch.data import example_pack_path
    from calbatch.dem.calender import revoxelize
    from calbatch.electrode.particles import particles_of
    from calbatch.electrode.series import read_series

    proc = run_cli("rollout", MODEL, "example", "--cd", "20", "--out", tmp_path / "r.h5",
                   "--particles-out", tmp_path / "p.h5", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "decomposition" not in proc.stderr  # the DEM's own particles: nothing to say
    r = json.loads(proc.stdout)
    assert r["frames"] == 15 and r["decision_rule"] == "particle step" and r["particles_out"] == str(tmp_path / "p.h5")
    s, p = read_series(tmp_path / "r.h5"), read_series(tmp_path / "p.h5")
    assert "frames" not in p and p["positions"].shape == (15, 1063, 3) and s["positions"].shape == (15, 1063, 3)
    assert np.array_equal(p["positions"], s["positions"]) and np.array_equal(p["press_z_um"], s["press_z_um"])
    pack = particles_of(example_pack_path())
    assert np.array_equal(s["positions"][0], pack.centres.astype(np.float32))
    assert np.array_equal(p["radii"], pack.radii.astype(np.float32)) and np.array_equal(p["phases"], pack.phases)
    assert p["attrs"]["model_kind"] == "particles" and p["attrs"]["cd_percent"] == 20
    # the particles moved, sub-voxel and in 3-D, and the press went down
    moved = np.abs(s["positions"][-1] - s["positions"][0])
    assert np.all(moved.max(axis=0) > 0.1) and s["press_z_um"].min() < s["press_z_um"][0]
    revoxelize([tmp_path / "p.h5"], tmp_path / "again.h5")
    assert np.array_equal(read_series(tmp_path / "again.h5")["frames"], s["frames"])


def test_rollout_from_voxels_decomposes_and_says_how_faithfully(tmp_path):
    np.save(tmp_path / "e.npy", particle_volume((32, 24, 24)))
    proc = run_cli("rollout", MODEL, tmp_path / "e.npy", "--cd", "30", "--out", tmp_path / "r.h5")
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if "decomposition" in x]
    assert "e.npy" in line and "re-voxelized R2" in line and "contact areas" in line
    from calbatch.electrode.series import read_series

    s = read_series(tmp_path / "r.h5")
    assert s["frames"].shape[1:] == (32, 24, 24) and np.array_equal(s["frames"][0], np.load(tmp_path / "e.npy"))
    assert s["attrs"]["start_particles"].startswith("e.npy") or "e.npy" in s["attrs"]["start_particles"]


def test_a_batch_is_one_network_call_per_step_and_matches_single_cases():
    from calbatch import Predictor
    from calbatch.data import example_volume_path
    from calbatch.electrode.volume import read_volume

    p = Predictor(MODEL, batch_size=2)
    v, src = read_volume(example_volume_path()), p.particles_of(example_volume_path())
    calls, network = [], p.residual

    def counted(*args):
        calls.append(len(args[0]))
        return network(*args)

    p.residual = counted
    both = p.cases([v, v], [20.0, 20.0], particles=[src, src])
    assert len(calls) == both[0].n_frames - 1 and set(calls) == {2 * 1063}
    alone = Predictor(MODEL).cases([v], [20.0], particles=[src])[0]
    from calbatch.evaluate.scores import particle_drift

    for c in both:  # ONNX Runtime's sums are not bit-equal across batch sizes; the projection amplifies it a little
        drift = particle_drift(c.positions, alone.positions, src.particles.box)
        assert max(drift["median_um"]) < 0.02 and max(drift["p90_um"]) < 0.1, drift  # um: a fraction of a voxel
        assert np.mean(c.frames != alone.frames) < 1e-3


@pytest.mark.mpi
def test_screen_of_a_couple_of_cases(tmp_path):
    cases = tmp_path / "cases.yaml"
    cases.write_text(f"electrodes:\n  - example\n  - {ROOT / 'data/dem/default/packs/ms2.h5'}\ncds: [20, 22.5]\n"
                     "fick:\n  enabled: false\nkeep:\n  series: true\nbatch_size: 2\n")
    proc = run_cli("screen", cases, "--model", MODEL, "--out", tmp_path / "out", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = r["rows"] if isinstance(r, dict) else r
    assert len(rows) == 4 and all(row["status"] == "ok" for row in rows)
    from calbatch.electrode.series import read_series

    s = read_series(tmp_path / "out" / "series" / "ms2@cd22.5.h5")
    assert s["attrs"]["decision_rule"] == "particle step" and s["positions"].shape[1] == 1063


def test_optimize_with_a_particle_model():
    proc = run_cli("optimize", "--porosity", "0.31", "--model", MODEL, "--grid", "2", "--xtol", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["model"] == str(MODEL) and r["electrode"] == "example"
    lo, hi = r["reachable"]["porosity"]
    assert lo < 0.31 < hi and abs(r["answer"]["residual"]) < hi - lo


def test_particle_drift_is_the_minimum_image_distance():
    from calbatch.evaluate.scores import particle_drift

    truth = np.zeros((2, 4, 3))
    pred = truth.copy()
    pred[1] = [[9.5, 0, 0], [0, 0.5, 0], [3, 4, 0], [0, 0, 2]]  # 9.5 in a 10 um box is 0.5 away
    d = particle_drift(pred, truth, (10.0, 10.0))
    assert d["median_um"] == [0.0, pytest.approx(1.25)] and d["final_p90_um"] == pytest.approx(2 + 0.7 * 3)
    assert d["final_median_um"] == pytest.approx(1.25)
    # a bed slid as a whole (across the box's side) drifts by its slide, and aligned by nothing
    slid = truth + [[4.0, -3.0, 0.0]]
    slid[1, 1, 0] += 10.0  # across the box's side: the same place
    slid[1, 2, 2] += 2.0  # and one particle moved on its own
    d = particle_drift(slid, truth, (10.0, 10.0))
    assert d["final_median_um"] == pytest.approx(5.0) and d["slide_um"] == [pytest.approx(5.0)] * 2
    assert d["aligned_median_um"] == [0.0, 0.0] and d["final_aligned_p90_um"] == pytest.approx(0.7 * 2)


def test_evaluate_reports_the_drift_beside_the_twin(tmp_path, series20):
    """The drift in the report is the distance of the free rollout's particles (and the twin's)
    from the DEM's, computed here by hand."""
    from calbatch import Predictor
    from calbatch.electrode.series import read_series

    twin = tmp_path / "twin.h5"
    shutil.copy(series20, twin)  # a twin of its own series drifts by nothing
    proc = run_cli("evaluate", MODEL, series20, "--twin", twin, "--no-fick", "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    (rep,) = r["series"]
    dem = read_series(series20)
    p = Predictor(MODEL)
    case = p.cases([dem["frames"][0]], [20.0], [dem["attrs"]["uncalendered_top_um"]],
                   particles=[p.particles_of(series20)])[0]
    box = np.asarray(dem["attrs"]["box_um"])
    for t in (1, 7, 14):
        d = case.positions[t].astype(float) - dem["positions"][t]
        d[:, :2] -= box * np.round(d[:, :2] / box)
        dist = np.sqrt((d ** 2).sum(axis=1))
        assert rep["particles"]["free_from_frame0"]["median_um"][t] == pytest.approx(np.median(dist), abs=1e-6)
        assert rep["particles"]["free_from_frame0"]["p90_um"][t] == pytest.approx(np.percentile(dist, 90), abs=1e-6)
    assert rep["particles"]["twin"]["final_median_um"] == 0 and rep["particles"]["free_from_frame0"]["median_um"][0] == 0
    # R2 with the slide taken out: the frame rendered from the particles moved back by their mean offset
    assert rep["particles"]["twin"]["aligned_r2"] == [1.0] * (len(dem["frames"]) - 1)
    from calbatch.electrode.metrics import compare
    from calbatch.electrode.particles import particles_of

    t = len(dem["frames"]) - 1
    moved = case.positions[t].astype(float)
    d = moved - dem["positions"][t]
    d[:, :2] -= box * np.round(d[:, :2] / box)
    moved[:, :2] -= d[:, :2].mean(axis=0)
    back = replace(particles_of(series20), centres=moved).voxelize(dem["frames"].shape[1])
    assert rep["particles"]["free_from_frame0"]["aligned_r2"][-1] == pytest.approx(compare(dem["frames"][t], back)["r2"])
    assert r["particle_drift"]["free_from_frame0"]["final_median_um"] == rep["particles"]["free_from_frame0"]["final_median_um"]
    assert "particle drift from the DEM" in run_cli("evaluate", MODEL, series20, "--no-fick", "--quiet").stdout


# --- bad inputs: one line, exit 2, nothing written ---------------------------------------------------

def bad_pack(tmp_path: Path, change) -> Path:
    import h5py

    from calbatch.data import example_pack_path

    path = tmp_path / "pack.h5"
    shutil.copy(example_pack_path(), path)
    with h5py.File(path, "r+") as f:
        change(f["particles"])
    return path


def _truncate_radii(g):
    radii = g["radii"][:-1]
    del g["radii"]
    g["radii"] = radii


def _nan_position(g):
    pos = g["positions"][:]
    pos[7, 2] = np.nan
    g["positions"][...] = pos


@pytest.mark.parametrize("change, fragment", [(_truncate_radii, "/particles/radii has shape (1062,)"),
                                              (_nan_position, "particle 7 has a non-finite position")])
def test_a_bad_particle_file_is_one_line(tmp_path, change, fragment):
    pack = bad_pack(tmp_path, change)
    proc = run_cli("rollout", MODEL, f"{pack}:/volume", "--cd", "20", "--out", tmp_path / "r.h5")
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "r.h5").exists()


def test_a_model_of_the_other_kind_is_one_line(tmp_path, series20):
    proc = run_cli("rollout", FRAME_MODEL, "example", "--cd", "20", "--out", tmp_path / "r.h5",
                   "--particles-out", tmp_path / "p.h5")
    assert_one_line_error(proc, "--particles-out", "moves no particles")
    assert not list(tmp_path.iterdir())
    # a particle model where only a frame model's backends would do
    from calbatch import Predictor

    with pytest.raises(CalbatchError, match="runs on ONNX Runtime's CPU"):
        Predictor(MODEL, backend="ort-cuda")
    # a file whose kind and inputs disagree, or whose graph is not calbatch's
    for name, meta, fragment in (("kind.onnx", {"kind": "particles"}, "are not a particles model's"),
                                 ("cut.onnx", {"cutoff_um": "0.7"}, "'cutoff_um' 0.7"),
                                 ("feat.onnx", {"node_features": json.dumps(["z"])}, "'node_features'"),
                                 ("tol.onnx", {"tolerance_um": json.dumps({"AM-AM": 1})}, "'tolerance_um'"),
                                 ("soft.onnx", {"softness": json.dumps({"table": [[0, 1, 1, 1, 1]], "detach_percent": 32.0})},
                                  "'softness'")):
        bad = model_with(tmp_path / name, FRAME_MODEL if name == "kind.onnx" else MODEL, **meta)
        proc = run_cli("rollout", bad, "example", "--cd", "20", "--out", tmp_path / "r.h5")
        assert_one_line_error(proc, fragment)
    assert not (tmp_path / "r.h5").exists()
    # evaluate needs series holding their particles for a particle model
    from calbatch.electrode.series import read_series, write_series

    s = read_series(series20)
    s.update(positions=np.zeros((len(s["frames"]), 0, 3), np.float32), radii=np.zeros(0), phases=np.zeros(0))
    write_series(tmp_path / "bare.h5", s)
    proc = run_cli("evaluate", MODEL, tmp_path / "bare.h5", "--no-fick", "--out", tmp_path / "ev")
    assert_one_line_error(proc, "holds no particles")
    assert not (tmp_path / "ev").exists()


def test_frame_models_ignore_particles():
    """The frame model's door takes the same arguments and steps from the voxels alone."""
    from calbatch import Predictor
    from calbatch.data import example_volume_path
    from calbatch.electrode.volume import read_volume

    p = Predictor(FRAME_MODEL)
    v = read_volume(example_volume_path())
    assert p.particles_of(example_volume_path()) is None
    a = p.cases([v], [20.0], series=False)[0]
    b = p.cases([v], [20.0], series=False, particles=[None])[0]
    assert np.array_equal(a.final, b.final)
