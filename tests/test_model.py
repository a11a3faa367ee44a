"""The model stage on tiny grids: press schedule, windows and split, training, ONNX export, rollout,
and bad inputs (one line on stderr, exit 2). Series are the committed v1 DEM particle frames voxelized at 1.9 um
(16 x 16 x 26 voxels), so every test runs on real DEM motion."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from calbatch.electrode.series import read_series, write_series
from calbatch.errors import CalbatchError

ROOT = Path(__file__).resolve().parents[1]
PARTICLES = ROOT / "data" / "dem" / "v1" / "particles"
VS, NZ = 1.9, 26  # 30.4 um / 1.9 = 16 voxels across; 26 x 1.9 = 49.4 um > the ~47 um electrodes
# what the phase budget matches on these coarse frames (measured 0.88 slices, 1.4 %, 12.8 %)
TOP_TOLERANCE, AM_TOLERANCE, CBD_TOLERANCE = 1.0, 0.02, 0.15  # slices; relative (CBD: 2-5 voxels a sphere)
CASES = ("ms1_cd20", "ms1_cd45", "ms2_cd20", "ms2_cd35", "ms3_cd25", "ms3_cd30", "ms4_cd20")

tf = pytest.importorskip("tensorflow")
pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")


def tiny_series(src: Path, out: Path) -> Path:
    """A real DEM series voxelized on the tiny grid."""
    from calbatch.electrode.voxelize import voxelize_spheres

    s = read_series(src, frames=False)
    box = tuple(float(b) for b in s["attrs"]["box_um"])
    s["frames"] = np.stack([voxelize_spheres(x, s["radii"], s["phases"], box, (NZ, 16, 16), VS) for x in s["positions"]])
    s["attrs"]["voxel_size_um"] = VS
    write_series(out, s)
    return out


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny_series")
    for name in CASES:
        tiny_series(PARTICLES / f"{name}.h5", d / f"{name}.h5")
    return d


@pytest.fixture(scope="module")
def series(series_dir) -> list[Path]:
    return sorted(series_dir.glob("*.h5"))


@pytest.fixture(scope="module")
def trained(series, tmp_path_factory):
    """A calbatch model trained a few steps, and its ONNX export."""
    from calbatch.model.export import export
    from calbatch.model.options import TrainOptions
    from calbatch.model.train import load_trained, train

    out = tmp_path_factory.mktemp("run")
    r = train(series, out / "run", TrainOptions(network={"channels": 8, "layers_coarse": 2}, epochs=2, batch_size=2,
                                                horizon=2, crop=None, max_windows=6, max_val_windows=4, lr=3e-3),
              progress=False)
    model, run = load_trained(out / "run")
    e = export(model, run, out / "model.onnx")
    return {"train": r, "run": out / "run", "onnx": out / "model.onnx", "export": e, "model": model}


@pytest.fixture(scope="module")
def budget(series) -> dict:
    """The phase budget of the tiny series (the planned tops the windows' conditioning carries)."""
    from calbatch.surrogate.budget import fit_series_files

    return fit_series_files(series, VS)


# --- schedule -------------------------------------------------------------------------------------

def test_schedule_matches_every_dem_series():
    from calbatch.electrode.schedule import schedule_of_series

    files = sorted(PARTICLES.glob("*.h5"))
    assert len(files) == 28
    for f in files:
        s = read_series(f, frames=False)
        plan = schedule_of_series(s["attrs"])
        assert plan["n_frames"] == len(s["phase"]), f
        np.testing.assert_allclose(plan["press_z_um"], s["press_z_um"], rtol=0, atol=1e-9)
        np.testing.assert_allclose(plan["time_us"], s["time_us"], rtol=0, atol=1e-9)
        assert list(plan["phase"]) == list(s["phase"]), f


def test_schedule_refuses_bad_values():
    from calbatch.electrode.schedule import press_schedule

    with pytest.raises(CalbatchError, match="cd"):
        press_schedule(95, 40.0)
    with pytest.raises(CalbatchError, match="h0"):
        press_schedule(30, -1.0)


# --- windows and split ----------------------------------------------------------------------------

def test_windows_target_the_next_frame_and_pad_the_start(series, budget):
    from calbatch.model.dataset import read_window, scan
    from calbatch.surrogate.budget import planned_top

    info = scan(series[:1], budget)[0]
    np.testing.assert_array_equal(info.top, planned_top(budget, info.sched, info.cd, info.h0))
    frames = read_series(Path(info.path))["frames"]
    for t, past in ((0, [0, 0, 0]), (1, [0, 0, 1]), (2, [0, 1, 2]), (7, [5, 6, 7])):
        x, c, y = read_window(info, t, horizon=2)
        np.testing.assert_array_equal(x, frames[past])
        np.testing.assert_array_equal(y, frames[[t + 1, t + 2]])
        assert c.shape == (2, 7)
        np.testing.assert_allclose(c[0, 1:3], info.top[[t, t + 1]] / info.h0, rtol=1e-6)  # planned, not the frame's
        assert c[0, 0] == pytest.approx(info.cd / 100)
    with pytest.raises(CalbatchError, match=info.path):
        read_window(info, info.n_frames - 1)


def test_stream_windows_stay_within_their_series(series, budget):
    from calbatch.model.dataset import WindowStream, read_window, scan

    infos = scan(series[:2], budget)
    stream = WindowStream(infos, horizon=1, crop=None, shuffle=False)
    got = list(stream)
    assert len(got) == sum(s.n_frames - 1 for s in infos)
    expected = [read_window(infos[i], t) for i, t in stream.index]
    for (x, c, y), (ex, ec, ey) in zip(got, expected):
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)
        np.testing.assert_array_equal(c, ec)


