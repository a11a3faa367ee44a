"""calbatch screen and the Predictor API on tiny grids: bit-identity with
``calbatch rollout``'s loop, predict one or many, the cases file's bad inputs (one line, exit 2,
nothing written), a screen on 1 and 2 ranks, failing cases, and kill + --resume (every case once).

The models are hand-made ONNX graphs in calbatch's format (no training, milliseconds to build);
one test exports an untrained calbatch network through Keras to hold the real graph to the same."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from calbatch.errors import CalbatchError
from conftest import BASE_ENV, hand_budget, onnx_const, particle_volume, random_volume, save_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("pydantic")
from onnx import TensorProto  # noqa: E402
from onnx import helper as h  # noqa: E402

VS = 1.9
RUN_COLUMNS = ("seconds_per_step", "time_read_s", "time_rollout_s", "time_metrics_s", "time_fick_s", "time_total_s",
               "rank", "final_volume", "series_file", "electrode_file")
# `calbatch screen` until cli/__init__.py lists it; then the command itself
SHIM = ("import sys, calbatch.cli as c\n"
        "c.COMMAND_MODULES = c.COMMAND_MODULES + (() if 'screen' in c.COMMAND_MODULES else ('screen',))\n"
        "sys.exit(c.main(sys.argv[1:]))")


def tiny_onnx(path, voxel_size=VS, cd_range=(20, 40), grid=(24, 16, 16), fixed_reshape=False):
    """A hand-made model in calbatch's format (inputs, output, metadata), no training: class scores
    0.15 x one-hot(last frame) + 0.5 + w sin(past frames, position, conditioning), so every rule
    moves voxels. ``fixed_reshape``: the graph only runs on ``grid`` (a case on another grid fails)."""
    C = onnx_const
    nodes = [
        C("codes", np.array([0, 1, 2, 4], np.float32)),
        C("two", np.array(0.15, np.float32)), C("half", np.array(0.5, np.float32)),
        C("w", np.array([0.3, 0.4, 0.5, 0.05], np.float32)), C("k", np.array([1.7, -0.9, 2.3], np.float32)),
        C("s2", np.array([2], np.int64)), C("s3", np.array([3], np.int64)), C("ax", np.array([4], np.int64)),
        C("ax1", np.array([-1], np.int64)), C("cshape", np.array([-1, 1, 1, 1, 7], np.int64)),
        C("cw", np.array([3.0, 1.0, -2.0, 0.3, 0.2, 0.1, 5.0], np.float32)),
        h.make_node("Cast", ["frames"], ["f"], to=TensorProto.FLOAT),
        h.make_node("Slice", ["f", "s2", "s3", "ax"], ["last"]),
        h.make_node("Equal", ["last", "codes"], ["eq"]),
        h.make_node("Cast", ["eq"], ["onehot"], to=TensorProto.FLOAT),
        h.make_node("Mul", ["f", "k"], ["fk"]),
        h.make_node("ReduceSum", ["fk", "ax1"], ["fs"], keepdims=1),
        h.make_node("Reshape", ["cond", "cshape"], ["c5"]),
        h.make_node("Mul", ["c5", "cw"], ["cwx"]),
        h.make_node("ReduceSum", ["cwx", "ax1"], ["cs"], keepdims=1),
        C("az", np.array(1, np.int64)), C("ay", np.array(2, np.int64)),
        C("cz", np.array(0.37, np.float32)), C("cy", np.array(0.13, np.float32)),
        h.make_node("CumSum", ["last", "az"], ["sz"]), h.make_node("CumSum", ["last", "ay"], ["sy"]),
        h.make_node("Mul", ["sz", "cz"], ["szw"]), h.make_node("Mul", ["sy", "cy"], ["syw"]),
        h.make_node("Add", ["fs", "cs"], ["arg0"]), h.make_node("Add", ["arg0", "szw"], ["arg1"]),
        h.make_node("Add", ["arg1", "syw"], ["arg"]),
        h.make_node("Sin", ["arg"], ["sn"]),
        h.make_node("Mul", ["sn", "w"], ["pert"]),
        h.make_node("Mul", ["onehot", "two"], ["oh2"]),
        h.make_node("Add", ["oh2", "half"], ["base"]),
        h.make_node("Add", ["base", "pert"], ["output" if not fixed_reshape else "raw"]),
    ]
    if fixed_reshape:
        nodes += [C("fixed", np.array([-1, *grid, 4], np.int64)), h.make_node("Reshape", ["raw", "fixed"], ["output"])]
    return save_model(path, nodes, voxel_size=voxel_size, cd_range=cd_range, grid=grid)


def screen_cli(*args, ranks=None, timeout=180, popen=False):
    """``calbatch screen ARGS`` in a subprocess, under ``mpirun -n RANKS`` when given."""
    command = [sys.executable, "-c", SHIM, "screen", *map(str, args)]
    if ranks is not None:
        command = ["mpirun", "-n", str(ranks), *command]
    env = {**BASE_ENV, "OMP_NUM_THREADS": "1"}
    if popen:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def main_cli(monkeypatch, *args) -> int:
    """``calbatch screen ARGS`` in this process (fast, for the bad inputs)."""
    import calbatch.cli as cli

    if "screen" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "screen"))
    return cli.main(["screen", *map(str, args)])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("models")
    return {"tiny": tiny_onnx(d / "tiny.onnx"), "fixed": tiny_onnx(d / "fixed.onnx", fixed_reshape=True)}


@pytest.fixture
def workdir(tmp_path, models) -> Path:
    """Two electrodes (.npy, 24 x 16 x 16) and the model next to a cases file."""
    np.save(tmp_path / "e1.npy", particle_volume((24, 16, 16), seed=1))
    np.save(tmp_path / "e2.npy", particle_volume((24, 16, 16), seed=2, void_top=6))
    return tmp_path


def write_cases(folder: Path, text: str, name: str = "cases.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def read_rows(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in RUN_COLUMNS} for r in rows]


CASES = """model: {model}
electrodes: ["e*.npy"]
cds: [20, 30, {{from: 35, to: 45, step: 5}}]
fick: {{enabled: {fick}}}
keep: {{final_volumes: true}}
"""


# --- Predictor: the API, and bit-identity with calbatch rollout --------------------------------------

@pytest.mark.parametrize("rule", ["particles", "budget", "conserve", "argmax", "expected"])
def test_predictor_equals_rollout_bit_for_bit(models, rule):
    from calbatch.screen import Predictor
    from calbatch.surrogate.rollout import ExtrapolationWarning, rollout

    vol = random_volume((24, 16, 16), seed=3)
    p = Predictor(models["tiny"], rule=rule)
    for cd in (20.0, 37.5, 45.0):  # 45: outside the trained range, flagged alike
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExtrapolationWarning)
            ref = rollout(models["tiny"], vol, cd, VS, rule=rule, progress=False)
        got = p.rollout(vol, cd)
        assert got["frames"].shape == ref["frames"].shape
        assert np.array_equal(got["frames"], ref["frames"]), (rule, cd)
        assert (got["frames"][-1] != vol).any()  # the model moved voxels: not a trivial identity
        np.testing.assert_array_equal(got["press_z_um"], ref["press_z_um"])
        assert list(got["phase"]) == list(ref["phase"])
        assert got["attrs"]["cd_extrapolated"] == ref["attrs"]["cd_extrapolated"] == (cd > 40)
    # three start frames, as rollout takes them
    three = ref["frames"][:3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExtrapolationWarning)
        ref3 = rollout(models["tiny"], three, 30.0, VS, rule=rule, progress=False)
    assert np.array_equal(p.rollout(three, 30.0)["frames"], ref3["frames"])


def test_batched_rollouts_equal_one_at_a_time(models):
    from calbatch.screen import Predictor

    vols = [random_volume((24, 16, 16), seed=s) for s in range(4)] + [random_volume((28, 16, 16), seed=9)]
    cds = [20, 30, 40, 25, 33]
    one = Predictor(models["tiny"])
    many = Predictor(models["tiny"], batch_size=3)
    # ONNX Runtime does not promise bit-equal results across batch sizes (another kernel may run),
    # and a score that differs in the last bit can swap two voxels of equal rank: near-equal is what
    # a batch can promise; batch size 1 (the default) is the bit-exact path.
    # Once one voxel differs, a free rollout diverges (here up to 17 % of the voxels by the last
    # step of a random-noise start), so the batch is held to the first predicted frame and to the
    # phase volumes of the last.
    for a, b in zip(many.rollouts(vols, cds), [one.rollout(v, c) for v, c in zip(vols, cds)]):
        assert a["frames"].shape == b["frames"].shape
        assert np.mean(a["frames"][1] != b["frames"][1]) < 1e-3
        for code in (1, 2):  # conserve keeps the solid counts whatever the order of near-ties
            assert np.count_nonzero(a["frames"][-1] == code) == np.count_nonzero(b["frames"][-1] == code)


def test_real_network_equals_rollout_bit_for_bit(tmp_path):
    """An (untrained) calbatch network exported through Keras, as the shipped model will be."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    from calbatch.model.export import export
    from calbatch.model.networks import build
    from calbatch.screen import Predictor
    from calbatch.surrogate.rollout import rollout

    config = {"channels": 4, "layers_coarse": 1}
    run = {"kind": "calbatch", "config": config, "grid_zyx": [24, 16, 16], "voxel_size_um": VS, "cd_range": [20, 50],
           "schedule": {"press_speed_m_s": 0.05, "frame_interval_us": 40.0}, "phase_budget": hand_budget(VS)}
    path = export(build("calbatch", **config), run, tmp_path / "net.onnx")["out"]
    vol = random_volume((24, 16, 16), seed=5)
    ref = rollout(path, vol, 30.0, VS, progress=False)
    assert np.array_equal(Predictor(path).rollout(vol, 30.0)["frames"], ref["frames"])


