"""The rollout engine on tiny grids: its C++ loop equals ``calbatch rollout``'s
plain Python loop over the same ONNX session bit for bit -- at batch size 1 against ``rollout()``
itself, at larger batches with mixed CDs (and grids) against the same loop's building blocks
(``network_inputs``, ``session.run``, ``next_frame``) run on the same batches; every decision rule,
paper models, a ring of three frames; its model checks and its backends' one-line errors.

GPU backends are tested where their packages import (skipped elsewhere, with the reason)."""

from __future__ import annotations

import importlib.util
import json
import warnings

import numpy as np
import pytest

from calbatch.errors import CalbatchError
from conftest import hand_budget, onnx_const, random_volume, save_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("pydantic")
from onnx import TensorProto  # noqa: E402
from onnx import helper as h  # noqa: E402

from test_screen import VS, tiny_onnx  # noqa: E402  (the hand-made calbatch model)

GRID = (24, 16, 16)
CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
TRT_EP = "TensorrtExecutionProvider" in ort.get_available_providers()
TENSORRT = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("cupy") is not None


def tiny_paper_onnx(path, grid=GRID):
    """A hand-made ``paper`` model: regressed codes (B, nz, ny, nx) = 1.1 x last frame - 0.6 +
    0.9 sin(frames . k + 3 cd), so the nearest code moves voxels."""
    C = onnx_const
    nodes = [
        C("k", np.array([0.7, -1.3, 1.9], np.float32)), C("ax", np.array([-1], np.int64)),
        C("a", np.array(1.1, np.float32)), C("b", np.array(-0.6, np.float32)), C("w", np.array(0.9, np.float32)),
        C("cw", np.array([3.0, 0, 0, 0, 0, 0, 0], np.float32)), C("cshape", np.array([-1, 1, 1, 1], np.int64)),
        C("s2", np.array([2], np.int64)), C("s3", np.array([3], np.int64)), C("ax4", np.array([4], np.int64)),
        h.make_node("Cast", ["frames"], ["f"], to=TensorProto.FLOAT),
        h.make_node("Slice", ["f", "s2", "s3", "ax4"], ["last5"]),
        h.make_node("Squeeze", ["last5", "ax"], ["last"]),
        h.make_node("Mul", ["f", "k"], ["fk"]), h.make_node("ReduceSum", ["fk", "ax"], ["fs"], keepdims=0),
        h.make_node("Mul", ["cond", "cw"], ["cc"]), h.make_node("ReduceSum", ["cc", "ax"], ["cs"], keepdims=0),
        h.make_node("Reshape", ["cs", "cshape"], ["cs4"]),
        h.make_node("Add", ["fs", "cs4"], ["arg"]), h.make_node("Sin", ["arg"], ["sn"]),
        h.make_node("Mul", ["sn", "w"], ["pert"]), h.make_node("Mul", ["last", "a"], ["la"]),
        h.make_node("Add", ["la", "b"], ["base"]), h.make_node("Add", ["base", "pert"], ["output"]),
    ]
    return save_model(path, nodes, voxel_size=VS, kind="paper", grid=grid,
                      meta={"phase_codes": json.dumps({"0": "pore", "1": "CBD", "2": "AM", "4": "void"})})


def with_metadata(src, dst, **changes):
    """A copy of the model ``src`` with metadata entries changed (None: removed)."""
    model = onnx.load(str(src))
    props = {**{p.key: p.value for p in model.metadata_props}, **changes}
    h.set_model_props(model, {key: value for key, value in props.items() if value is not None})
    onnx.save(model, str(dst))
    return dst