def test_periodic_crop_wraps(series):
    from calbatch.model.dataset import wrap_crop

    a = np.arange(3 * 4 * 16 * 16).reshape(3, 4, 16, 16)
    (crop,) = wrap_crop([a], 12, 10, (8, 8))
    np.testing.assert_array_equal(crop, np.roll(a, (-12, -10), axis=(-2, -1))[..., :8, :8])


def test_paper_split_has_no_leakage(series):
    from calbatch.model.dataset import WindowStream, scan, split

    infos = scan(series)
    parts = split(infos, val_fraction=0.3, seed=1)
    names = {k: {Path(s.path).stem for s in v} for k, v in parts.items()}
    assert names["test"] == {"ms1_cd45", "ms2_cd35", "ms3_cd25", "ms4_cd20"}
    assert not (names["train"] & names["val"]) and not (names["train"] & names["test"]) and not (names["val"] & names["test"])
    assert names["train"] | names["val"] | names["test"] == set(CASES)
    assert len(names["val"]) == 1
    # every training window comes from a training series
    stream = WindowStream(parts["train"], crop=(8, 8))
    assert {infos_i for infos_i, _ in stream.index} <= set(range(len(parts["train"])))
    # a configured split
    from calbatch.model.dataset import parse_split

    custom = split(infos, parse_split("3;1:20"), val_fraction=0)
    assert {Path(s.path).stem for s in custom["test"]} == {"ms3_cd25", "ms3_cd30", "ms1_cd20"}
    assert not custom["val"]


def test_short_series_is_refused(tmp_path, series):
    from calbatch.model.dataset import scan

    s = read_series(series[0])
    for k in ("frames", "positions", "time_us", "press_z_um", "phase", "wall_time_s"):
        s[k] = s[k][:3]
    short = tmp_path / "short.h5"
    write_series(short, s)
    with pytest.raises(CalbatchError, match="short.h5.*3 frames"):
        scan([short])


# --- training and export --------------------------------------------------------------------------