def test_predict_one_and_many_without_reload(models, monkeypatch):
    import calbatch.surrogate.step as mod
    from calbatch.screen import Predictor

    p = Predictor(models["tiny"])
    monkeypatch.setattr(mod, "load_onnx", lambda *a, **k: pytest.fail("the model was loaded again"))
    vol = random_volume((24, 16, 16), seed=4)
    one = p.predict(vol, 30)
    assert isinstance(one, dict) and one["final"].shape == vol.shape and one["final"].dtype == np.uint8
    assert set(one["metrics"]) >= {"porosity", "porosity_all", "contact_area_um2", "thickness_um"}
    assert "series" not in one and one["cd_extrapolated"] is False
    many = p.predict(vol, [20, 30, 45], series=True)
    assert [r["cd_percent"] for r in many] == [20, 30, 45] and many[2]["cd_extrapolated"] is True
    assert np.array_equal(many[1]["final"], one["final"])
    assert np.array_equal(many[1]["series"]["frames"][-1], one["final"])
    pairs = p.predict([vol, random_volume((24, 16, 16), seed=6)], [20, 25], metrics=False)
    assert len(pairs) == 2 and "metrics" not in pairs[0]
    with pytest.raises(CalbatchError, match="2 structures but 3 CDs"):
        p.predict([vol, vol], [20, 25, 30])
    with pytest.raises(CalbatchError, match="unknown phase code 3"):
        p.predict(np.full((24, 16, 16), 3, np.uint8), 30)


