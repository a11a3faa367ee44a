"""calbatch bench dl-vs-dem and the optimizer's DEM check on tiny systems: the
comparison's numbers are consistent (ratios are DEM time / DL time, accuracies in range, the
results file is what was printed), end to end with a real LIGGGHTS run on a tiny pack; the
projection is the documented calculation; bad input is one line with exit 2.

The model is test_optimize's hand-made ONNX graph (the last frame's phases, re-placed by the
decision rule where the press forces it), with the DEM's schedule in its metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calbatch.errors import CalbatchError
from conftest import assert_one_line_error, run_cli

pytest.importorskip("onnxruntime")
from test_optimize import persistence_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARTICLES = ROOT / "data" / "dem" / "default" / "particles"
GRID = ("--voxel-size", "0.2", "--nz", "48")


def check_case(case: dict, frames: int) -> None:
    """What every case of a dl-vs-dem result must satisfy."""
    t, a, per = case["timing"], case["accuracy"], case["per_frame"]
    assert t["frames"] == frames and len(per) == frames - 1 and [f["frame"] for f in per] == list(range(1, frames))
    for f in per:
        assert f["dem_s"] > 0 and f["dl_s"] > 0 and f["ratio"] == pytest.approx(f["dem_s"] / f["dl_s"])
        assert -10 < f["r2"] <= 1 and 0.5 < f["am_volume_ratio"] < 1.5
    dem, dl = sum(f["dem_s"] for f in per), sum(f["dl_s"] for f in per)
    assert t["ratio_per_step"] == pytest.approx(dem / dl)
    assert t["dem_s_per_step"] == pytest.approx(dem / len(per)) and t["dl_s_per_step"] == pytest.approx(dl / len(per))
    assert t["ratio_per_case"] == pytest.approx(t["dem_case_s"] / t["dl_case_s"]) and t["dl_case_s"] >= dl
    assert a["r2_worst"] <= a["r2_mean"] <= 1 and a["r2_mean"] == pytest.approx(np.mean([f["r2"] for f in per]))
    assert 0 < a["porosity_dl"] < 1 and 0 < a["porosity_dem"] < 1
    assert a["porosity_rel_error"] == pytest.approx((a["porosity_dl"] - a["porosity_dem"]) / a["porosity_dem"])
    for c in a["contact_areas"].values():
        assert c["dem_um2"] > 0 and c["rel_error"] == pytest.approx((c["dl_um2"] - c["dem_um2"]) / c["dem_um2"])
    assert case["goals_met"]["speedup_per_step"] == (t["ratio_per_step"] >= 50)


@pytest.fixture(scope="module")
def series_case(tmp_path_factory):
    """A real DEM series (electrode 1, CD 35) voxelized on a 1.9 um grid, and the model that
    follows its schedule."""
    from calbatch.electrode.series import read_series
    from calbatch.electrode.voxelize import voxelize_spheres

    d = tmp_path_factory.mktemp("bench")
    s = read_series(PARTICLES / "ms1_cd35.h5", frames=False)
    s["frames"] = np.stack([voxelize_spheres(x, s["radii"], s["phases"], (30.4, 30.4), (24, 16, 16), 1.9)
                            for x in s["positions"]])
    a = s["attrs"]
    schedule = {"press_speed_m_s": float(a["press_speed_m_s"]), "frame_interval_us": float(a["frame_interval_us"]),
                "timestep_us": float(a["timestep_us"])}
    return {"series": s, "model": persistence_onnx(d / "model.onnx", schedule=schedule), "dir": d}


@pytest.mark.parametrize("fick", [False, pytest.param(True, marks=pytest.mark.mpi)])
def test_compare_case_numbers_are_consistent(series_case, fick):
    from calbatch.evaluate.bench import compare_case, goals_met
    from calbatch.screen import Predictor

    s = series_case["series"]
    p = Predictor(series_case["model"])
    dl = p.rollout(s["frames"][0], float(s["attrs"]["cd_percent"]), h0=float(s["attrs"]["uncalendered_top_um"]))
    case = compare_case(s, dl, dl["wall_time_s"], p, fick)
    case["goals_met"] = goals_met(case)
    check_case(case, len(s["frames"]))
    a = case["accuracy"]
    assert a["r2_worst"] < 0.95  # the model is no DEM: the comparison sees it
    if fick:
        assert a["tau_dem"] > 1 and a["tau_rel_error"] == pytest.approx((a["tau_dl"] - a["tau_dem"]) / a["tau_dem"])
        assert {"tau_rel_error", "d_eff_rel_error"} <= set(case["goals_met"])
    # the DEM series against itself: perfect accuracy
    same = compare_case(s, s, np.ones(len(s["frames"])), p, False)["accuracy"]
    assert same["r2_worst"] == 1 and same["porosity_rel_error"] == 0 and same["contact_area_rel_error_mean"] == 0


def test_a_rollout_on_another_schedule_is_refused(series_case):
    from calbatch.evaluate.bench import compare_case
    from calbatch.screen import Predictor

    s = series_case["series"]
    p = Predictor(persistence_onnx(series_case["dir"] / "other.onnx", schedule={"press_speed_m_s": 0.1,
                                                                                "frame_interval_us": 20.0}))
    dl = p.rollout(s["frames"][0], 35.0, h0=float(s["attrs"]["uncalendered_top_um"]))
    with pytest.raises(CalbatchError, match="schedule or grid differs"):
        compare_case(s, dl, dl["wall_time_s"], p, False)


def test_projection_is_the_documented_calculation():
    from calbatch.evaluate.bench import contact_time, project_dem_cost

    assert contact_time(5, 5) / contact_time(5, 5) == 1
    assert contact_time(200, 200) < contact_time(5, 5)  # stiffer contacts, shorter time step
    p = project_dem_cost(20.0, spheres_per_particle=20, n_am=140, n_cbd=923)
    assert p["kind"] == "projection" and 2 < p["steps_factor"] < 3  # the AM-AM contact takes over from the CBD's
    assert p["spheres_factor"] == pytest.approx((140 * 20 + 923) / 1063)
    assert p["projected_s_per_frame_paper_settings"] == pytest.approx(20 * p["steps_factor"] * p["spheres_factor"])
    assert project_dem_cost(20.0, real_am_modulus_gpa=5.0, spheres_per_particle=1)["projected_s_per_frame_paper_settings"] \
        == pytest.approx(20.0)


def test_bad_input_is_one_line(tmp_path, series_case):
    model = series_case["model"]
    example = ROOT / "python" / "calbatch" / "data" / "example_electrode.h5"
    cases = [
        (("--cd", "35", "--model", model, "--out", tmp_path / "r.txt"), "--out"),
        ((tmp_path / "none.h5", "--cd", "35", "--model", model), "none.h5"),
        ((example, "--cd", "35", "--model", model), "not a calbatch-dem-pack"),
        (("--cd", "35", "--model", model, "--dataset", tmp_path / "none.json"), "--dataset"),
        (("--cd", "abc"), "--cd"),
        (("--cd", "35", "--repeats", "0"), "--repeats"),
        (("--cd", "35", "--model", model, "--backend", "nope"), "nope"),
        ((), "--cd"),
    ]
    for args, fragment in cases:
        proc = run_cli("bench", "dl-vs-dem", *args)
        assert proc.returncode == 2 and proc.stdout == ""
        assert_one_line_error(proc, fragment)
    assert not list(tmp_path.iterdir())


# --- end to end with LIGGGHTS ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_pack(tmp_path_factory):
    """A tiny real pack: 12 AM particles at 0.3 of the real size (and their CBD) in a 3.2 um box,
    16 x 16 x 48 voxels of 0.2 um; its fall starts at 30 us instead of 150 and goes on until the bed is
    down (the pack checks it), so the fixture takes seconds, not minutes. And a model on the DEM's schedule."""
    from calbatch import dem
    from calbatch.dem.settings import PACK
    from calbatch.electrode.series import read_pack

    d = tmp_path_factory.mktemp("tiny_pack")
    saved = dict(PACK)
    PACK.update(fall_us=30.0, quench_us=15.0)
    try:
        dem.pack(d / "pack.h5", seed=3, n_am=12, box_xy=3.2, size_scale=0.3, voxel_size=0.2, nz=48)
    finally:
        PACK.clear()
        PACK.update(saved)
    dt = float(read_pack(d / "pack.h5")["attrs"]["timestep_us"])
    model = persistence_onnx(d / "model.onnx", voxel_size=0.2, grid=(48, 16, 16),
                             schedule={"press_speed_m_s": 0.2, "frame_interval_us": 2.5, "timestep_us": dt})
    return {"dir": d, "pack": d / "pack.h5", "model": model}


