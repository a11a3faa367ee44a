"""The Fick solver against analytic cases, across MPI ranks, against TauFactor, and its bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from calbatch.cli.output import to_json
from calbatch.electrode.volume import AM, CBD, PORE, VOID
from calbatch.errors import CalbatchError
from calbatch.transport import FickSolver, percolating_mask, solve_batch, tortuosity
from conftest import BASE_ENV, assert_one_line_error, run_cli

pytestmark = pytest.mark.mpi  # PETSc solves throughout

SHAPE = (24, 16, 16)  # z, y, x
TIGHT = 1e-9


def solid(shape=SHAPE) -> np.ndarray:
    return np.full(shape, AM, dtype=np.uint8)


def random_electrode(seed: int, shape=SHAPE) -> np.ndarray:
    """Pore / CBD / AM voxels at random, pore-rich enough to percolate."""
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([PORE, CBD, AM], np.uint8), size=shape, p=[0.55, 0.1, 0.35])


# -- analytic cases ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [SHAPE, (10, 2, 1)], ids=["block", "thin"])
def test_open_block_has_tau_one(shape):
    result = tortuosity(np.zeros(shape, np.uint8), tolerance=TIGHT)
    assert result.converged and result.percolating
    assert result.porosity == 1.0
    assert result.d_eff_rel == pytest.approx(1.0, rel=1e-9)
    assert result.tau == pytest.approx(1.0, rel=1e-9)


def test_straight_channel_has_tau_one():
    volume = solid()
    volume[:, 4:8, 5:9] = PORE
    result = tortuosity(volume, tolerance=TIGHT)
    eps = 16 / 256
    assert result.porosity == pytest.approx(eps)
    assert result.d_eff_rel == pytest.approx(eps, rel=1e-9)
    assert result.tau == pytest.approx(1.0, rel=1e-9)


def test_layers_parallel_to_flux_add_up():
    volume = solid()
    volume[:, :, 0:6] = PORE
    volume[:, :, 6:10] = CBD
    result = tortuosity(volume, cbd_diffusivity=0.3, tolerance=TIGHT)
    assert result.d_eff_rel == pytest.approx(6 / 16 * 1.0 + 4 / 16 * 0.3, rel=1e-9)
    assert result.tau == pytest.approx((6 / 16) / result.d_eff_rel, rel=1e-12)


def test_layers_in_series_add_resistances():
    volume = np.zeros(SHAPE, np.uint8)
    volume[6:14] = CBD  # a third of the thickness
    result = tortuosity(volume, cbd_diffusivity=0.2, tolerance=TIGHT)
    assert result.d_eff_rel == pytest.approx(1 / (16 / 24 / 1.0 + 8 / 24 / 0.2), rel=1e-9)


def test_dead_ends_carry_nothing_and_do_not_stall():
    volume = solid()
    volume[:, 4:8, 5:9] = PORE  # the through channel
    volume[10, 8:14, 6] = PORE  # a dead-end branch off it
    volume[2:5, 12:15, 12:15] = PORE  # an isolated pocket
    volume[:12, 0:2, 0:2] = PORE  # touches the bottom only
    result = tortuosity(volume, tolerance=TIGHT)
    assert result.converged
    assert result.unknowns == 16 * 24 + 6  # channel + branch
    assert result.d_eff_rel == pytest.approx(16 / 256, rel=1e-9)


def test_no_percolating_path_is_a_flagged_result():
    volume = solid()
    volume[:12, 4:8, 4:8] = PORE  # a dead-end pore from the bottom
    volume[14:, 4:8, 4:8] = PORE  # and one from the top
    result = tortuosity(volume)
    assert not result.percolating
    assert result.d_eff_rel == 0.0 and result.tau == float("inf")
    # as JSON: null, and the path listed as non-finite
    assert json.loads(to_json(result.to_dict())) == {**result.to_dict(), "tau": None, "non_finite": ["tau"]}


def test_periodic_wrap_connects_clusters():
    volume = solid()
    volume[:13, 3, 15] = PORE  # lower half at the last x column
    volume[12:, 3, 0] = PORE  # upper half at the first; they meet only across the x boundary
    assert percolating_mask(volume == PORE).sum() == 13 + 12
    assert tortuosity(volume, tolerance=TIGHT).percolating


def test_void_above_the_electrode_is_cut_off():
    volume = random_electrode(1)
    padded = np.concatenate([volume, np.full((6,) + SHAPE[1:], VOID, np.uint8)])
    a, b = tortuosity(volume, tolerance=TIGHT), tortuosity(padded, tolerance=TIGHT)
    assert b.thickness_voxels == SHAPE[0]
    assert b.d_eff_rel == pytest.approx(a.d_eff_rel, rel=1e-9)
    assert b.porosity == a.porosity


def test_flux_balance_and_non_convergence_are_reported():
    volume = random_electrode(2)
    result = tortuosity(volume, tolerance=1e-6)
    assert result.converged and result.flux_mismatch <= 1e-6
    assert result.inlet_flux == pytest.approx(result.outlet_flux, rel=1e-6)
    stopped = tortuosity(volume, tolerance=1e-6, max_iterations=2, petsc_options="-pc_type jacobi")
    assert not stopped.converged and stopped.iterations == 2


def test_petsc_options_override_and_typos_are_caught():
    volume = random_electrode(3)
    reference = tortuosity(volume, tolerance=TIGHT)
    other = tortuosity(volume, tolerance=TIGHT, petsc_options="-pc_type bjacobi -sub_pc_type icc")
    assert other.pc_type == "bjacobi"
    assert other.d_eff_rel == pytest.approx(reference.d_eff_rel, rel=1e-7)
    with pytest.raises(CalbatchError, match="pc_tyep"):
        FickSolver(volume, petsc_options="-pc_tyep gamg").solve()


def test_users_relax_type_all_is_not_undone_by_the_default_sweeps():
    # PETSc reads -pc_hypre_boomeramg_relax_type_all before _down / _up: calbatch's default sweeps
    # must give way, or "all" would silently change only the coarsest level.
    volume = random_electrode(3)

    def after_two_iterations(options: str) -> float:
        return tortuosity(volume, tolerance=TIGHT, max_iterations=2, petsc_options=options).d_eff_rel

    jacobi = "-pc_hypre_boomeramg_relax_type_all Jacobi"
    spelt_out = jacobi + " -pc_hypre_boomeramg_relax_type_down Jacobi -pc_hypre_boomeramg_relax_type_up Jacobi"
    assert after_two_iterations(jacobi) == after_two_iterations(spelt_out)
    assert after_two_iterations(jacobi) != after_two_iterations("")


# -- MPI --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def electrode_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("transport") / "electrode.npy"
    volume = random_electrode(4, shape=(30, 20, 20))
    volume[27:] = VOID
    np.save(path, volume)
    return path


def test_one_and_two_ranks_agree(electrode_file):
    args = ["tortuosity", str(electrode_file), "--json", "--tolerance", "1e-10"]
    one, two = run_cli(*args, ranks=1), run_cli(*args, ranks=2)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    a, b = json.loads(one.stdout), json.loads(two.stdout)  # rank 0 alone prints: one document
    assert (a["ranks"], b["ranks"]) == (1, 2)
    assert a["converged"] and b["converged"]
    assert b["d_eff_rel"] == pytest.approx(a["d_eff_rel"], rel=1e-6)
    assert b["tau"] == pytest.approx(a["tau"], rel=1e-6)


def test_batch_splits_the_communicator(tmp_path):
    script = tmp_path / "batch.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, numpy as np
            from mpi4py import MPI
            from calbatch.transport import solve_batch
            rng = np.random.default_rng(5)
            volumes = [rng.choice(np.array([0, 2], np.uint8), size=(20, 12, 12), p=[0.6, 0.4]) for _ in range(3)]
            one_each = solve_batch(volumes, ranks_per_case=1, tolerance=1e-10)
            both = solve_batch(volumes, ranks_per_case=2, tolerance=1e-10)
            if MPI.COMM_WORLD.rank == 0:
                print(json.dumps([[r.d_eff_rel, r.ranks] for r in one_each + both]))
            """
        )
    )
    done = subprocess.run(["mpirun", "-n", "2", sys.executable, str(script)], capture_output=True, text=True, env=BASE_ENV, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [ranks for _, ranks in rows] == [1, 1, 1, 2, 2, 2]
    rng = np.random.default_rng(5)
    for case, (d_one, _), (d_two, _) in zip(range(3), rows[:3], rows[3:]):
        serial = tortuosity(rng.choice(np.array([0, 2], np.uint8), size=(20, 12, 12), p=[0.6, 0.4]), tolerance=1e-10)
        assert d_one == pytest.approx(serial.d_eff_rel, rel=1e-6), case
        assert d_two == pytest.approx(serial.d_eff_rel, rel=1e-6), case


def test_batch_in_one_process():
    volumes = [np.zeros(SHAPE, np.uint8), random_electrode(6)]
    results = solve_batch(volumes, tolerance=TIGHT)
    assert results[0].d_eff_rel == pytest.approx(1.0, rel=1e-9)
    assert results[1].d_eff_rel == pytest.approx(tortuosity(volumes[1], tolerance=TIGHT).d_eff_rel, rel=1e-12)


# -- the command line and its one-line errors -------------------------------------------------
def test_cli_table(electrode_file):
    done = run_cli("tortuosity", electrode_file)
    assert done.returncode == 0, done.stderr
    assert "tortuosity factor" in done.stdout and "converged" in done.stdout


@pytest.mark.parametrize(
    "volume, extra, message",
    [
        (solid(), [], "no pore"),
        (np.full(SHAPE, 3, np.uint8), [], "unknown phase code 3"),
        (np.zeros(SHAPE, np.uint8), ["--cbd-diffusivity", "-0.5"], "--cbd-diffusivity"),
        (np.zeros(SHAPE, np.uint8), ["--petsc-options", "-pc_tyep gamg"], "-pc_tyep"),
        (np.zeros(SHAPE, np.uint8), ["--petsc-options", "-pc_type gmag"], "pc_type gmag"),
    ],
    ids=["no-pore", "unknown-code", "negative-diffusivity", "option-typo", "option-bad-value"],
)
def test_bad_input_is_one_line(tmp_path, volume, extra, message):
    path = tmp_path / "bad.npy"
    np.save(path, volume)
    done = run_cli("tortuosity", path, *extra)
    assert done.returncode == 2
    assert_one_line_error(done, message)


# -- TauFactor --------------------------------------------------------------------------------
def test_agrees_with_taufactor_on_the_example_electrode():
    taufactor = pytest.importorskip("taufactor")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # its 2-thread sweeps crawl when the other core is busy
    from calbatch.data import example_volume_path
    from calbatch.electrode.volume import read_volume
    from calbatch.transport import electrode_thickness

    volume = read_volume(example_volume_path())
    region = volume[: electrode_thickness(volume)]
    ours = tortuosity(volume, cbd_diffusivity=0.0)  # TauFactor's PeriodicSolver: pore only
    solver = taufactor.PeriodicSolver(((region == PORE) | (region == VOID)).astype(np.uint8), device="cpu")
    try:
        solver.solve(verbose=False, conv_crit=1e-3)
    finally:
        torch.set_num_threads(threads)
    theirs_d, theirs_tau = float(np.ravel(solver.D_eff)[0]), float(np.ravel(solver.tau)[0])
    assert ours.d_eff_rel == pytest.approx(theirs_d, rel=5e-3)
    assert ours.tau == pytest.approx(theirs_tau, rel=5e-3)