@pytest.mark.mpi
def test_predict_with_fick(models):
    from calbatch.screen import Predictor

    r = Predictor(models["tiny"]).predict(particle_volume((24, 16, 16), seed=4), 30, fick={"cbd_diffusivity": 0.2})
    assert 0 < r["fick"]["d_eff_rel"] < 1 and r["fick"]["converged"] and r["fick"]["cbd_diffusivity"] == 0.2
    assert r["timings_s"]["fick"] > 0


def test_predictor_refusals(models, tmp_path):
    from calbatch.screen import Predictor

    with pytest.raises(CalbatchError, match="unknown rule"):
        Predictor(models["tiny"], rule="best")
    with pytest.raises(CalbatchError, match="no such model file"):
        Predictor(tmp_path / "none.onnx")
    with pytest.raises(CalbatchError, match="trained at 1.9"):
        Predictor(models["tiny"], voxel_size=0.4).predict(random_volume((24, 16, 16)), 30)
    with pytest.raises(CalbatchError, match="multiples of 4"):
        Predictor(models["tiny"]).predict(random_volume((24, 18, 18)), 30)


# --- the cases file: bad inputs --------------------------------------------------------------------

E = 'electrodes: ["e1.npy"]\n'
C = "cds: [20, 30]\n"
M = "model: tiny.onnx\n"
BAD = [
    # (cases file text, fragments of the one error line)
    ("electrodes: [e1.npy\ncds: [20]\n", ["not valid YAML", "line"]),
    ("", ["empty"]),
    ("- 20\n- 30\n", ["expected a mapping", "line 1"]),
    (M + E + C + "cd: [20]\n", ["line 4", "cd: unknown key", "allowed: model, electrodes, cds"]),
    (M + E, ["cds: required"]),
    (M + C, ["electrodes: required"]),
    (M + E + "cds: []\n", ["line 3", "cds: must not be empty"]),
    (M + E + 'cds: [20, "thirty"]\n', ["line 3", "cds[1]", "expected a number"]),
    (M + E + "cds: [true]\n", ["cds[0]", "expected a number"]),
    (M + E + "cds: [95]\n", ["line 3", "CD 95", "(0, 90)"]),
    (M + E + "cds:\n  - {from: 20, to: 50}\n", ["line 4", "cds[0].step: required"]),
    (M + E + "cds:\n  - {from: 20, to: 50, step: 0}\n", ["line 4", "cds[0].step", "must be > 0"]),
    (M + E + "cds:\n  - {from: 50, to: 20, step: 1}\n", ["line 4", "'from' 50 is above 'to' 20"]),
    (M + E + "cds: [{from: 20, to: 50, step: 1, by: 2}]\n", ["cds[0].by: unknown key", "allowed: from, to, step"]),
    (M + E + "cds: [.nan]\n", ["line 3", "finite"]),
    (M + 'electrodes: ["missing.npy"]\n' + C, ["line 2", "electrodes[0]", "no such file", "the word example"]),
    (M + 'electrodes: ["nothing*.npy"]\n' + C, ["line 2", "matches no file"]),
    (M + "electrodes:\n  - {name: x}\n" + C, ["line 3", "electrodes[0].path: required"]),
    (M + 'electrodes: ["e1.npy", "e1.npy"]\n' + C, ["electrode name 'e1' is used twice"]),
    (M + 'electrodes: ["bad_codes.npy"]\n' + C, ["line 2", "unknown phase code 3", "allowed 0 pore"]),
    (M + 'electrodes: ["odd_grid.npy"]\n' + C, ["line 2", "odd_grid", "multiples of 4"]),
    (M + E + C + "fick: {ranks_per_case: 0}\n", ["line 4", "fick.ranks_per_case", "must be >= 1"]),
    (M + E + C + "fick: {enabled: maybe}\n", ["fick.enabled", "expected true or false"]),
    (M + E + C + "fick:\n  cbd_diffusivity: -1\n", ["line 5", "fick.cbd_diffusivity", "must be >= 0"]),
    (M + E + C + "decision: best\n", ["line 4", "decision", "'best' is not one of", "'conserve'"]),
    (M + E + C + "keep: {volumes: true}\n", ["keep.volumes: unknown key", "allowed: final_volumes, series"]),
    ("model: none.onnx\n" + E + C, ["line 1", "none.onnx: no such model file"]),
    ("model: e1.npy\n" + E + C, ["not a readable ONNX model"]),
    (M + E + C + "cds: [40]\n", ["line 4", "cds: key given twice"]),
    (M + E + C + "voxel_size: 0.4\n", ["electrode e1", "trained at 1.9"]),
    (M + E + C + "batch_size: 0\n", ["line 4", "batch_size", "must be >= 1"]),
    (M + E + C + "threads: 1.5\n", ["threads", "expected an integer"]),
]