@pytest.mark.liggghts
@pytest.mark.mpi
def test_dl_vs_dem_end_to_end(tiny_pack):
    d = tiny_pack["dir"]
    proc = run_cli("bench", "dl-vs-dem", tiny_pack["pack"], "--cd", "30", "--model", tiny_pack["model"],
                   "--dataset", "none", "--speed", "0.2", "--frame-interval", "2.5", "--repeats", "2",
                   "--backend", "all", "--keep", d / "keep", "--out", d / "bench.json", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert json.loads((d / "bench.json").read_text())["cases"] == r["cases"]
    assert r["dem_settings"]["speed"] == 0.2 and r["dl_repeats"] == 2 and "CPUExecutionProvider" in r["dl_backend"]["providers_used"]
    assert r["dl_backends"][0] == "cpu"  # every backend either timed or named with why it did not open
    assert set(r["dl_backends"]) | set(r["dl_backends_unavailable"]) == {"cpu", "ort-cuda", "ort-tensorrt", "tensorrt"}
    (case,) = r["cases"]
    assert case["render"] == str(d / "bench_cd30.png") and (d / "bench_cd30.png").stat().st_size > 10_000
    assert set(case["timing"]["backends"]) == set(r["dl_backends"]) and case["timing"]["backends"]["cpu"]["same_frames"]
    from calbatch.electrode.series import read_series

    dem_series = read_series(Path(case["files"]["dem"]))
    dl_series = read_series(Path(case["files"]["dl"]))
    check_case(case, len(dem_series["frames"]))
    assert len(dl_series["frames"]) == len(dem_series["frames"])
    # the DEM times are the series' own, the DL times the median rollout's
    assert [f["dem_s"] for f in case["per_frame"]] == pytest.approx(list(dem_series["wall_time_s"][1:]))
    assert [f["dl_s"] for f in case["per_frame"]] == pytest.approx(list(dl_series["wall_time_s"][1:]))
    assert case["accuracy"]["tau_dem"] > 1 and case["accuracy"]["fick_converged"] in (True, False)
    assert r["projection"]["measured_s_per_frame"] == pytest.approx(case["timing"]["dem_s_per_press_step"])
    # the table form prints the same case
    proc = run_cli("bench", "dl-vs-dem", tiny_pack["pack"], "--cd", "30", "--model", tiny_pack["model"],
                   "--dataset", "none", "--speed", "0.2", "--frame-interval", "2.5", "--repeats", "1", "--no-fick")
    assert proc.returncode == 0, proc.stderr
    assert "CD 30 %" in proc.stdout and "PROJECTION, not a measurement" in proc.stdout and "Fick" not in proc.stdout


@pytest.mark.liggghts
def test_optimize_checks_its_answer_with_the_dem(tiny_pack):
    d = tiny_pack["dir"]
    (d / "dataset.json").write_text(json.dumps({"calender_settings": {"speed": 0.2, "frame_interval_us": 2.5}}))
    proc = run_cli("optimize", tiny_pack["pack"], "--model", tiny_pack["model"], "--porosity", "0.20",
                   "--check-dem", "--dataset", d / "dataset.json", "--plot", d / "check.png", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["plot"] == str(d / "check.png") and (d / "check.png").stat().st_size > 10_000
    c = r["dem_check"]
    assert c["pack"] == str(tiny_pack["pack"]) and c["cd_percent"] == r["answer"]["cd_percent"]
    assert c["dem_settings"]["speed"] == 0.2 and c["dem_wall_s"] > 0 and 0 < c["dem_porosity"] < 1
    assert c["dl_minus_dem_porosity_points"] == pytest.approx(100 * (r["answer"]["porosity"] - c["dem_porosity"]))
    assert c["dem_minus_target_points"] == pytest.approx(100 * (c["dem_porosity"] - 0.20))