def _fixed_loss(model, infos):
    from calbatch.model.dataset import read_window
    from calbatch.model.objective import losses, to_model

    loss, _ = losses("calbatch", 0.1)
    vals = []
    for info in infos:
        for t in range(0, info.n_frames - 1, 3):
            x, c, y = read_window(info, t)
            vals.append(float(loss(model([to_model(x[None]), c[None, 0]]), y[None, 0], c[None, 0])))
    return float(np.mean(vals))


def test_a_few_training_steps_lower_the_loss(series, budget, tmp_path):
    import keras

    from calbatch.model.dataset import scan
    from calbatch.model.networks import build
    from calbatch.model.options import TrainOptions
    from calbatch.model.train import load_trained, train
    from calbatch.surrogate.budget import fit_series_files

    infos = scan(series, budget)
    cfg = {"channels": 8, "layers_coarse": 2}
    keras.utils.set_random_seed(0)
    before = _fixed_loss(build("calbatch", **cfg), infos)
    # the untrained model already moves the material with the planned top (a strong start), so the
    # steps are one-step ones, as the fixed loss measures
    r = train(series, tmp_path / "run", TrainOptions(network=cfg, epochs=4, batch_size=2, horizon=1, crop=None,
                                                     max_windows=24, max_val_windows=4, lr=3e-3), progress=False)
    after = _fixed_loss(load_trained(tmp_path / "run", "last")[0], infos)
    assert after < before, (before, after)
    assert r["epoch"] == 4 and len(r["history"]) == 4
    run = json.loads((tmp_path / "run" / "run.json").read_text())  # the budget saw the training series only
    assert run["phase_budget"] == json.loads(json.dumps(fit_series_files(run["train"], VS)))
    # resume continues the same run; a second run into the folder without --resume is refused
    r2 = train(series, tmp_path / "run", TrainOptions(network=cfg, epochs=5, batch_size=2, horizon=2, crop=(8, 8),
                                                      max_windows=4, max_val_windows=4, lr=3e-3),
               resume=True, progress=False)
    assert r2["epoch"] == 5 and len(r2["history"]) == 5
    with pytest.raises(CalbatchError, match="--resume"):
        train(series, tmp_path / "run", TrainOptions(network=cfg, epochs=1), progress=False)


def test_export_matches_keras_and_carries_metadata(trained):
    import onnx

    from calbatch import __version__
    from calbatch.model.export import export, load_onnx

    model = trained["model"]
    rng = np.random.default_rng(0)
    for w in model.weights:  # non-trivial weights: the residual and correction start at zero
        w.assign(rng.normal(0, 0.1, w.shape).astype(np.float32))
    run = json.loads((trained["run"] / "run.json").read_text())
    e = export(model, run, trained["run"] / "random.onnx", check_grid=(26, 16, 16))
    assert e["max_abs_diff"] < 1e-4 and e["max_rel_diff"] < 1e-4, e  # probabilities; raw scores to their scale
    assert trained["export"]["max_abs_diff"] < 1e-4
    proto = onnx.load(str(trained["onnx"]))
    assert proto.opset_import[0].version >= 17
    _, meta = load_onnx(trained["onnx"])
    assert meta["calbatch_version"] == __version__
    assert json.loads(meta["grid_zyx"]) == [NZ, 16, 16]
    assert float(meta["voxel_size_um"]) == VS
    assert json.loads(meta["conditioning"])[0] == "cd_fraction"
    assert json.loads(meta["phase_codes"]) == {"0": "pore", "1": "CBD", "2": "AM", "4": "void"}
    assert json.loads(meta["cd_range_percent"]) == run["cd_range"]
    assert run["cd_range"][0] == 20  # the training series' CDs (ms1/ms2 CD 20, maybe ms3 CD 30)
    assert "press_speed_m_s" in json.loads(meta["schedule"])


# --- rollout --------------------------------------------------------------------------------------