def python_loop(p, starts, cds, batch_size, session=None):
    """A plain Python loop over the network for several cases, ``batch_size`` cases per call in the
    stepping loop's order (the first unfinished cases on the first unfinished case's grid): numpy
    windows (``past_indices``), the conditioning of each step, ``session.run`` (default the
    predictor's session) and :func:`calbatch.surrogate.rules.decide` (or the nearest code) per case,
    the plan and the schedule taken from the predictor. Returns each case's frames."""
    from calbatch.surrogate.contract import conditioning, past_indices
    from calbatch.surrogate.rules import decide, nearest_codes
    from calbatch.surrogate.step import start_frames

    session = p.session if session is None else session
    cases = []
    for start, cd in zip(starts, cds):
        given, h0 = start_frames(start, p.voxel_size)
        sched = p.model.schedule(cd, h0)
        frames = np.empty((sched["n_frames"], *given.shape[1:]), np.uint8)
        frames[:len(given)] = given
        plan = p.plan(sched, cd, h0, given[0])
        cases.append({"frames": frames, "t": len(given) - 1, "cd": cd, "h0": h0, "sched": sched, "plan": plan})
    pending = list(cases)
    while pending:
        grid = pending[0]["frames"].shape[1:]
        batch = [c for c in pending if c["frames"].shape[1:] == grid][:batch_size]
        xs = [np.moveaxis(c["frames"][past_indices(c["t"])], 0, -1)[None] for c in batch]
        cs = [conditioning(c["cd"], c["h0"], p.voxel_size, c["plan"]["top_um"][c["t"]], c["plan"]["top_um"][c["t"] + 1],
                           c["sched"]["phase"][c["t"] + 1])[None] for c in batch]
        out = session.run(None, {"frames": np.ascontiguousarray(np.concatenate(xs)), "cond": np.concatenate(cs)})[0]
        for k, c in enumerate(batch):
            t, counts = c["t"], c["plan"]["counts"]
            c["frames"][t + 1] = (decide(out[k], c["frames"][t], p.rule, c["plan"]["first_void"][t],
                                         None if counts is None else counts[t])
                                  if p.model.kind.scores else nearest_codes(out[k]))
            c["t"] += 1
        pending = [c for c in pending if c["t"] < len(c["frames"]) - 1]
    return [c["frames"] for c in cases]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("engine_models")
    return {"tiny": tiny_onnx(d / "tiny.onnx"), "paper": tiny_paper_onnx(d / "paper.onnx"), "dir": d}


def _rollout(model, start, cd, rule="particles"):
    from calbatch.surrogate.rollout import ExtrapolationWarning, rollout

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExtrapolationWarning)
        return rollout(model, start, cd, VS, rule=rule, progress=False)


# --- bit for bit ------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["particles", "budget", "conserve", "argmax", "expected"])
def test_batch_1_equals_rollout_bit_for_bit(models, rule):
    from calbatch.surrogate import Predictor

    engine = Predictor(models["tiny"], rule=rule)
    vol = random_volume(GRID, seed=11)
    for cd in (20.0, 33.3, 45.0):  # 45: outside the trained range
        ref = _rollout(models["tiny"], vol, cd, rule)
        (case,) = engine.cases([vol], [cd])
        assert case.frames.shape == ref["frames"].shape
        assert np.array_equal(case.frames, ref["frames"]), (rule, cd)
        assert (case.final != vol).any()  # the model moved voxels
        assert case.extrapolated == ref["attrs"]["cd_extrapolated"] == (cd > 40)
        series = engine.series(case)
        np.testing.assert_array_equal(series["press_z_um"], ref["press_z_um"])
        assert list(series["phase"]) == list(ref["phase"]) and series["attrs"]["decision_rule"] == rule
    three = ref["frames"][:3]  # three start frames
    (case,) = engine.cases([three], [30.0])
    assert np.array_equal(case.frames, _rollout(models["tiny"], three, 30.0, rule)["frames"])


@pytest.mark.parametrize("rule", ["particles", "budget", "expected"])
def test_rollout_predictor_and_teacher_forcing_agree_bit_for_bit(models, rule):
    """The three users of the one stepping loop: the free rollout, the predictor and the
    teacher-forced evaluation (fed the rollout's own frames as the truth, it predicts them again)."""
    from calbatch import Predictor
    from calbatch.electrode.series import write_series
    from calbatch.evaluate.run import _Case, teacher_forced

    vol = random_volume(GRID, seed=8)
    ref = _rollout(models["tiny"], vol, 30.0, rule)
    p = Predictor(models["tiny"], rule=rule)
    assert np.array_equal(p.rollout(vol, 30.0)["frames"], ref["frames"])
    path = models["dir"] / f"truth_{rule}.h5"
    write_series(path, ref)
    forced = teacher_forced(p, _Case(path, p.model))
    assert np.array_equal(forced, ref["frames"])
    assert (forced[-1] != vol).any()


