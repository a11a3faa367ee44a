"""calbatch optimize on a tiny grid: the optimizer converges where the answer is
known, infeasible targets and bad flags or config files are one line with exit 2, flags and YAML
agree, the example script runs.

The model is a hand-made ONNX graph in calbatch's format whose scores are the last frame's phases
(plus a small fixed noise): through the budget rule (a budget that keeps the volumes and puts the
top on the press) it moves material only where the press forces it, into pores spread over the electrode, so the final porosity
of a real DEM pack (voxelized on a 16 x 16 x 24 grid of 1.9 um) falls with the CD in voxel-slice
steps -- a monotone step curve, checked here on a fine CD grid."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calbatch.errors import CalbatchError
from conftest import BASE_ENV, assert_one_line_error, onnx_const, run_cli, save_model, still_budget

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("scipy")
from onnx import TensorProto  # noqa: E402
from onnx import helper as h  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / "data" / "dem" / "default" / "packs" / "ms1.h5"
VS = 1.9


def persistence_onnx(path, voxel_size=VS, cd_range=(20, 50), grid=(24, 16, 16), schedule=None):
    """A model in calbatch's format whose class scores are one-hot(last frame) plus a fixed
    pseudo-random field below 0.1 on the solid classes: what the press pushes out is re-placed by
    the decision rule into pores spread over the electrode, nothing else moves."""
    const = onnx_const
    nodes = [const("codes", np.array([0, 1, 2, 4], np.float32)), const("s2", np.array([2], np.int64)),
             const("s3", np.array([3], np.int64)), const("ax", np.array([4], np.int64)),
             const("one", np.array(1.0, np.float32)), const("zero_f", np.array(0.0, np.float32)),
             const("a1", np.array(1, np.int64)), const("a2", np.array(2, np.int64)), const("a3", np.array(3, np.int64)),
             const("kz", np.array(37.719, np.float32)), const("ky", np.array(78.233, np.float32)),
             const("kx", np.array(12.9898, np.float32)), const("big", np.array(437.585, np.float32)),
             const("solid", np.array([0, 0.1, 0.1, 0], np.float32)),
             h.make_node("Cast", ["frames"], ["f"], to=TensorProto.FLOAT),
             h.make_node("Slice", ["f", "s2", "s3", "ax"], ["last"]),
             h.make_node("Equal", ["last", "codes"], ["eq"]),
             h.make_node("Cast", ["eq"], ["onehot"], to=TensorProto.FLOAT),
             # voxel coordinates by cumulative sums of ones, hashed to [0, 1): frac(sin(k . x) * big)
             h.make_node("Mul", ["last", "zero_f"], ["z0"]), h.make_node("Add", ["z0", "one"], ["ones"]),
             h.make_node("CumSum", ["ones", "a1"], ["cz"]), h.make_node("CumSum", ["ones", "a2"], ["cy"]),
             h.make_node("CumSum", ["ones", "a3"], ["cx"]),
             h.make_node("Mul", ["cz", "kz"], ["wz"]), h.make_node("Mul", ["cy", "ky"], ["wy"]),
             h.make_node("Mul", ["cx", "kx"], ["wx"]), h.make_node("Add", ["wz", "wy"], ["w1"]),
             h.make_node("Add", ["w1", "wx"], ["w"]), h.make_node("Sin", ["w"], ["sn"]),
             h.make_node("Mul", ["sn", "big"], ["sb"]), h.make_node("Floor", ["sb"], ["fl"]),
             h.make_node("Sub", ["sb", "fl"], ["noise"]), h.make_node("Mul", ["noise", "solid"], ["bias"]),
             h.make_node("ReduceSum", ["cond"], ["c"], keepdims=0),  # the graph takes cond, times 0
             h.make_node("Sub", ["c", "c"], ["zero"]),
             h.make_node("Add", ["onehot", "bias"], ["scores"]),
             h.make_node("Add", ["scores", "zero"], ["output"])]
    return save_model(path, nodes, voxel_size=voxel_size, cd_range=cd_range, grid=grid,
                      schedule=schedule or {"press_speed_m_s": 0.05, "frame_interval_us": 20.0, "timestep_us": 5e-4},
                      meta={"phase_budget": json.dumps(still_budget(voxel_size))})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The model, and electrode 1's real pack voxelized coarsely (a .npy volume)."""
    from calbatch.electrode.series import read_pack
    from calbatch.electrode.voxelize import voxelize_spheres

    d = tmp_path_factory.mktemp("optimize")
    p = read_pack(PACK)
    vol = voxelize_spheres(p["positions"], p["radii"], p["phases"], (30.4, 30.4), (24, 16, 16), VS)
    np.save(d / "electrode.npy", vol)
    return {"dir": d, "model": persistence_onnx(d / "model.onnx"), "volume": d / "electrode.npy"}


@pytest.fixture(scope="module")
def predictor(tiny):
    from calbatch.screen import Predictor

    return Predictor(tiny["model"])