def test_rollout_follows_the_dem_schedule_with_valid_codes(trained, series, tmp_path):
    from calbatch.surrogate.rollout import rollout_file

    src = next(p for p in series if p.stem == "ms4_cd20")
    dem = read_series(src)
    for start_frames in (1, 3):
        out = tmp_path / f"roll{start_frames}.h5"
        r = rollout_file(trained["onnx"], src, 20.0, out, start_frames=start_frames, progress=False)
        got = read_series(out)
        assert r["frames"] == len(dem["frames"]) == len(got["frames"])
        np.testing.assert_allclose(got["press_z_um"], dem["press_z_um"], atol=1e-9)
        assert list(got["phase"]) == list(dem["phase"])
        np.testing.assert_array_equal(got["frames"][:start_frames], dem["frames"][:start_frames])
        frames = got["frames"]
        assert set(np.unique(frames).tolist()) <= {0, 1, 2, 4}
        for f in frames:  # void only above the electrode: whole slices, above every solid voxel
            void_rows = np.flatnonzero((f == 4).any(axis=(1, 2)))
            solid_rows = np.flatnonzero(((f == 1) | (f == 2)).any(axis=(1, 2)))
            assert (f[void_rows] == 4).all()
            assert void_rows.size == 0 or void_rows.min() > solid_rows.max()
        assert got["positions"].shape == (len(frames), 0, 3)
        assert got["attrs"]["cd_extrapolated"] == np.False_


def test_known_void_starts_the_same_slices_above_the_press_in_training_and_rollout():
    """Spheres overlap the press wall: material may sit WALL_OVERLAP_VOXELS slices above a height
    (the planned top in training, the press in a rollout without the budget rule); the training
    mask and the rollout's forced void agree on where the known void starts."""
    from calbatch.electrode.schedule import WALL_OVERLAP_VOXELS
    from calbatch.model.dataset import conditioning
    from calbatch.model.networks import press_mask
    from calbatch.surrogate.step import void_from

    nz, vs, h0 = 40, 0.4, 14.0
    for press in (3.13, 5.0, 7.71, 9.9, 13.95):
        mask = press_mask(tf.constant(conditioning(30.0, h0, vs, press + 1.0, press, "press")[None]), nz).numpy()[0]
        first = void_from(press, vs, nz, WALL_OVERLAP_VOXELS)
        assert first == min(int(np.floor(press / vs - 0.5)) + 1 + WALL_OVERLAP_VOXELS, nz)
        assert mask[first:].all() and not mask[:first].any()


# --- phase budget ---------------------------------------------------------------------------------

def test_budget_follows_the_dem_series_it_was_fitted_on(series, budget):
    """The planned top and AM/CBD volumes of every frame against the DEM's own (tiny 1.9 um grid)."""
    from calbatch.model.dataset import scan
    from calbatch.surrogate.budget import frame_budget, predict, schedule_features

    for info in scan(series):
        true = frame_budget(read_series(Path(info.path))["frames"])
        pred = predict(budget, schedule_features(info.sched, info.cd, info.h0))
        assert np.abs(pred[:, 0] - true[:, 0]).max() <= TOP_TOLERANCE, info.path
        for k, tol in ((1, AM_TOLERANCE), (2, CBD_TOLERANCE)):
            assert np.abs(pred[:, k] * true[0, k] / true[:, k] - 1).max() < tol, (info.path, k)
    with pytest.raises(CalbatchError, match="no training series"):
        from calbatch.surrogate.budget import fit

        fit([], VS)


