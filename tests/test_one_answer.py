"""One electrode, one answer: the shipped example electrode at CD 20 through every door -- screen,
demo, rollout + metrics, optimize's curve and the Python API -- gives the same numbers (the same
initial top, voxel size and CBD diffusivity, taken from one place)."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

pytest.importorskip("onnxruntime")

KEYS = ("porosity", "porosity_all", "thickness_um")


@pytest.mark.mpi
def test_every_command_gives_the_same_numbers_for_example_at_cd20(tmp_path):
    from calbatch.data import example_volume_path
    from calbatch.electrode.volume import read_volume
    from calbatch.screen import Predictor

    numbers = {}
    cases = tmp_path / "cases.yaml"
    cases.write_text("electrodes: [example]\ncds: [20]\nfick: on\n")
    proc = run_cli("screen", cases, "--out", tmp_path / "screen", "--quiet")
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads((tmp_path / "screen" / "results.json").read_text())
    numbers["screen"] = {k: row[k] for k in (*KEYS, "tau", "d_eff_rel")}

    proc = run_cli("demo", "--out", tmp_path / "demo", "--quiet")
    assert proc.returncode == 0, proc.stderr
    row = next(r for r in json.loads((tmp_path / "demo" / "results.json").read_text()) if r["cd_percent"] == 20)
    numbers["demo"] = {k: row[k] for k in (*KEYS, "tau", "d_eff_rel")}

    proc = run_cli("rollout", "python/calbatch/data/model.onnx", "example", "--cd", 20, "--out", tmp_path / "s.h5",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout)["frames"] - 1
    proc = run_cli("metrics", f"{tmp_path / 's.h5'}:/frames/{last}", "--json")
    assert proc.returncode == 0, proc.stderr
    numbers["rollout + metrics"] = {k: json.loads(proc.stdout)[k] for k in KEYS}

    target = numbers["screen"]["porosity"] - 0.002
    proc = run_cli("optimize", "example", "--porosity", target, "--cd-range", 20, 30, "--grid", 2, "--xtol", 3,
                   "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    point = next(p for p in json.loads(proc.stdout)["curve"] if p["cd_percent"] == 20)
    numbers["optimize curve"] = {k: point[k] for k in ("porosity", "thickness_um")}

    model = Predictor()  # the shipped particle step starts from the example's pack, as every command does
    r = model.predict(read_volume(example_volume_path()), 20, fick=True, particles=model.particles_of(example_volume_path()))
    numbers["API"] = {**{k: r["metrics"][k] for k in KEYS}, "tau": r["fick"]["tau"], "d_eff_rel": r["fick"]["d_eff_rel"]}

    ref = numbers["screen"]
    for door, values in numbers.items():
        for k, v in values.items():
            assert v == ref[k], (door, k, v, ref[k])  # identical, not close
