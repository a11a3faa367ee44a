"""``calbatch evaluate`` and ``calbatch tune`` on tiny grids (the real v1 DEM series of test_model,
voxelized at 1.9 um): the metrics match the kernels, the baselines and the twin are scored alike,
export carries the training porosity, the report and plots are written, bad input is one line."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from calbatch.electrode.series import read_series, write_series
from calbatch.errors import CalbatchError
from conftest import assert_one_line_error, run_cli
from test_model import CASES, PARTICLES, VS, tiny_series

tf = pytest.importorskip("tensorflow")
pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("tiny_series")
    return [tiny_series(PARTICLES / f"{name}.h5", d / f"{name}.h5") for name in CASES]


@pytest.fixture(scope="module")
def trained(series, tmp_path_factory):
    """A calbatch model trained a few steps (train split: CD 20 and 30 series), exported."""
    from calbatch.model.export import export
    from calbatch.model.options import TrainOptions
    from calbatch.model.train import load_trained, train

    out = tmp_path_factory.mktemp("run")
    train(series, out / "run", TrainOptions(network={"channels": 8, "layers_coarse": 2}, epochs=1, batch_size=2,
                                            horizon=2, crop=None, max_windows=6, max_val_windows=4, lr=3e-3),
          progress=False)
    model, run = load_trained(out / "run")
    e = export(model, run, out / "model.onnx")
    return {"run": run, "onnx": out / "model.onnx", "export": e}


def pick(series, stem: str) -> Path:
    return next(p for p in series if p.stem == stem)


def with_changes(src: Path, out: Path, frames: int | None = None, **attrs) -> Path:
    """A copy of a series with its first ``frames`` frames and some attributes replaced."""
    s = read_series(src)
    if frames is not None:
        for k in ("frames", "positions", "time_us", "press_z_um", "phase", "wall_time_s"):
            s[k] = s[k][:frames]
    s["attrs"].update(attrs)
    write_series(out, s)
    return out


# --- export's training porosity -------------------------------------------------------------------

def test_export_carries_the_training_porosity_per_cd(trained):
    from calbatch.electrode.metrics import measure
    from calbatch.model.export import load_onnx

    _, meta = load_onnx(trained["onnx"])
    table = json.loads(meta["training_final_porosity_by_cd"])
    expected: dict[str, list[float]] = {}
    for p in trained["run"]["train"]:
        s = read_series(Path(p))
        expected.setdefault(f"{float(s['attrs']['cd_percent']):g}", []).append(measure(s["frames"][-1], VS)["porosity"])
    assert set(table) == set(expected) and table
    for cd, values in expected.items():
        assert table[cd]["n"] == len(values)
        assert table[cd]["mean"] == pytest.approx(np.mean(values), rel=1e-12)
    assert trained["export"]["training_final_porosity_by_cd"] == table


# --- the metrics ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def report(trained, series):
    from calbatch.evaluate.run import evaluate

    return evaluate(trained["onnx"], [pick(series, "ms4_cd20")], fick=False, progress=False)


def test_evaluate_metrics_match_the_kernels(trained, series, report):
    from calbatch.electrode.metrics import compare, measure
    from calbatch.surrogate.rollout import rollout

    src = pick(series, "ms4_cd20")
    dem = read_series(src)
    a, frames = dem["attrs"], dem["frames"]
    r = report["series"][0]
    assert set(r["passes"]) == {"free_from_frame0", "free_from_3_frames", "teacher_forced", "persistence", "press_affine"}
    assert r["cd_extrapolated"] is False and r["frames"] == len(frames)
    free = rollout(trained["onnx"], frames[0], 20.0, VS, h0=float(a["uncalendered_top_um"]),
                   speed=float(a["press_speed_m_s"]), frame_interval_us=float(a["frame_interval_us"]),
                   dt=float(a["timestep_us"]), progress=False)["frames"]
    p = r["passes"]["free_from_frame0"]
    for t in range(len(frames)):
        row, c = p["frames"][t], compare(frames[t], free[t])
        assert (row["mse"], row["mae"], row["r2"]) == (c["mse"], c["mae"], c["r2"])
        m, md = measure(free[t], VS), measure(frames[t], VS)
        for code, name in ((0, "pore"), (1, "CBD"), (2, "AM")):
            both = np.count_nonzero((frames[t] == code) & (free[t] == code))
            either = np.count_nonzero((frames[t] == code) | (free[t] == code))
            assert row["iou"][name] == pytest.approx(both / either if either else 1.0)
            assert row["volume_um3"][name] == pytest.approx(m["counts"][name] * VS**3)
            assert r["dem"]["frames"][t]["volume_um3"][name] == pytest.approx(md["counts"][name] * VS**3)
        assert row["thickness_voxels"] == m["thickness_voxels"]
        assert row["thickness_error_voxels"] == m["thickness_voxels"] - md["thickness_voxels"]
    r2 = [f["r2"] for f in p["frames"][1:]]
    assert p["r2_mean"] == pytest.approx(np.mean(r2)) and p["r2_worst"] == min(r2)
    assert r["passes"]["free_from_3_frames"]["first_scored_frame"] == 3
    m, md = measure(free[-1], VS), measure(frames[-1], VS)
    fin = p["final"]
    assert fin["porosity"]["value"] == m["porosity"] and fin["porosity"]["dem"] == md["porosity"]
    assert fin["porosity"]["rel_error"] == pytest.approx((m["porosity"] - md["porosity"]) / md["porosity"])
    for k in ("pore-CBD", "pore-AM", "AM-CBD"):
        assert fin["contact_area_um2"][k]["value"] == pytest.approx(m["contact_area_um2"][k])
        assert fin["contact_area_um2"][k]["dem"] == pytest.approx(md["contact_area_um2"][k])
    assert "d_eff_rel" not in fin  # fick=False
    # persistence: frame 0 all along, so frame 0's R^2 is 1 and its final porosity frame 0's
    pers = r["passes"]["persistence"]
    assert pers["frames"][0]["r2"] == 1.0
    assert pers["final"]["porosity"]["value"] == measure(frames[0], VS)["porosity"]
    # the summary of one series is that series
    s = report["summary"]["free_from_frame0"]
    assert s["r2_mean"] == p["r2_mean"] and s["final_porosity_error"]["mean_abs"] == abs(fin["porosity"]["rel_error"])


def test_training_porosity_baseline_is_scored_on_porosity(trained, report):
    from calbatch.model.export import load_onnx

    _, meta = load_onnx(trained["onnx"])
    table = json.loads(meta["training_final_porosity_by_cd"])
    b = report["series"][0]["training_mean_porosity"]
    assert b["porosity"]["value"] == table["20"]["mean"] and b["training_series"] == table["20"]["n"]
    dem = report["series"][0]["dem"]["final"]["porosity"]
    assert b["porosity"]["rel_error"] == pytest.approx((table["20"]["mean"] - dem) / dem)
    assert report["summary"]["training_mean_porosity"]["series"] == 1


def test_a_model_without_training_porosity_still_evaluates(trained, series, tmp_path):
    import onnx

    from calbatch.evaluate.run import evaluate

    proto = onnx.load(str(trained["onnx"]))
    keep = [p for p in proto.metadata_props if p.key != "training_final_porosity_by_cd"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    r = evaluate(old, [pick(series, "ms4_cd20")], fick=False, progress=False)
    assert r["series"][0]["training_mean_porosity"] is None and not r["has_training_porosity"]
    assert "training_mean_porosity" not in r["summary"]


def test_press_affine_squeeze_follows_the_press():
    from calbatch.electrode.metrics import measure
    from calbatch.evaluate.baselines import press_affine, squeeze

    start = np.full((20, 4, 4), 4, np.uint8)
    start[:10] = 2
    start[:10:2, 0, 0] = 0
    np.testing.assert_array_equal(squeeze(start, 1.0), start)
    half = squeeze(start, 0.5)
    assert measure(half, 1.0)["thickness_voxels"] == 5 and (half[5:] == 4).all()
    np.testing.assert_array_equal(half[:5], start[1:10:2])  # slice k: the start at z = (k + 0.5) / 0.5 = 2k + 1
    # the top follows the press down and stays at its lowest point when it retracts
    frames = press_affine(start, np.array([10.0, 8.0, 6.0, 7.0, 9.0]), 10.0)
    assert [measure(f, 1.0)["thickness_voxels"] for f in frames] == [10, 8, 6, 6, 6]


@pytest.mark.mpi
def test_fick_numbers_are_the_solvers(trained, series):
    from calbatch.evaluate.run import evaluate
    from calbatch.transport import tortuosity

    src = pick(series, "ms4_cd20")
    r = evaluate(trained["onnx"], [src], fick=True, progress=False)["series"][0]
    dem = tortuosity(read_series(src)["frames"][-1])
    assert r["dem"]["final"]["d_eff_rel"] == pytest.approx(dem.d_eff_rel, rel=1e-9)
    assert r["dem"]["final"]["tau"] == pytest.approx(dem.tau, rel=1e-9)
    for p in r["passes"].values():
        f = p["final"]
        assert f["d_eff_rel"]["dem"] == r["dem"]["final"]["d_eff_rel"]
        assert f["tau"]["rel_error"] == pytest.approx((f["tau"]["value"] - f["tau"]["dem"]) / f["tau"]["dem"])
    persistence = tortuosity(read_series(src)["frames"][0])
    assert r["passes"]["persistence"]["final"]["d_eff_rel"]["value"] == pytest.approx(persistence.d_eff_rel, rel=1e-9)


# --- twins ----------------------------------------------------------------------------------------

def test_twin_is_matched_by_microstructure_and_cd(trained, series, tmp_path):
    from calbatch.evaluate.run import evaluate

    src = pick(series, "ms4_cd20")
    same = with_changes(src, tmp_path / "twin.h5", timestep_us=2.5e-4)  # the same frames: a perfect twin
    r = evaluate(trained["onnx"], [src, pick(series, "ms2_cd20")], twins=[same], fick=False, progress=False)
    by = {Path(s["series"]).stem: s for s in r["series"]}
    twin = by["ms4_cd20"]["passes"]["twin"]
    assert by["ms4_cd20"]["twin"] == str(same) and by["ms4_cd20"]["twin_timestep_us"] == 2.5e-4
    assert twin["r2_mean"] == 1.0 and twin["mse_mean"] == 0.0 and twin["am_volume_error_max"] == 0.0
    assert twin["final"]["porosity"]["rel_error"] == 0.0
    assert "twin" not in by["ms2_cd20"]["passes"]
    assert r["summary"]["twin"]["series"] == 1
    other = with_changes(src, tmp_path / "cd25.h5", cd_percent=25.0)
    with pytest.raises(CalbatchError, match="cd25.h5.*microstructure 4 at CD 25"):
        evaluate(trained["onnx"], [src], twins=[other], fick=False)
    short = with_changes(src, tmp_path / "short_twin.h5", frames=5)
    with pytest.raises(CalbatchError, match="short_twin.h5: twin frames"):
        evaluate(trained["onnx"], [src], twins=[short], fick=False)
    with pytest.raises(CalbatchError, match="a second twin"):
        evaluate(trained["onnx"], [src], twins=[same, same], fick=False)


# --- the command line: report, plots, flags, bad input ------------------------------------------------

def test_cli_writes_report_and_plots_and_flags_extrapolation(trained, series, tmp_path):
    out = tmp_path / "eval"
    proc = run_cli("evaluate", trained["onnx"], pick(series, "ms4_cd20"), pick(series, "ms1_cd45"), "--no-fick",
                   "--out", out)
    assert proc.returncode == 0, proc.stderr
    warnings = [x for x in proc.stderr.splitlines() if "warning" in x]
    assert len(warnings) == 1 and "ms1_cd45.h5: CD 45 % is outside the model's trained range" in warnings[0]
    assert "ms1_cd45.h5" in proc.stdout and "CD EXTRAPOLATED" in proc.stdout
    for name in ("free_from_frame0", "teacher_forced", "persistence", "press_affine"):
        assert name in proc.stdout
    r = json.loads((out / "evaluation.json").read_text())
    flags = {Path(s["series"]).stem: s["cd_extrapolated"] for s in r["series"]}
    assert flags == {"ms4_cd20": False, "ms1_cd45": True}
    assert r["warnings"] == [warnings[0].split("warning: ", 1)[1]]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["final_vs_cd.png", "ms1_cd45_slices.png", "ms1_cd45_volumes_r2.png", "ms4_cd20_render.png",
                    "ms4_cd20_slices.png", "ms4_cd20_volumes_r2.png"]  # the 3-D render: the first series
    assert all(p.stat().st_size > 10_000 for p in out.glob("*.png"))
    assert sorted(r["plots"]) == sorted(str(out / p) for p in pngs)


def test_cli_bad_input_is_one_line_and_writes_nothing(trained, series, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    src = pick(series, "ms4_cd20")
    out = tmp_path / "eval"

    def refused(*args, fragments):
        assert_one_line_error(run_cli("evaluate", *args, "--no-fick", "--out", out), *fragments)
        assert not out.exists() or not any(out.iterdir())

    refused(trained["onnx"], with_changes(src, tmp_path / "short.h5", frames=3), fragments=["short.h5", "3 frames"])
    refused(trained["onnx"], with_changes(src, tmp_path / "vs.h5", voxel_size_um=0.4), fragments=["voxel size 0.4"])
    s = read_series(src)
    s["frames"] = np.pad(s["frames"], ((0, 0), (0, 0), (0, 2), (0, 2)), mode="wrap")
    write_series(tmp_path / "grid.h5", s)
    refused(trained["onnx"], tmp_path / "grid.h5", fragments=["grid [26, 18, 18]", "multiples of 4"])
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 50)
    refused(corrupt, src, fragments=["corrupt.onnx", "not a readable ONNX model"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])), str(foreign))
    refused(foreign, src, fragments=["foreign.onnx", "not a calbatch model"])
    refused(trained["onnx"], src, "--twin", with_changes(src, tmp_path / "t.h5", microstructure_id=9),
            fragments=["t.h5", "microstructure 9", "matches none"])
    # a missing second series: every input is checked before any rollout, so nothing is written
    refused(trained["onnx"], src, tmp_path / "missing.h5", fragments=["missing.h5"])


# --- tune -----------------------------------------------------------------------------------------

def test_tune_scores_trials_on_validation_and_resumes(series, tmp_path):
    pytest.importorskip("optuna")
    from calbatch.model.options import TuneOptions
    from calbatch.model.train import load_trained
    from calbatch.model.tune import tune, validation_score

    kw = {"epochs": 1, "max_windows": 4, "max_val_windows": 2, "crop": (8, 8), "val_fraction": 0.3}

    def options(**changes):
        return TuneOptions(**{**kw, **changes})

    r = tune(series, tmp_path / "study", options(trials=2), progress=False)
    assert [t["state"] for t in r["trials"]] == ["COMPLETE", "COMPLETE"]
    values = [t["value"] for t in r["trials"]]
    assert all(np.isfinite(values)) and r["best"]["value"] == min(values)
    assert len({json.dumps(t["params"], sort_keys=True) for t in r["trials"]}) == 2
    best = json.loads((tmp_path / "study" / "best.json").read_text())
    assert best == r["best"] and best["train_options"][:1] == ["--lr"]
    # a trial's score is the fixed validation loss of its best weights, on validation series only
    run = json.loads((Path(best["run"]) / "run.json").read_text())
    assert sorted(run["val"]) == sorted(r["settings"]["validation_series"])
    assert not set(run["val"]) & set(run["test"]) and not set(run["train"]) & set(run["test"])
    from calbatch.model.dataset import scan

    model, _ = load_trained(Path(best["run"]))
    again = validation_score(model, "calbatch", scan(run["val"], run["phase_budget"]), 2, (8, 8), 2, 0, 2)
    assert again == pytest.approx(best["value"], rel=1e-5)
    with pytest.raises(CalbatchError, match="--resume"):
        tune(series, tmp_path / "study", options(trials=3), progress=False)
    with pytest.raises(CalbatchError, match="--resume: epochs"):
        tune(series, tmp_path / "study", options(trials=3, epochs=2), resume=True, progress=False)
    import optuna

    # a trial cut off by a kill stays RUNNING in the study: resume marks it failed and runs a new one
    optuna.load_study(study_name="calbatch-tune", storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}").ask()
    r = tune(series, tmp_path / "study", options(trials=3), resume=True, progress=False)
    assert [t["state"] for t in r["trials"]] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert r["trials_complete"] == 3 and (tmp_path / "study" / "trials" / "0003").is_dir()
    assert json.loads((tmp_path / "study" / "study.json").read_text())["trials_complete"] == 3
    with pytest.raises(CalbatchError, match="no validation series"):
        tune(series, tmp_path / "noval", options(trials=1, val_fraction=0.0), progress=False)


def test_tune_command_line(series, tmp_path, capsys):
    pytest.importorskip("optuna")
    from calbatch.cli.model import add_cli

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tune", *map(str, series), "--out", str(tmp_path / "s"), "--trials", "1", "--epochs", "1",
                              "--max-windows", "2", "--max-val-windows", "2", "--crop", "8,8", "--val-fraction", "0.3"])
    args.run(args)
    text = capsys.readouterr().out
    assert "COMPLETE" in text and "calbatch train SERIES... --out RUN --lr" in text
    assert (tmp_path / "s" / "study.db").is_file() and (tmp_path / "s" / "trials" / "0000" / "best.weights.h5").is_file()
    shutil.rmtree(tmp_path / "s")