@pytest.fixture(scope="module")
def fine(predictor, tiny):
    """The true curve on a fine CD grid (0.25 %)."""
    vol = np.load(tiny["volume"])
    cds = np.arange(20, 50.001, 0.25)
    return cds, np.array([predictor.predict(vol, cd)["metrics"]["porosity"] for cd in cds])


def electrode(tiny):
    from calbatch.optimize.search import load_electrode

    return load_electrode(str(tiny["volume"]))


def main(capsys, *args) -> tuple[int, str, str]:
    from calbatch.cli import main as cli_main

    try:
        code = cli_main(["optimize", *map(str, args)])
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_curve_is_a_monotone_step_function(fine):
    cds, por = fine
    assert np.all(np.diff(por) <= 1e-12) and por[0] > 0.28 and por[-1] < 0.05
    assert len(np.unique(por)) < len(por)  # steps, not a smooth curve


@pytest.mark.parametrize("goal", [0.27, 0.22, 0.15, 0.05])
def test_porosity_target_is_found_within_the_step_that_crosses_it(predictor, tiny, fine, goal):
    from calbatch.optimize.search import Target, optimize

    r = optimize(electrode(tiny), Target("porosity", goal), predictor, grid=5, xtol=0.05)
    cds, por = fine
    # the bracketing grid cell: the last fine CD above the target and the first below it
    above, below = cds[por >= goal].max(), cds[por < goal].min()
    found = r["answer"]["cd_percent"]
    assert above - 0.25 - 0.05 <= found <= below + 0.05
    jump = por[cds == above][0] - por[cds == below][0]
    assert abs(r["answer"]["porosity"] - goal) <= jump + 1e-12
    assert r["answer"]["porosity"] in (por[cds == above][0], por[cds == below][0])
    # the found CD reproduces its porosity, and the search beat the fine grid by far
    assert predictor.predict(np.load(tiny["volume"]), found)["metrics"]["porosity"] == r["answer"]["porosity"]
    assert r["method"] == "brentq" and 5 < r["evaluations"] < len(cds) / 4
    assert r["evaluations"] == len(r["curve"]) and r["reachable"]["porosity"] == [min(por), max(por)]


def test_cli_json_results_file_and_plot(capsys, tiny):
    out = tiny["dir"] / "run"
    code, stdout, _ = main(capsys, tiny["volume"], "--porosity", "0.2", "--model", tiny["model"], "--json",
                           "--plot", out / "curve.png", "--out", out / "result.json")
    assert code == 0
    r = json.loads(stdout)
    assert json.loads((out / "result.json").read_text())["answer"] == r["answer"]
    assert (out / "curve.png").stat().st_size > 1000 and r["plot"] == str(out / "curve.png")
    assert r["target"] == "porosity 0.2" and r["seconds"] > 0 and r["model_load_s"] > 0
    cds = [p["cd_percent"] for p in r["curve"]]
    assert cds == sorted(cds) and {20.0, 27.5, 35.0, 42.5, 50.0} <= set(cds)
    # what the plot shows besides the curve: the uncalendered electrode at CD 0 and the trained range
    from calbatch.electrode.metrics import measure
    from calbatch.electrode.volume import read_volume

    assert r["uncalendered"] == {"porosity": measure(read_volume(tiny["volume"]), VS)["porosity"]}
    assert r["trained_cd_range"] == [20.0, 50.0]


def test_yaml_config_equals_the_flags(capsys, tiny):
    cfg = tiny["dir"] / "opt.yaml"
    cfg.write_text("electrode: electrode.npy\nmodel: model.onnx\ntarget: {porosity: 0.25}\ngrid: 4\nxtol: 0.2\n")
    code, a, _ = main(capsys, "--config", cfg, "--json")
    assert code == 0
    code, b, _ = main(capsys, tiny["volume"], "--model", tiny["model"], "--porosity", "0.25", "--grid", "4",
                      "--xtol", "0.2", "--json")
    assert code == 0
    a, b = json.loads(a)["answer"], json.loads(b)["answer"]
    assert {**a, "seconds": 0} == {**b, "seconds": 0}
    code, c, _ = main(capsys, "--config", cfg, "--porosity", "0.1", "--json")  # a flag overrides the file
    assert code == 0 and json.loads(c)["target_value"] == 0.1


def test_infeasible_target_names_the_reachable_range(tiny, fine):
    proc = run_cli("optimize", tiny["volume"], "--model", tiny["model"], "--porosity", "0.6")
    assert proc.returncode == 2 and proc.stdout == ""  # above the uncalendered porosity: said before any rollout
    assert_one_line_error(proc, "out of reach", "porosity 0.6", "uncalendered")
    proc = run_cli("optimize", tiny["volume"], "--model", tiny["model"], "--porosity", f"{fine[1].max() + 0.001:.4f}",
                   "--quiet")  # below the start, above what the model reaches: the scanned range named
    assert_one_line_error(proc, "out of reach", f"{fine[1].max():.4f}", "CD 20 %")


