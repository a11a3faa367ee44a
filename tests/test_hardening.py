"""Every command as a new user would try it: bad input is one line and exit 2 with nothing written,
a missing optional dependency names its install command, --json is strict JSON alone on stdout,
and under mpirun one rank prints and no rank is left waiting."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import calbatch
from calbatch.data import example_volume_path
from conftest import BASE_ENV, assert_one_line_error, random_volume, run_cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_H5 = example_volume_path().split(":")[0]
PACK_V2 = ROOT / "data/dem/default/packs/ms1.h5"
PARTICLES_V1 = ROOT / "data/dem/v1/particles/ms1_cd45.h5"


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity literals."""

    def refuse(name):
        raise ValueError(f"non-standard JSON literal {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, random_volume())
    return path


# ---------------------------------------------------------------- failures a user met: one clear line each

def test_calender_of_a_file_that_is_not_a_pack(tmp_path):
    proc = run_cli("dem", "calender", EXAMPLE_H5, "--cd", "30", "--out", tmp_path / "x.h5")
    assert_one_line_error(proc, "example_electrode.h5", "not a calbatch-dem-pack/2 file")
    assert not list(tmp_path.iterdir())


def test_revoxelize_of_a_pack_file(tmp_path):
    proc = run_cli("dem", "revoxelize", PACK_V2, "--out", tmp_path / "r.h5")
    assert_one_line_error(proc, "ms1.h5", "not a calbatch-dem-series/2 file", "calbatch-dem-pack/2")
    assert not list(tmp_path.iterdir())


def test_plot_of_a_shipped_particle_file(tmp_path):
    proc = run_cli("dem", "plot", PARTICLES_V1, "--out", tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(strict_json(proc.stdout)["plots"]) == 3


def test_speed_zero_is_refused(tmp_path):
    proc = run_cli("dem", "calender", PACK_V2, "--cd", "30", "--out", tmp_path / "y.h5", "--speed", "0")
    assert_one_line_error(proc, "--speed", "must be positive")


def test_missing_optional_dependency_names_the_install_command(small):
    # the modules are made unimportable the way a machine without them is
    code = ("import sys; sys.modules['petsc4py'] = None; sys.modules['mpi4py'] = None; "
            f"from calbatch.cli import main; sys.exit(main(['tortuosity', {str(small)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=BASE_ENV, timeout=120)
    assert_one_line_error(proc, "is not installed", "tools/setup.sh")
    assert proc.returncode == 2


@pytest.mark.mpi
def test_unconverged_solve_is_strict_json_and_exits_nonzero(small):
    args = ["tortuosity", small, "--json", "--tolerance", "1e-9", "--petsc-options", "-ksp_max_it 1 -pc_type jacobi"]
    proc = run_cli(*args)
    assert proc.returncode == 3, proc.stderr
    result = strict_json(proc.stdout)
    assert result["converged"] is False and isinstance(result["flux_mismatch"], float)
    assert "did not converge" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert run_cli(*args, "--allow-unconverged").returncode == 0


@pytest.mark.mpi
def test_non_finite_numbers_become_null_with_a_flag(tmp_path):
    blocked = np.full((6, 6, 6), 2, np.uint8)  # AM everywhere but one dead-end pore: nothing percolates
    blocked[0, 0, 0] = 0
    np.save(tmp_path / "b.npy", blocked)
    proc = run_cli("tortuosity", tmp_path / "b.npy", "--json")
    assert proc.returncode == 0, proc.stderr
    result = strict_json(proc.stdout)
    assert result["tau"] is None and result["percolating"] is False and "tau" in result["non_finite"]


@pytest.mark.mpi
def test_petsc_monitor_output_stays_off_stdout(small):
    proc = run_cli("tortuosity", small, "--json", "--petsc-options=-ksp_monitor")
    assert proc.returncode == 0, proc.stderr
    strict_json(proc.stdout)  # nothing but the JSON
    assert "KSP Residual norm" in proc.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-0.4"])
def test_voxel_size_must_be_finite_and_positive(small, value):
    assert_one_line_error(run_cli("metrics", small, f"--voxel-size={value}"), "--voxel-size")


def test_closed_pipe_is_quiet(small):
    command = f"{sys.executable} -m calbatch metrics {small} --json | head -1"
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=BASE_ENV, timeout=60)
    assert proc.stdout.strip() == "{" and "Broken pipe" not in proc.stderr and "Traceback" not in proc.stderr


def test_revoxelize_to_a_non_h5_name_is_refused(tmp_path):
    proc = run_cli("dem", "revoxelize", PARTICLES_V1, "--out", tmp_path / "r.npy")
    assert_one_line_error(proc, "r.npy", ".h5")
    assert not list(tmp_path.iterdir())


def test_dataset_needs_an_explicit_folder():
    assert_one_line_error(run_cli("dem", "dataset"), "--out")


def test_bare_calbatch_prints_its_help():
    proc = run_cli()
    assert proc.returncode == 0 and "COMMAND" in proc.stdout and "tortuosity" in proc.stdout


def test_one_source_for_the_version():
    assert importlib.metadata.version("calbatch") == calbatch.__version__
    assert run_cli("--version").stdout.strip() == f"calbatch {calbatch.__version__}"


def test_flag_names_follow_the_api():
    text = run_cli("dem", "pack", "--help").stdout
    for flag in ("--n-am", "--microstructure-id", "--nprocs", "--mass-ratio", "--nanoporosity"):
        assert flag in text, flag


# ---------------------------------------------------------------- further bad inputs

BAD_INPUTS = [
    (["metrics", "missing.npy"], ["missing.npy"]),
    (["metrics", "SMALL", "--nanoporosity", "1.5"], ["--nanoporosity"]),
    (["metrics", "SMALL_H5:/nope"], ["/nope"]),
    (["metrics", "v.txt"], ["v.txt"]),
    (["tortuosity", "SMALL", "--tolerance", "0"], ["--tolerance"]),
    (["tortuosity", "SMALL", "--cbd-diffusivity", "-1"], ["--cbd-diffusivity"]),
    (["tortuosity", "SMALL", "--tolerance", "nan"], ["--tolerance"]),
    (["dem", "pack", "--out", "OUT/p.h5", "--box", "nan"], ["--box"]),
    (["dem", "pack", "--out", "OUT/p.h5", "--mass-ratio", "96"], ["--mass-ratio", "AM:CBD"]),
    (["dem", "pack", "--out", "OUT/p.h5", "--mass-ratio", "0:4"], ["--mass-ratio"]),
    (["dem", "pack", "--out", "OUT/p.h5", "--nanoporosity", "1"], ["--nanoporosity"]),
    (["dem", "pack", "--out", "OUT/p.h5", "--cbd-diameter", "0"], ["--cbd-diameter"]),
    (["dem", "pack", "--out", "OUT/p.h5", "--seed", "abc"], ["--seed"]),
    (["dem", "pack", "--out", "OUT/p.h5", "--nprocs", "0"], ["--nprocs"]),
    (["dem", "calender", "PACK", "--cd", "30", "--out", "OUT/s.h5", "--frame-interval", "-1"], ["--frame-interval"]),
    (["dem", "calender", "PACK", "--cd", "inf", "--out", "OUT/s.h5"], ["--cd"]),
    (["dem", "calender", "PACK", "--cd", "30", "--out", "OUT/s.h5", "--nz", "0"], ["--nz"]),
    (["dem", "calender", "PACK", "--cd", "30", "--out", "OUT/s.h5", "--dt", "nan"], ["--dt"]),
    (["dem", "revoxelize", "PARTICLES", "PARTICLES", "--out", "OUT/two.h5"], ["folder"]),
    (["dem", "revoxelize", "PARTICLES", "--out", "OUT/r.h5", "--voxel-size", "-1"], ["--voxel-size"]),
    (["dem", "dataset", "--out", "OUT/ds", "--workers", "0"], ["--workers"]),
    (["dem", "dataset", "--out", "OUT/ds", "--n", "0", "--n-random", "0"], ["at least one electrode"]),
    (["dem", "dataset", "--out", "OUT/ds", "--random-cds", "0"], ["--random-cds"]),
    (["dem", "dataset", "--out", "OUT/ds", "--cd", "95"], ["--cd", "95"]),
    (["dem", "plot", "missing.h5", "--out", "OUT/plots"], ["missing.h5"]),
    (["dem"], ["VERB"]),
    (["nonsense"], ["nonsense"]),
]


@pytest.mark.parametrize("args, fragments", BAD_INPUTS, ids=[" ".join(a[:3]) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, small, args, fragments):
    (tmp_path / "out").mkdir()
    np.save(tmp_path / "h5src.npy", random_volume())
    import h5py

    with h5py.File(tmp_path / "small.h5", "w") as f:
        f["volume"] = random_volume()
    names = {"SMALL": str(small), "SMALL_H5": str(tmp_path / "small.h5"), "PACK": str(PACK_V2),
             "PARTICLES": str(PARTICLES_V1)}
    resolved = []
    for a in args:
        head, sep, tail = a.partition(":")
        a = names.get(head, head) + sep + tail if head in names else a
        resolved.append(a.replace("OUT/", str(tmp_path / "out") + "/"))
    if args[:1] == ["metrics"] and args[1] == "v.txt":
        (tmp_path / "v.txt").write_text("not a volume")
        resolved[1] = str(tmp_path / "v.txt")
    proc = run_cli(*resolved)
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc, *fragments)
    assert not list((tmp_path / "out").rglob("*")), "a failed command left files behind"


# ---------------------------------------------------------------- under mpirun

@pytest.mark.mpi
def test_one_rank_prints_results_and_errors(small):
    proc = run_cli("metrics", small, "--json", ranks=2)
    assert proc.returncode == 0, proc.stderr
    strict_json(proc.stdout)  # one JSON document, not two
    # errors once, not once per rank (mpirun adds its own banner about the exit status)
    bad = run_cli("metrics", small, "--voxel-size", "nan", ranks=2)
    assert bad.returncode != 0 and bad.stderr.count("calbatch metrics: error:") == 1, bad.stderr
    missing = run_cli("tortuosity", "missing.npy", ranks=2)
    assert missing.returncode != 0 and missing.stderr.count("calbatch tortuosity: error:") == 1, missing.stderr
    assert "missing.npy" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.mpi
def test_a_failing_case_does_not_hang_the_batch(tmp_path):
    script = tmp_path / "batch.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        from calbatch import CalbatchError
        from calbatch.transport import solve_batch
        good = np.zeros((8, 6, 6), np.uint8)

        class Flaky(list):  # a volume source with a bug that strikes case 1, in one group only
            def __getitem__(self, i):
                if i == 1:
                    raise ZeroDivisionError("a bug in case 1")
                return super().__getitem__(i)

        try:
            solve_batch(Flaky([good, good, good]), ranks_per_case=1)
        except RuntimeError as exc:
            print(f"raised {str(exc).splitlines()[0]}", flush=True)
        # a user error in one group: the same one-line error on every rank
        try:
            solve_batch([good, good, "missing.npy"], ranks_per_case=1)
        except CalbatchError as exc:
            print(f"user {exc}", flush=True)
    """))
    proc = subprocess.run(["mpirun", "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                          env=BASE_ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # both ranks raise both errors (their lines may interleave: count, do not split)
    assert proc.stdout.count("raised case 1: failed on another rank or group:") == 2, proc.stdout
    assert proc.stdout.count("user case 2: missing.npy: no such file") == 2, proc.stdout