def test_wall_overlap_of_the_model_is_honoured_by_engine_and_rollout(models):
    """A model trained to fill slices above the press (metadata ``wall_overlap_voxels``): the engine
    and the plain loop force void from the same slice, and frames differ from a model without it."""
    from calbatch.surrogate import Predictor

    overlap = with_metadata(models["tiny"], models["dir"] / "overlap.onnx", wall_overlap_voxels="3")
    vol = random_volume(GRID, seed=5)
    ref = _rollout(overlap, vol, 35.0, "conserve")  # the budget rule forces void from the planned top instead
    (case,) = Predictor(overlap, rule="conserve").cases([vol], [35.0])
    assert np.array_equal(case.frames, ref["frames"])
    assert not np.array_equal(ref["frames"], _rollout(models["tiny"], vol, 35.0, "conserve")["frames"])


@pytest.mark.parametrize("rule", ["particles", "budget", "conserve", "expected"])
def test_batches_with_mixed_cds_equal_the_python_loop_bit_for_bit(models, rule):
    from calbatch.surrogate import Predictor

    starts = [random_volume(GRID, seed=s) for s in range(5)] + [random_volume((28, 16, 16), seed=9)]
    cds = [20.0, 42.5, 31.0, 25.0, 37.0, 33.0]  # schedules of different lengths: cases finish at different steps
    engine = Predictor(models["tiny"], rule=rule, batch_size=3)
    cases = engine.cases(starts, cds)
    ref = python_loop(engine, starts, cds, 3)
    assert len({c.n_frames for c in cases}) > 2
    for case, frames in zip(cases, ref):
        assert np.array_equal(case.frames, frames)
    # a ring of the last three frames ends in the same final frame
    rings = engine.cases(starts, cds, series=False)
    assert all(len(r.frames) == 3 and np.array_equal(r.final, c.final) for r, c in zip(rings, cases))
    with pytest.raises(CalbatchError, match="ring keeps the last three"):
        rings[0].frame(0)


def test_paper_model_equals_rollout_bit_for_bit(models):
    from calbatch.surrogate import Predictor

    vol = random_volume(GRID, seed=4)
    ref = _rollout(models["paper"], vol, 30.0)
    engine = Predictor(models["paper"], batch_size=2)
    cases = engine.cases([vol, random_volume(GRID, seed=5)], [30.0, 22.0])
    assert np.array_equal(cases[0].frames, python_loop(engine, [vol, random_volume(GRID, seed=5)], [30.0, 22.0], 2)[0])
    assert np.array_equal(engine.cases([vol], [30.0])[0].frames, ref["frames"])
    assert (ref["frames"][-1] != vol).any()


