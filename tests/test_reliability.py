"""The screen and the runtime under real use: idle ranks, one run per folder, resume means the same
screen, kept files that cannot collide, kills at the worst moment, non-physical predictions and
CDs past the model's margin refused, 0/0 metrics null, progress on stderr (and --quiet).

Every fault is a real run (mpirun, SIGKILL, a second process, hand-made ONNX models whose output is
NaN or void); each test checks that nothing finished was lost."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import BASE_ENV, onnx_const, particle_volume, run_cli, save_model
from test_screen import read_rows, screen_cli, tiny_onnx, write_cases

pytest.importorskip("onnxruntime")
from onnx import TensorProto  # noqa: E402
from onnx import helper as h  # noqa: E402

VS = 1.9


def one_hot_model(path, scale: float, bias=(0.0, 0.0, 0.0, 0.0)):
    """Scores = scale x one-hot(last frame) + bias: scale NaN gives a NaN model, a large void bias a
    model that empties the electrode."""
    C = onnx_const
    nodes = [C("codes", np.array([0, 1, 2, 4], np.float32)), C("s2", np.array([2], np.int64)),
             C("s3", np.array([3], np.int64)), C("ax", np.array([4], np.int64)),
             C("scale", np.array(scale, np.float32)), C("bias", np.array(bias, np.float32)),
             h.make_node("Cast", ["frames"], ["f"], to=TensorProto.FLOAT),
             h.make_node("Slice", ["f", "s2", "s3", "ax"], ["last"]),
             h.make_node("Equal", ["last", "codes"], ["eq"]),
             h.make_node("Cast", ["eq"], ["onehot"], to=TensorProto.FLOAT),
             h.make_node("Mul", ["onehot", "scale"], ["scaled"]),
             h.make_node("Add", ["scaled", "bias"], ["output"])]
    return save_model(path, nodes, voxel_size=VS)


@pytest.fixture
def work(tmp_path) -> Path:
    np.save(tmp_path / "e1.npy", particle_volume((24, 16, 16), seed=1))
    np.save(tmp_path / "e2.npy", particle_volume((24, 16, 16), seed=2, void_top=6))
    tiny_onnx(tmp_path / "tiny.onnx")
    return tmp_path


def cases(folder: Path, electrodes="[e1.npy]", cds="[20]", extra="", name="cases.yaml") -> Path:
    """A cases file of the tiny model; Fick off unless ``extra`` sets it."""
    fick = "" if "fick:" in extra else "fick: off\n"
    return write_cases(folder, f"model: tiny.onnx\nelectrodes: {electrodes}\ncds: {cds}\n{fick}{extra}", name)


def one_line(proc, *fragments):
    lines = [x for x in proc.stderr.splitlines() if x.startswith("calbatch")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


# --- idle ranks -------------------------------------------------------------------------------------

@pytest.mark.mpi
def test_three_ranks_one_case_and_a_resume_with_nothing_left(work):
    c = cases(work, extra="fick: {enabled: true}\n")
    proc = screen_cli(c, "--out", work / "out", "--json", ranks=3)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["cases"], summary["finished"], summary["ran"], summary["ranks"]) == (1, 1, 1, 3)
    assert [r["status"] for r in read_rows(work / "out")] == ["ok"]
    again = screen_cli(c, "--out", work / "out", "--resume", "--json", ranks=2)  # zero cases left for any rank
    assert again.returncode == 0, again.stderr
    assert (json.loads(again.stdout)["ran"], json.loads(again.stdout)["skipped_as_done"]) == (0, 1)
    assert len(read_rows(work / "out")) == 1


# --- one run per folder -----------------------------------------------------------------------------

def test_a_second_run_on_a_running_folder_is_refused_and_a_killed_one_is_stale(work):
    c = cases(work, "[e1.npy, e2.npy]", "[{from: 20, to: 40, step: 0.25}]")
    out = work / "out"
    first = screen_cli(c, "--out", out, popen=True)
    lock = out / "run.lock"
    deadline = time.time() + 60
    while time.time() < deadline and not (lock.exists() and lock.stat().st_size):
        time.sleep(0.01)
    try:
        for extra in ((), ("--resume",)):
            second = screen_cli(c, "--out", out, *extra)
            line = one_line(second, "another run is using this folder", f"pid {first.pid}")
            assert "calbatch screen" in line
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    assert lock.exists()  # left by the kill: its PID is dead, so it is stale
    resumed = screen_cli(c, "--out", out, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["finished"] == 162 and not lock.exists()
    ids = [json.loads(x)["case_id"] for p in (out / "parts").iterdir() for x in p.read_text().splitlines()
           if x.endswith("}")]
    assert len(ids) == len(set(ids)) == 162


def test_lock_lease_from_another_host(tmp_path):
    from calbatch.common.lock import LOCK_NAME, FolderLock
    from calbatch.errors import CalbatchError

    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps({"host": "node-7", "pid": 1, "started": "then", "what": "calbatch screen x",
                                "lease_s": 60}))
    with pytest.raises(CalbatchError, match="pid 1 on node-7"):
        FolderLock(tmp_path, "me").acquire()
    old = time.time() - 120
    os.utime(path, (old, old))  # the lease ran out: the node died with the lock
    with FolderLock(tmp_path, "me"):
        assert json.loads(path.read_text())["host"] == socket.gethostname()
    assert not path.exists()


KILL_IN_TABLE = """
import os, signal, sys
import calbatch.screen.report as report
def half_then_die(path, text):
    tmp = path.with_name("." + path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text[: len(text) // 2])
    os.kill(os.getpid(), signal.SIGKILL)
report.atomic_text = half_then_die
from calbatch.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_while_the_table_is_written_loses_nothing(work):
    c = cases(work, "[e1.npy, e2.npy]", "[20, 30]")
    out = work / "out"
    proc = subprocess.run([sys.executable, "-c", KILL_IN_TABLE, "screen", str(c), "--out", str(out)],
                          capture_output=True, text=True, env=BASE_ENV, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "results.csv").exists()  # never half a table under its name
    resumed = screen_cli(c, "--out", out, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert (summary["ran"], summary["skipped_as_done"], summary["finished"]) == (0, 4, 4)
    assert [r["status"] for r in read_rows(out)] == ["ok"] * 4


# --- resume means the same screen -----------------------------------------------------------------

def test_resume_refuses_a_changed_case_list_and_ignores_ranks_per_case(work):
    out = work / "out"
    c = cases(work, "[e1.npy, e2.npy]", "[20, 30]", "fick: {enabled: true, ranks_per_case: 1}\n")
    assert screen_cli(c, "--out", out).returncode == 0
    before = (out / "results.csv").read_text()
    fewer = cases(work, "[e1.npy, e2.npy]", "[20, 25]", "fick: {enabled: true}\n", "fewer.yaml")
    one_line(screen_cli(fewer, "--out", out, "--resume"), "the case list differs", "CDs added: 25",
             "CDs dropped: 30", "another --out")
    np.save(work / "e2.npy", particle_volume((24, 16, 16), seed=5))  # the same name, other voxels
    one_line(screen_cli(c, "--out", out, "--resume"), "electrodes whose voxels changed: e2")
    assert (out / "results.csv").read_text() == before  # refused before anything was written
    np.save(work / "e2.npy", particle_volume((24, 16, 16), seed=2, void_top=6))
    grouped = cases(work, "[e1.npy, e2.npy]", "[20, 30]", "fick: {enabled: true, ranks_per_case: 2}\n", "g.yaml")
    again = screen_cli(grouped, "--out", out, "--resume", "--json")  # parallelism is not the screen
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["ran"] == 0


# --- names that cannot collide ----------------------------------------------------------------------

def test_kept_volumes_of_clashing_names_are_distinct(work):
    np.save(work / "a b.npy", particle_volume((24, 16, 16), seed=1))
    np.save(work / "a_b.npy", particle_volume((24, 16, 16), seed=3))
    c = cases(work, '["a b.npy", a_b.npy]', "[20]", "keep: {final_volumes: true}\n")
    proc = screen_cli(c, "--out", work / "out")
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(work / "out")
    files = [r["final_volume"] for r in rows]
    assert len(set(files)) == 2 and all(Path(f).is_file() for f in files)
    assert not np.array_equal(np.load(files[0]), np.load(files[1]))


# --- physical or refused ------------------------------------------------------------------------------

def test_a_nan_model_fails_its_cases_and_rollout_exits_2(work):
    one_hot_model(work / "nan.onnx", float("nan"))
    c = write_cases(work, "model: nan.onnx\nelectrodes: [e1.npy]\ncds: [20]\nfick: on\n")
    proc = screen_cli(c, "--out", work / "out")
    assert proc.returncode == 3, proc.stderr
    [row] = read_rows(work / "out")
    assert row["status"] == "failed" and "not finite" in row["error"] and row["porosity"] == ""
    r = run_cli("rollout", work / "nan.onnx", work / "e1.npy", "--cd", 20, "--out", work / "s.h5")
    one_line(r, "not finite")
    assert not (work / "s.h5").exists()


def test_a_model_that_empties_the_electrode_fails_the_case(work):
    one_hot_model(work / "void.onnx", 0.0, (0.0, 0.0, 0.0, 5.0))
    c = write_cases(work, "model: void.onnx\nelectrodes: [e1.npy]\ncds: [20]\nfick: off\ndecision: argmax\n")
    proc = screen_cli(c, "--out", work / "out")
    assert proc.returncode == 3
    [row] = read_rows(work / "out")
    assert row["status"] == "failed" and "lost its material" in row["error"]


def test_frames_above_the_press_or_springing_back_too_far_are_refused():
    from calbatch.electrode.checks import NonPhysical, check_frames

    vol = particle_volume((24, 16, 16), seed=1)  # 20 slices of electrode, 1 um voxels
    attrs = {"voxel_size_um": 1.0, "uncalendered_top_um": 20.0, "press_lowest_um": 15.0}
    check_frames([vol, vol[:, :, :]], {**attrs, "press_lowest_um": 19.0})
    with pytest.raises(NonPhysical, match="above the press"):
        check_frames([vol, vol], attrs, ["press", "press"], [20.0, 10.0])
    with pytest.raises(NonPhysical, match="spring-back"):
        check_frames([vol, vol], {**attrs, "press_lowest_um": 4.0})


def test_cds_past_the_models_margin_are_refused_unless_allowed(work):
    c = cases(work, cds="[20, 46]")  # trained 20-40, margin 5 by default
    one_line(screen_cli(c, "--out", work / "out"), "CD 46", "20-40", "--allow-extrapolation")
    assert not (work / "out").exists()
    ok = screen_cli(c, "--out", work / "out", "--allow-extrapolation")
    assert ok.returncode == 0, ok.stderr
    one_line(run_cli("rollout", work / "tiny.onnx", work / "e1.npy", "--cd", 60, "--out", work / "s.h5"), "--cd 60")


def test_zero_over_zero_metrics_are_null_and_flagged(tmp_path):
    np.save(tmp_path / "void.npy", np.full((8, 8, 8), 4, np.uint8))
    proc = run_cli("metrics", tmp_path / "void.npy", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["porosity"] is None and "porosity" in r["non_finite"] and "porosity" in r["undefined"]


def test_a_file_that_states_its_voxel_size_is_measured_at_it(tmp_path, work):
    import h5py

    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.create_dataset("volume", data=particle_volume((24, 16, 16), seed=1))
        f.attrs["voxel_size_um"] = 0.8
    r = json.loads(run_cli("metrics", f"{tmp_path / 'v.h5'}:/volume", "--json").stdout)
    assert r["voxel_size_um"] == 0.8 and r["thickness_um"] == pytest.approx(0.8 * r["thickness_voxels"], rel=1e-12)
    one_line(run_cli("metrics", f"{tmp_path / 'v.h5'}:/volume", "--voxel-size", "0.4"), "0.8 um", "--voxel-size says 0.4")
    c = cases(work, electrodes=f"['{tmp_path / 'v.h5'}:/volume']")
    one_line(screen_cli(c, "--out", work / "out"), "0.8 um", "the model says 1.9")


# --- progress -----------------------------------------------------------------------------------------

def test_screen_progress_per_case_and_quiet(work):
    c = cases(work, "[e1.npy, e2.npy]", "[20, 30]")
    proc = screen_cli(c, "--out", work / "out")
    lines = [x for x in proc.stderr.splitlines() if x.startswith("screen: ")]
    assert proc.returncode == 0 and len(lines) == 4, proc.stderr
    assert lines[0].startswith("screen: 1/4 cases") and "case/s, ETA" in lines[0] and lines[-1].startswith("screen: 4/4")
    quiet = screen_cli(c, "--out", work / "q", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""


# --- the smaller ones ---------------------------------------------------------------------------------

def test_rollout_never_overwrites_its_input_and_a_folder_is_named(work):
    before = (work / "e1.npy").read_bytes()
    one_line(run_cli("rollout", work / "tiny.onnx", work / "e1.npy", "--cd", 20, "--out", work / "e1.npy"),
             "is the start file")
    assert (work / "e1.npy").read_bytes() == before
    (work / "folder").mkdir()
    one_line(screen_cli(cases(work, electrodes="[folder]"), "--out", work / "out"), "is a folder, not a volume file")


def test_a_cd_range_keeps_its_end_and_lengths_carry_no_float_noise(work):
    c = cases(work, cds="[{from: 20, to: 31, step: 5}]", extra="keep: false\n")
    proc = screen_cli(c, "--out", work / "out", "--allow-extrapolation")
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(work / "out")
    assert [r["cd_percent"] for r in rows] == ["20.0", "25.0", "30.0", "31.0"]
    for r in rows:
        for key in ("thickness_um", "thickness_before_um", "contact_pore-AM_um2"):
            assert len(r[key]) <= 14, (key, r[key])  # 30.4, never 30.400000000000002


def test_the_api_refuses_a_bool_mask_and_a_string_cd(work):
    from calbatch.errors import CalbatchError
    from calbatch.screen import Predictor

    p = Predictor(work / "tiny.onnx")
    vol = np.load(work / "e1.npy")
    with pytest.raises(CalbatchError, match="integer phase codes"):
        p.predict(vol > 0, 20)
    with pytest.raises(CalbatchError, match="a CD is a number"):
        p.predict(vol, "35")
    with pytest.raises(CalbatchError, match="a CD is a number"):
        p.predict(vol, [20, True])


def test_optimize_refuses_an_unwritable_out_before_any_rollout(work):
    (work / "file").write_text("x")
    t0 = time.perf_counter()
    proc = run_cli("optimize", work / "e1.npy", "--model", work / "tiny.onnx", "--porosity", "0.3",
                   "--out", work / "file" / "r.json")
    one_line(proc, "--out", "is a file, not a folder")
    assert time.perf_counter() - t0 < 60  # no model loaded, no rollout run