@pytest.mark.parametrize("text,fragments", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_cases_files_are_one_line_errors(workdir, models, monkeypatch, capsys, text, fragments):
    (workdir / "tiny.onnx").write_bytes(Path(models["tiny"]).read_bytes())
    np.save(workdir / "bad_codes.npy", np.full((24, 16, 16), 3, np.uint8))
    np.save(workdir / "odd_grid.npy", random_volume((24, 18, 18)))
    cases = write_cases(workdir, text)
    before = sorted(p.name for p in workdir.iterdir())
    rc = main_cli(monkeypatch, cases, "--out", workdir / "out")
    err = capsys.readouterr()
    assert rc == 2, err
    lines = err.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err.err, err.err
    assert lines[0].startswith("calbatch screen: error: ")
    assert str(cases) in lines[0] or "--" in lines[0] or "ONNX" in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert err.out == ""
    assert sorted(p.name for p in workdir.iterdir()) == before  # nothing written


def test_missing_cases_file_and_shipped_model(workdir, monkeypatch, capsys):
    from calbatch.data import shipped_model_path

    assert main_cli(monkeypatch, workdir / "none.yaml") == 2
    assert "none.yaml: no such cases file" in capsys.readouterr().err
    if not shipped_model_path().exists():
        cases = write_cases(workdir, E + C)
        assert main_cli(monkeypatch, cases, "--out", workdir / "out") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no shipped model yet" in err and "--model" in err
        assert not (workdir / "out").exists()


def test_out_folder_rules(workdir, models, monkeypatch, capsys):
    cases = write_cases(workdir, CASES.format(model=models["tiny"], fick="false"))
    out = workdir / "out"
    out.mkdir()
    (out / "something").write_text("x")
    assert main_cli(monkeypatch, cases, "--out", out) == 2
    assert "the folder exists; --resume" in capsys.readouterr().err
    assert main_cli(monkeypatch, cases, "--out", out, "--resume") == 2
    assert "holds no screen.json" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["something"]


# --- the screen ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(tmp_path_factory, models):
    """A plain one-rank screen with Fick: 2 electrodes x 5 CDs."""
    d = tmp_path_factory.mktemp("ref")
    np.save(d / "e1.npy", particle_volume((24, 16, 16), seed=1))
    np.save(d / "e2.npy", particle_volume((24, 16, 16), seed=2, void_top=6))
    cases = write_cases(d, CASES.format(model=models["tiny"], fick="true"))
    proc = screen_cli(cases, "--out", d / "out", "--json")
    return {"dir": d, "cases": cases, "out": d / "out", "proc": proc}


@pytest.mark.mpi
def test_screen_table_plots_and_kept_volumes(reference):
    proc, out = reference["proc"], reference["out"]
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["cases"] == summary["finished"] == summary["ran"] == 10 and summary["failed"] == 0
    rows = read_rows(out)
    assert [r["case_id"] for r in rows] == [f"e{e}@cd{cd}" for e in (1, 2) for cd in (20, 30, 35, 40, 45)]
    for r in rows:
        assert r["status"] == "ok" and r["error"] == ""
        assert 0 < float(r["porosity"]) < 1 and 0 < float(r["d_eff_rel"]) < 1 and float(r["tau"]) > 1
        assert r["fick_converged"] == "true" and float(r["time_total_s"]) >= float(r["time_rollout_s"]) > 0
        assert r["flags"] == ("cd_extrapolated" if r["cd_percent"] == "45.0" else "")
        np.testing.assert_array_equal(np.load(r["final_volume"]).shape, (24, 16, 16))
    assert sorted(Path(p).name for p in summary["plots"]) == ["d_eff_rel_vs_cd.png", "porosity_vs_cd.png",
                                                              "tau_vs_cd.png"]
    assert all(Path(p).stat().st_size > 1000 for p in summary["plots"])
    assert len(json.loads((out / "results.json").read_text())) == 10


@pytest.mark.mpi
def test_two_ranks_give_the_same_table(reference):
    out2 = reference["dir"] / "out2"
    proc = screen_cli(reference["cases"], "--out", out2, ranks=2)
    assert proc.returncode == 0, proc.stderr
    assert "10 of 10 cases" in proc.stdout
    rows1, rows2 = read_rows(reference["out"]), read_rows(out2)
    assert comparable(rows1) == comparable(rows2)
    assert {r["rank"] for r in rows2} == {"0", "1"}
    parts = sorted(p.name for p in (out2 / "parts").iterdir())
    assert parts == ["run000-rank0000.jsonl", "run000-rank0001.jsonl"]


@pytest.mark.mpi
def test_ranks_per_case_groups(reference):
    text = reference["cases"].read_text().replace("fick: {enabled: true}", "fick: {enabled: true, ranks_per_case: 2}")
    cases = write_cases(reference["dir"], text, "grouped.yaml")
    out = reference["dir"] / "grouped"
    proc = screen_cli(cases, "--out", out, ranks=2)
    assert proc.returncode == 0, proc.stderr
    rows, ref = read_rows(out), read_rows(reference["out"])
    assert all(r["fick_ranks"] == "2" for r in rows)
    for a, b in zip(rows, ref):  # the same structures; D_eff from a 2-rank solve within its tolerance
        assert a["porosity"] == b["porosity"]
        assert float(a["d_eff_rel"]) == pytest.approx(float(b["d_eff_rel"]), rel=1e-3)


@pytest.mark.mpi
def test_resume_after_a_torn_part_file_runs_each_case_once(reference):
    """A run killed after 3 cases, mid-way through writing the 4th line: resume finishes the rest."""
    out = reference["dir"] / "torn"
    (out / "parts").mkdir(parents=True)
    (out / "screen.json").write_text((reference["out"] / "screen.json").read_text())
    lines = (reference["out"] / "parts" / "run000-rank0000.jsonl").read_text().splitlines(keepends=True)
    (out / "parts" / "run000-rank0000.jsonl").write_text("".join(lines[:3]) + lines[3][:40])
    proc = screen_cli(reference["cases"], "--out", out, "--resume", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["skipped_as_done"] == 3 and summary["ran"] == 7
    rows = read_rows(out)
    assert [r["case_id"] for r in rows] == [r["case_id"] for r in read_rows(reference["out"])]
    assert comparable(rows) == comparable(read_rows(reference["out"]))
    new = [json.loads(x)["case_id"] for x in (out / "parts" / "run001-rank0000.jsonl").read_text().splitlines()]
    assert len(new) == 7 and not set(new) & {json.loads(x)["case_id"] for x in lines[:3]}
    # resuming a finished screen runs nothing and writes no case again
    again = screen_cli(reference["cases"], "--out", out, "--resume", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["ran"] == 0
    assert len(read_rows(out)) == 10


def test_killed_run_resumes_with_every_case_once(workdir, models):
    """SIGKILL a real run once cases are on disk, then --resume."""
    cases = write_cases(workdir, f"model: {models['tiny']}\nelectrodes: [e1.npy, e2.npy]\n"
                                 "cds: [{from: 20, to: 40, step: 1}]\nfick: off\n")
    out = workdir / "out"
    part = out / "parts" / "run000-rank0000.jsonl"
    proc = screen_cli(cases, "--out", out, popen=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if part.exists() and part.read_bytes().count(b"\n") >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=30)
    done = part.read_bytes().count(b"\n")
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be killed")
    assert proc.returncode == -signal.SIGKILL and 2 <= done < 42
    assert not (out / "results.csv").exists()
    resumed = screen_cli(cases, "--out", out, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["finished"] == 42 and summary["skipped_as_done"] + summary["ran"] == 42
    ids = [json.loads(x)["case_id"] for p in sorted((out / "parts").iterdir()) for x in p.read_text().splitlines()
           if x.endswith("}")]
    assert len(ids) == len(set(ids)) == 42  # every case exactly once over both runs' part files
    assert len(read_rows(out)) == 42


def test_resume_refuses_changed_settings(workdir, models, monkeypatch, capsys):
    cases = write_cases(workdir, CASES.format(model=models["tiny"], fick="false"))
    assert main_cli(monkeypatch, cases, "--out", workdir / "out", "--no-plots") == 0
    capsys.readouterr()
    changed = write_cases(workdir, CASES.format(model=models["tiny"], fick="false") + "decision: argmax\n", "c2.yaml")
    assert main_cli(monkeypatch, changed, "--out", workdir / "out", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume: decision differs" in err and "'particles' there" in err


def test_failing_cases_are_recorded_and_the_rest_finish(workdir, models, monkeypatch, capsys):
    np.save(workdir / "e3.npy", random_volume((28, 16, 16), seed=3))  # the fixed-grid model cannot run it
    cases = write_cases(workdir, f"model: {models['fixed']}\nelectrodes: [e1.npy, e3.npy]\ncds: [20, 30]\n"
                                 "fick: false\nbatch_size: 2\n")
    rc = main_cli(monkeypatch, cases, "--out", workdir / "out", "--no-plots")
    captured = capsys.readouterr()
    assert rc == 3
    assert "2 of 4 cases failed" in captured.err
    rows = read_rows(workdir / "out")
    assert [(r["case_id"], r["status"]) for r in rows] == [("e1@cd20", "ok"), ("e1@cd30", "ok"),
                                                           ("e3@cd20", "failed"), ("e3@cd30", "failed")]
    assert all(r["error"] and "\n" not in r["error"] for r in rows[2:])
    assert "e3@cd20" in captured.out and "failed" in captured.out


@pytest.mark.mpi
def test_bad_input_under_mpirun_is_one_line(workdir, models):
    cases = write_cases(workdir, f"model: {models['tiny']}\n" + E + "cds: [95]\n")
    proc = screen_cli(cases, "--out", workdir / "out", ranks=2)
    assert proc.returncode == 2
    # one rank prints; what follows is mpirun's own notice of a non-zero exit status
    lines = [x for x in proc.stderr.splitlines() if x.startswith("calbatch")]
    assert len(lines) == 1 and "CD 95" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (workdir / "out").exists()


def test_example_cases_file_is_valid():
    from calbatch.data import DATA_DIR
    from calbatch.screen.config import parse

    config, _ = parse(DATA_DIR / "example_cases.yaml")
    assert config.electrodes == ["example"] and config.model is None


@pytest.mark.mpi
def test_demo_screens_the_shipped_example_and_reruns_from_its_results(tmp_path):
    """The README's main job: the shipped model on the shipped example cases (CD 20, 35, 50)."""
    env = {**BASE_ENV, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "calbatch", "demo", "--out", str(tmp_path / "demo"), "--json"]
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert (summary["cases"], summary["finished"], summary["failed"]) == (3, 3, 0)
    with open(tmp_path / "demo" / "results.csv") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: float(r["cd_percent"]))
    assert [float(r["cd_percent"]) for r in rows] == [20, 35, 50]
    porosity = [float(r["porosity"]) for r in rows]
    assert 0.1 < porosity[-1] < porosity[0] < 0.443  # pressing closes pores; the pack starts at 0.443
    assert all((tmp_path / "demo" / "plots" / p).is_file() for p in ("porosity_vs_cd.png", "tau_vs_cd.png"))
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert (json.loads(again.stdout)["ran"], json.loads(again.stdout)["skipped_as_done"]) == (0, 3)