def test_budget_rule_gives_the_planned_counts_below_the_planned_top(trained, series):
    from calbatch.electrode.schedule import schedule_of_series
    from calbatch.model.export import load_onnx
    from calbatch.surrogate.budget import frame_budget, from_meta, plan
    from calbatch.surrogate.rollout import rollout

    dem = read_series(next(p for p in series if p.stem == "ms4_cd20"))
    a = dem["attrs"]
    h0, cd = float(a["uncalendered_top_um"]), float(a["cd_percent"])
    r = rollout(trained["onnx"], dem["frames"][0], cd, VS, h0=h0, rule="budget", progress=False)
    _, meta = load_onnx(trained["onnx"])
    p = plan(from_meta(meta, "model"), schedule_of_series(a), cd, h0, dem["frames"][0])
    got = frame_budget(r["frames"][1:])
    np.testing.assert_array_equal(got[:, 1:], p["counts"])
    assert (got[:, 0] <= p["first_void"]).all()
    assert len(p["top_um"]) == len(r["frames"])


def test_models_without_a_readable_budget_or_with_another_conditioning_are_refused(trained, series, tmp_path):
    import onnx
    from onnx import helper

    from calbatch.surrogate.rollout import rollout

    vol = read_series(series[0])["frames"][0]
    for name, change, message in (("nobudget", {"phase_budget": None}, "no phase budget"),
                                  ("badbudget", {"phase_budget": "{\"format\": 1}"}, "'phase_budget' is unreadable"),
                                  ("oldcond", {"conditioning": json.dumps(["cd_fraction", "press_z_current_over_h0"])},
                                   "trained on the conditioning")):
        model = onnx.load(str(trained["onnx"]))
        props = {**{q.key: q.value for q in model.metadata_props}, **change}
        helper.set_model_props(model, {k: v for k, v in props.items() if v is not None})
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, str(path))
        with pytest.raises(CalbatchError, match=f"{name}.onnx.*{message}"):
            rollout(path, vol, 20.0, VS, progress=False)


def test_conserve_rule_keeps_phase_volumes():
    from calbatch.surrogate.rules import decide

    rng = np.random.default_rng(3)
    prev = rng.choice(np.array([0, 1, 2], np.uint8), size=(12, 8, 8), p=[0.4, 0.1, 0.5])
    prev[10:] = 4
    scores = rng.random((12, 8, 8, 4))
    out = decide(scores, prev, "conserve", first_void=10)  # above the press (slice 10 up): only void
    assert np.count_nonzero(out == 2) == np.count_nonzero(prev == 2)
    assert np.count_nonzero(out == 1) == np.count_nonzero(prev == 1)
    assert (out[10:] == 4).all()
    np.testing.assert_array_equal(out, decide(scores, prev, "conserve", first_void=10))
    assert (decide(scores, prev, "argmax", first_void=10)[10:] == 4).all()


def test_cd_outside_trained_range_warns_and_flags(trained, series, tmp_path):
    from calbatch.surrogate.rollout import ExtrapolationWarning, rollout

    dem = read_series(next(p for p in series if p.stem == "ms4_cd20"))
    with pytest.warns(ExtrapolationWarning, match="CD 45"):
        r = rollout(trained["onnx"], dem["frames"][0], 45.0, VS, progress=False)
    assert r["attrs"]["cd_extrapolated"] is True


def test_bad_models_and_grids_are_refused(trained, series, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from calbatch.surrogate.rollout import rollout

    vol = read_series(series[0])["frames"][0]
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(CalbatchError, match="corrupt.onnx"):
        rollout(corrupt, vol, 20.0, VS)
    with pytest.raises(CalbatchError, match="missing.onnx"):
        rollout(tmp_path / "missing.onnx", vol, 20.0, VS)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])), str(foreign))
    with pytest.raises(CalbatchError, match="foreign.onnx.*not a calbatch model"):
        rollout(foreign, vol, 20.0, VS)
    with pytest.raises(CalbatchError, match="grid \\[26, 18, 18\\]"):
        rollout(trained["onnx"], np.pad(vol, ((0, 0), (0, 2), (0, 2)), mode="wrap"), 20.0, VS)
    with pytest.raises(CalbatchError, match="voxel size 0.4"):
        rollout(trained["onnx"], vol, 20.0, 0.4)
    with pytest.raises(CalbatchError, match="start frame 0"):
        rollout(trained["onnx"], np.full_like(vol, 3), 20.0, VS)