def test_real_network_equals_rollout_bit_for_bit(tmp_path):
    """An (untrained) calbatch network exported through Keras, as the shipped model is."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    from calbatch.model.export import export
    from calbatch.model.networks import build
    from calbatch.surrogate import Predictor

    config = {"channels": 4, "layers_coarse": 1}
    run = {"kind": "calbatch", "config": config, "grid_zyx": list(GRID), "voxel_size_um": VS, "cd_range": [20, 50],
           "schedule": {"press_speed_m_s": 0.05, "frame_interval_us": 40.0}, "phase_budget": hand_budget(VS)}
    path = export(build("calbatch", **config), run, tmp_path / "net.onnx")["out"]
    starts = [random_volume(GRID, seed=s) for s in (5, 6, 7)]
    engine = Predictor(path)
    assert np.array_equal(engine.cases(starts[:1], [30.0])[0].frames, _rollout(path, starts[0], 30.0)["frames"])
    batched = Predictor(path, batch_size=2)
    cases = batched.cases(starts, [30.0, 45.0, 24.0])
    for case, frames in zip(cases, python_loop(batched, starts, [30.0, 45.0, 24.0], 2)):
        assert np.array_equal(case.frames, frames)


# --- checks and errors ------------------------------------------------------------------------------

def test_model_metadata_is_checked(models):
    from calbatch.surrogate import Predictor

    d, tiny = models["dir"], models["tiny"]
    bad = {
        "kind 'unet' is not one of": {"kind": "unet"},
        "phase codes .* differ": {"phase_codes": json.dumps({"0": "pore", "1": "AM", "2": "CBD", "4": "void"})},
        "class codes .* differ": {"class_codes": "[0, 1, 2, 3]"},
        "'cd_range_percent' missing or unreadable": {"cd_range_percent": None},
        "'cd_range_percent' must be": {"cd_range_percent": "[20]"},
        "not a calbatch model": {"format": "other/1"},
    }
    for k, (message, change) in enumerate(bad.items()):
        path = with_metadata(tiny, d / f"bad{k}.onnx", **change)
        with pytest.raises(CalbatchError, match=f"bad{k}.onnx.*{message}"):
            Predictor(path)
    paper_as_calbatch = with_metadata(models["paper"], d / "mislabelled.onnx", kind="calbatch")
    with pytest.raises(CalbatchError, match=r"output shape .* not a calbatch model's \(B, nz, ny, nx, 4\)"):
        Predictor(paper_as_calbatch)
    with pytest.raises(CalbatchError, match="unknown rule"):
        Predictor(tiny, rule="best")
    with pytest.raises(CalbatchError, match="batch_size: must be at least 1"):
        Predictor(tiny, batch_size=0)


def test_cases_are_checked_against_the_model(models):
    from calbatch.surrogate import Predictor

    engine = Predictor(models["tiny"])
    with pytest.raises(CalbatchError, match="multiples of 4"):
        engine.start(random_volume((24, 18, 18)), 30)
    with pytest.raises(CalbatchError, match="trained at 1.9"):
        Predictor(models["tiny"], voxel_size=0.4).start(random_volume(GRID), 30)
    with pytest.raises(CalbatchError, match="unknown phase code 3"):
        engine.start(np.full(GRID, 3, np.uint8), 30)
    with pytest.raises(CalbatchError, match="cd: must be between 0 and 90"):
        engine.start(random_volume(GRID), 95)
    with pytest.raises(CalbatchError, match="takes only its training grid"):
        Predictor(models["paper"]).start(random_volume((28, 16, 16)), 30)
    with pytest.raises(CalbatchError, match="series: this case kept only its last three"):
        engine.series(engine.cases([random_volume(GRID)], [30], series=False)[0])


def test_predictor_is_imported_from_calbatch_on_first_use():
    import subprocess
    import sys

    code = ("import sys, calbatch; assert 'onnxruntime' not in sys.modules; from calbatch import Predictor; "
            "from calbatch.surrogate.predictor import Predictor as P; assert Predictor is P")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_core_refuses_bad_buffers():
    from calbatch import _core

    frames = [np.zeros((3, 4, 4, 4), np.uint8)]
    t = np.array([0])
    with pytest.raises(ValueError, match="out must have shape"):
        _core.rollout_window(frames, t, np.zeros((1, 4, 4, 5, 3), np.uint8))
    for out in (np.zeros((1, 4, 4, 4, 3), np.float32), np.zeros((1, 4, 4, 4, 6), np.uint8)[..., ::2]):
        with pytest.raises(TypeError):  # never written into a silent copy
            _core.rollout_window(frames, t, out)
    with pytest.raises(ValueError, match="writeable C-contiguous uint8"):
        _core.rollout_window([np.zeros((3, 4, 4, 4), np.float32)], t, np.zeros((1, 4, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="one grid"):
        _core.rollout_window(frames + [np.zeros((3, 4, 4, 8), np.uint8)], np.array([0, 0]), np.zeros((2, 4, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="no next frame"):
        _core.rollout_advance(np.zeros((1, 4, 4, 4, 4), np.float32), [np.zeros((5, 4, 4, 4), np.uint8)], np.array([4]),
                              np.array([4]), _core.Decision.argmax)
    with pytest.raises(ValueError, match="decision counts needs counts"):
        _core.rollout_advance(np.zeros((1, 4, 4, 4, 4), np.float32), frames, t, np.array([4]), _core.Decision.counts)
    with pytest.raises(TypeError):  # a rule by name: the core takes a Decision
        _core.rollout_advance(np.zeros((1, 4, 4, 4, 4), np.float32), frames, t, np.array([4]), "best")
    # the window interleaves frames t-2, t-1, t (oldest first) from a ring
    ring = np.stack([np.full((4, 4, 4), v, np.uint8) for v in (7, 8, 9)])  # frames 3, 4, 5 in slots 0, 1, 2
    out = np.zeros((1, 4, 4, 4, 3), np.uint8)
    _core.rollout_window([ring], np.array([5]), out)
    assert (out[0, ..., 0] == 7).all() and (out[0, ..., 1] == 8).all() and (out[0, ..., 2] == 9).all()


# --- backends -----------------------------------------------------------------------------------------

def test_cases_file_backend_key(tmp_path):
    import typing

    from calbatch.screen.config import CasesFile, parse
    from calbatch.surrogate import BACKENDS

    assert typing.get_args(CasesFile.model_fields["backend"].annotation) == BACKENDS
    path = tmp_path / "cases.yaml"
    path.write_text("electrodes: [example]\ncds: [30]\nbackend: gpu\n")
    with pytest.raises(CalbatchError, match=r"cases.yaml, line 3: backend: 'gpu' is not one of 'cpu', 'ort-cuda'"):
        parse(path)
    path.write_text("electrodes: [example]\ncds: [30]\nbackend: tensorrt\n")
    assert parse(path)[0].backend == "tensorrt"
    path.write_text("electrodes: [example]\ncds: [30]\n")
    assert parse(path)[0].backend == "cpu"


@pytest.mark.skipif(CUDA, reason="onnxruntime-gpu is installed: its backends are tested below")
@pytest.mark.parametrize("backend", ["ort-cuda", "ort-tensorrt"])
def test_ort_gpu_backends_say_what_is_missing(models, backend):
    from calbatch import Predictor

    with pytest.raises(CalbatchError, match=f"^backend {backend}: onnxruntime-gpu is not installed") as err:
        Predictor(models["tiny"], backend=backend)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed: tested below")
def test_tensorrt_backend_says_what_is_missing(models):
    from calbatch.surrogate import Predictor

    with pytest.raises(CalbatchError, match="^backend tensorrt: the tensorrt package is not installed$"):
        Predictor(models["tiny"], backend="tensorrt")


def test_unknown_backend(models):
    from calbatch.surrogate import BACKENDS, Predictor

    with pytest.raises(CalbatchError, match="^backend 'tpu': unknown \\(one of cpu, ort-cuda, ort-tensorrt, tensorrt\\)"):
        Predictor(models["tiny"], backend="tpu")
    assert BACKENDS[0] == "cpu"


@pytest.mark.skipif(not CUDA, reason="onnxruntime-gpu (CUDAExecutionProvider) is not installed")
@pytest.mark.parametrize("backend", ["ort-cuda"] + (["ort-tensorrt"] if TRT_EP else []))
def test_ort_gpu_backend_equals_the_python_loop_over_its_session(models, backend, tmp_path, monkeypatch):
    from calbatch.surrogate import Predictor

    monkeypatch.setenv("CALBATCH_CACHE", str(tmp_path))
    starts = [random_volume(GRID, seed=s) for s in range(3)]
    cds = [20.0, 35.0, 28.0]
    engine = Predictor(models["tiny"], backend=backend, batch_size=2)
    cases = engine.cases(starts, cds)
    session = engine.backend.session(GRID)
    assert session.get_providers()[0] != "CPUExecutionProvider"
    for case, frames in zip(cases, python_loop(engine, starts, cds, 2, session)):
        assert np.array_equal(case.frames, frames)


@pytest.mark.skipif(not TENSORRT, reason="tensorrt and cupy are not both installed")
def test_tensorrt_backend_matches_the_cpu_and_caches_its_engine(models, tmp_path, monkeypatch):
    from calbatch.surrogate import Predictor

    monkeypatch.setenv("CALBATCH_CACHE", str(tmp_path))
    starts = [random_volume(GRID, seed=s) for s in range(3)]
    cds = [20.0, 35.0, 28.0]
    gpu = Predictor(models["tiny"], backend="tensorrt", batch_size=2)
    cases = gpu.cases(starts, cds)
    engine_file = gpu.backend.engine_file(GRID)
    assert engine_file.is_file()
    built = engine_file.stat().st_mtime_ns
    cpu = Predictor(models["tiny"], batch_size=2).cases(starts, cds)
    for g, c in zip(cases, cpu):  # another device's arithmetic: near-equal first frame, conserved solids
        assert np.mean(g.frames[1] != c.frames[1]) < 1e-3
        for code in (1, 2):
            assert np.count_nonzero(g.final == code) == np.count_nonzero(c.final == code)
    again = Predictor(models["tiny"], backend="tensorrt", batch_size=2)
    again.cases(starts[:1], cds[:1])
    assert engine_file.stat().st_mtime_ns == built  # loaded from the cache, not rebuilt