def test_bad_flags_and_config_are_one_line(capsys, tiny):
    d = tiny["dir"]
    m, v = tiny["model"], tiny["volume"]
    (d / "unknown.yaml").write_text("target: {porosity: 0.3}\ncds: [1, 2]\n")
    (d / "two.yaml").write_text("target: {porosity: 0.3, tau: 2}\n")
    (d / "notarget.yaml").write_text("grid: 4\n")
    (d / "badgrid.yaml").write_text("target: {porosity: 0.3}\ngrid: 1\n")
    (d / "broken.yaml").write_text("target: [porosity\n")
    (d / "subkey.yaml").write_text("target: {porosty: 0.3}\n")
    cases = [
        ((v, "--model", m), "no target"),
        ((v, "--model", m, "--porosity", "1.5"), "--porosity"),
        ((v, "--model", m, "--porosity", "0.3", "--tau", "2"), "one target"),
        ((v, "--model", m, "--min-tau"), "--max-porosity"),
        ((v, "--model", m, "--max-porosity", "0.3"), "--min-tau"),
        ((v, "--model", m, "--porosity", "0.3", "--grid", "1"), "--grid"),
        ((v, "--model", m, "--porosity", "0.3", "--cd-range", "50", "20"), "--cd-range"),
        ((v, "--model", m, "--porosity", "0.3", "--xtol", "-1"), "--xtol"),
        ((v, "--model", m, "--porosity", "0.3", "--plot", d / "curve.txt"), "--plot"),
        ((v, "--model", m, "--porosity", "0.3", "--out", d), "--out"),
        ((d / "missing.npy", "--model", m, "--porosity", "0.3"), "missing.npy"),
        ((v, "--model", d / "missing.onnx", "--porosity", "0.3"), "missing.onnx"),
        ((v, "--model", m, "--porosity", "0.3", "--check-dem"), "--check-dem"),
        (("--config", d / "unknown.yaml"), "line 2: cds: unknown key"),
        (("--config", d / "two.yaml"), "exactly one of"),
        (("--config", d / "notarget.yaml"), "target: required key is missing"),
        (("--config", d / "badgrid.yaml"), "line 2: grid: must be >= 2"),
        (("--config", d / "broken.yaml"), "not valid YAML"),
        (("--config", d / "subkey.yaml"), "target.porosty: unknown key"),
        (("--config", d / "none.yaml"), "no such config file"),
    ]
    for args, fragment in cases:
        code, stdout, stderr = main(capsys, *args)
        assert code == 2, (args, stderr)
        assert stdout == "" and len(stderr.strip().splitlines()) == 1 and fragment in stderr, (args, stderr)
    assert not (d / "curve.txt").exists()


def test_optimizer_refuses_bad_values_in_the_api(predictor, tiny):
    from calbatch.optimize.search import Target, optimize

    for kind, value in (("porosity", 0.0), ("porosity", 1.0), ("volume", 0.3), ("tau", float("nan"))):
        with pytest.raises(CalbatchError):
            Target(kind, value)
    with pytest.raises(CalbatchError, match="grid"):
        optimize(electrode(tiny), Target("porosity", 0.3), predictor, grid=1)


@pytest.mark.mpi
def test_tau_target_and_lowest_tau_at_a_porosity_bound(predictor, tiny, fine):
    from calbatch.optimize.search import Target, optimize

    vol = np.load(tiny["volume"])
    cds = np.arange(20, 32.51, 1.25)
    curve = [predictor.predict(vol, cd, fick=True) for cd in cds]
    tau = np.array([c["fick"]["tau"] for c in curve])
    por = np.array([c["metrics"]["porosity"] for c in curve])
    assert np.all(np.isfinite(tau)) and tau[-1] > tau[0]  # compaction makes the pores more tortuous

    goal = float((tau[0] + tau[-1]) / 2)
    r = optimize(electrode(tiny), Target("tau", goal), predictor, cd_range=(20, 32.5), grid=4, xtol=0.05)
    assert abs(r["answer"]["tau"] - goal) <= np.max(np.abs(np.diff(tau))) + 1e-9
    assert r["reachable"]["tau"][0] <= goal <= r["reachable"]["tau"][1]

    bound = 0.25
    r = optimize(electrode(tiny), Target("min_tau", bound), predictor, cd_range=(20, 32.5), grid=4, xtol=0.05)
    a = r["answer"]
    assert a["porosity"] <= bound
    assert a["tau"] <= tau[por <= bound].min() + 1e-9  # no CD of the fine grid does better
    with pytest.raises(CalbatchError, match="out of reach"):
        optimize(electrode(tiny), Target("min_tau", 0.01), predictor, cd_range=(20, 32.5), grid=4)


def test_example_script_runs(tiny):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "optimize_porosity.py"), "--electrode",
                           str(tiny["volume"]), "--model", str(tiny["model"]), "--porosity", "0.2"],
                          capture_output=True, text=True, env=BASE_ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "porosity 0.2" in proc.stdout and "CD" in proc.stdout