def test_cli_rollout_and_export(trained, series, tmp_path, capsys):
    from calbatch.cli.model import add_cli

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    src = next(p for p in series if p.stem == "ms2_cd20")
    args = parser.parse_args(["rollout", str(trained["onnx"]), str(src), "--cd", "20", "--out",
                              str(tmp_path / "r.h5"), "--json"])
    args.run(args)
    r = json.loads(capsys.readouterr().out)
    assert r["frames"] == len(read_series(src)["phase"]) and not r["cd_extrapolated"]
    args = parser.parse_args(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")])
    with pytest.raises(CalbatchError, match="nope"):
        args.run(args)


def test_paper_model_trains_exports_and_takes_only_its_grid(series, tmp_path):
    from calbatch.model.export import export
    from calbatch.model.options import TrainOptions
    from calbatch.model.train import load_trained, train
    from calbatch.surrogate.rollout import rollout

    r = train(series, tmp_path / "paper", TrainOptions(kind="paper", network={"filters": 4, "dense": 8}, epochs=1,
                                                       batch_size=2, horizon=1, max_windows=4, max_val_windows=2),
              progress=False)
    assert np.isfinite(r["history"][0]["train_loss"])
    model, run = load_trained(tmp_path / "paper")
    e = export(model, run, tmp_path / "paper.onnx")
    assert e["max_abs_diff"] < 1e-3
    vol = read_series(series[0])["frames"][0]
    with pytest.raises(CalbatchError, match="training grid"):
        rollout(tmp_path / "paper.onnx", vol[:24], 20.0, VS)


def test_command_line_errors_are_one_line(trained, series, tmp_path):
    from conftest import assert_one_line_error, run_cli

    src = next(p for p in series if p.stem == "ms4_cd20")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    assert_one_line_error(run_cli("rollout", corrupt, src, "--cd", 20, "--out", tmp_path / "r.h5"), "corrupt.onnx")
    assert_one_line_error(run_cli("rollout", trained["onnx"], src, "--cd", 20, "--out", tmp_path / "r.h5",
                                  "--voxel-size", 0.4), "its voxels are 1.9 um", "--voxel-size says 0.4")
    s = read_series(src)
    for k in ("frames", "positions", "time_us", "press_z_um", "phase", "wall_time_s"):
        s[k] = s[k][:3]
    write_series(tmp_path / "short.h5", s)
    assert_one_line_error(run_cli("train", tmp_path / "short.h5", "--out", tmp_path / "run"), "short.h5", "3 frames")


def test_train_and_tune_flags_are_the_options_fields():
    """The flags come from the options dataclasses: no flag given, the defaults are theirs."""
    from dataclasses import fields

    from calbatch.cli.model import add_cli
    from calbatch.cli.output import options_from
    from calbatch.model.options import NETWORKS, CalbatchNetwork, TrainOptions, TuneOptions, flagged

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "a.h5", "--out", "r"])
    assert options_from(args, TrainOptions) == TrainOptions()
    assert {f.name: getattr(args, f.name) for f in flagged(CalbatchNetwork)} == \
        {f.name: f.default for f in fields(CalbatchNetwork) if f.name in vars(args)}
    args = parser.parse_args(["train", "a.h5", "--out", "r", "--layers", "3", "--crop", "none", "--model", "paper",
                              "--lr", "0.002"])
    assert (args.layers_coarse, args.kind) == (3, "paper")
    assert options_from(args, TrainOptions) == TrainOptions(kind="paper", crop=None, lr=0.002)
    assert options_from(parser.parse_args(["tune", "a.h5", "--out", "s"]), TuneOptions) == TuneOptions()
    assert set(NETWORKS) == {"calbatch", "paper"}
