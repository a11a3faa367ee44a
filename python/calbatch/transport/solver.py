"""The Fick solve itself: the system on the conducting voxels, its PETSc assembly and CG solve,
one volume (:class:`FickSolver`) or many over split communicators (:func:`solve_batch`). The
method is in the package docstring (:mod:`calbatch.transport`)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .. import _core
from ..common.mpi import first_error, gather_cases, run_guarded, split_groups
from ..electrode.volume import CBD, DEFAULT_CBD_DIFFUSIVITY, PORE, VOID, read_volume, validate
from ..errors import CalbatchError
from .petsc import DEFAULT_PETSC_OPTIONS, OPTIONS_PREFIX, option_used, parse_petsc_options, petsc_error, start_petsc

DEFAULT_TOLERANCE = 1e-4  # relative inlet/outlet flux mismatch
DEFAULT_MAX_ITERATIONS = 20000


@dataclass
class TransportResult:
    """The outcome of one Fick solve; ``d_eff_rel`` is D_eff / D_bulk."""

    d_eff_rel: float
    porosity: float
    tau: float
    percolating: bool
    converged: bool
    inlet_flux: float
    outlet_flux: float
    flux_mismatch: float
    iterations: int
    residual: float
    wall_time_s: float
    solve_time_s: float
    thickness_voxels: int
    unknowns: int
    ranks: int
    cbd_diffusivity: float
    tolerance: float
    ksp_type: str
    pc_type: str

    def to_dict(self) -> dict:
        """Plain dict (tau = inf without a percolating path, see ``percolating``)."""
        return asdict(self)

    def table(self) -> str:
        status = "converged" if self.converged else "NOT CONVERGED"
        if not self.percolating:
            status = "no percolating path (D_eff = 0, tau = inf)"
        return "\n".join(
            [
                f"D_eff / D_bulk         {self.d_eff_rel:.6g}",
                f"porosity (solved eps)  {self.porosity:.6g}",
                f"tortuosity factor      {self.tau:.6g}",
                f"status                 {status}",
                f"inlet / outlet flux    {self.inlet_flux:.6g} / {self.outlet_flux:.6g}"
                f" (mismatch {self.flux_mismatch:.2e}, tolerance {self.tolerance:g})",
                f"iterations             {self.iterations} ({self.ksp_type}+{self.pc_type},"
                f" relative residual {self.residual:.2e})",
                f"solved region          {self.thickness_voxels} slices, {self.unknowns} unknowns,"
                f" CBD D_rel {self.cbd_diffusivity:g}",
                f"wall time              {self.wall_time_s:.3f} s ({self.solve_time_s:.3f} s solve)"
                f" on {self.ranks} rank(s)",
            ]
        )


def electrode_thickness(volume: np.ndarray) -> int:
    """Slices up to and including the highest one holding any non-void voxel."""
    has_electrode = (volume != VOID).reshape(volume.shape[0], -1).any(axis=1)
    return int(np.flatnonzero(has_electrode)[-1]) + 1 if has_electrode.any() else 0


def percolating_mask(conducting: np.ndarray) -> np.ndarray:
    """Conducting voxels whose 6-connected cluster, periodic in x and y, meets slice 0 and the top."""
    from scipy import ndimage, sparse
    from scipy.sparse.csgraph import connected_components

    labels, n = ndimage.label(conducting)
    if n == 0:
        return np.zeros_like(conducting)
    # Clusters that meet across the periodic x and y boundaries are one cluster.
    pairs = [(labels[:, :, 0], labels[:, :, -1]), (labels[:, 0, :], labels[:, -1, :])]
    a = np.concatenate([p[(p > 0) & (q > 0)] for p, q in pairs])
    b = np.concatenate([q[(p > 0) & (q > 0)] for p, q in pairs])
    graph = sparse.coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(n + 1, n + 1))
    _, cluster = connected_components(graph, directed=False)
    spanning = np.intersect1d(cluster[labels[0][labels[0] > 0]], cluster[labels[-1][labels[-1] > 0]])
    keep = np.zeros(n + 1, dtype=bool)
    keep[1:] = np.isin(cluster[1:], spanning)
    return keep[labels]


def unknown_offsets(active: np.ndarray) -> np.ndarray:
    """Global number of the first unknown of each slice of the ``[z, y, x]`` mask ``active``, plus
    the total (nz + 1 entries): unknowns are numbered in C order, as ``_core.fick_rows`` expects."""
    per_slice = np.count_nonzero(active.reshape(active.shape[0], -1), axis=1)
    return np.concatenate([[0], np.cumsum(per_slice)]).astype(np.int64)


def relative_mismatch(inlet: float, outlet: float) -> float:
    """|inlet - outlet| / mean flux; inf while the mean is not positive (early iterates)."""
    mean = 0.5 * (inlet + outlet)
    with np.errstate(over="ignore"):
        return float(abs(inlet - outlet) / mean) if mean > 0 else math.inf


@dataclass
class _Faces:
    """This rank's unknowns on the bottom and top slice and their Dirichlet conductances."""

    bottom: np.ndarray
    top: np.ndarray
    bottom_g: np.ndarray
    top_g: np.ndarray


class FickSolver:
    """Steady Fick diffusion through a volume along z (see the module docstring for the method).

    ``volume``: uint8 ``[z, y, x]`` phase codes; ``comm``: an mpi4py communicator (default
    COMM_WORLD) over which the solve is distributed, every rank passing the same volume;
    ``tolerance``: the relative inlet/outlet flux mismatch that counts as converged;
    ``petsc_options``: PETSc options overriding the defaults, e.g. ``'-pc_type gamg'``.
    """

    def __init__(
        self,
        volume: np.ndarray,
        cbd_diffusivity: float = DEFAULT_CBD_DIFFUSIVITY,
        tolerance: float = DEFAULT_TOLERANCE,
        petsc_options: str | Sequence[str] | dict | None = None,
        comm=None,
        max_iterations: int = DEFAULT_MAX_ITERATIONS,
        source: str = "volume",
    ):
        if not (math.isfinite(cbd_diffusivity) and cbd_diffusivity >= 0):
            raise CalbatchError(f"--cbd-diffusivity: must be a finite number >= 0, got {cbd_diffusivity}")
        if not (math.isfinite(tolerance) and 1e-12 <= tolerance < 1):
            raise CalbatchError(f"--tolerance: must lie in [1e-12, 1), got {tolerance}")
        self.volume = validate(volume, source)
        self.source = source
        self.cbd_diffusivity = float(cbd_diffusivity)
        self.tolerance = float(tolerance)
        self.max_iterations = int(max_iterations)
        self.user_options = parse_petsc_options(petsc_options)
        defaults = dict(DEFAULT_PETSC_OPTIONS)
        if "pc_hypre_boomeramg_relax_type_all" in self.user_options:  # PETSc reads _all first, then
            for cycle in ("down", "up"):  # _down and _up: the defaults must not undo the user's _all
                del defaults[f"pc_hypre_boomeramg_relax_type_{cycle}"]
        self.options = {**defaults, **self.user_options}
        if comm is None:
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
        self.comm = comm
        self.thickness = electrode_thickness(self.volume)
        self.region = self.volume[: self.thickness]  # the solved slices; the void above is cut off
        if not ((self.region == PORE) | (self.region == VOID)).any():
            raise CalbatchError(f"{source}: no pore voxels in the electrode (phase 0), nothing to diffuse through")

    # -- set-up ---------------------------------------------------------------------------------
    def _unknowns(self) -> np.ndarray:
        """Mask of the solved region's voxels that are unknowns: conducting and percolating."""
        return percolating_mask(self._diffusivity_table()[self.region] > 0)

    def _diffusivity_table(self) -> np.ndarray:
        """Diffusivity relative to the bulk by phase code (256 entries): pore and void 1, CBD the
        user's value, AM 0."""
        table = np.zeros(256)
        table[[PORE, VOID]] = 1.0
        table[CBD] = self.cbd_diffusivity
        return table

    def _slab_cuts(self, offsets: np.ndarray) -> np.ndarray:
        """Every rank's z-range (rank r owns slices cuts[r] .. cuts[r+1]): whole slices, cut where the
        unknown count (``unknown_offsets``) crosses k/size of the total. The same on every rank."""
        size = self.comm.Get_size()
        cuts = np.searchsorted(offsets, offsets[-1] * np.arange(size + 1) / size)
        cuts[0], cuts[-1] = 0, len(offsets) - 1
        return cuts

    def _assemble(self, PETSc, active: np.ndarray):
        """This rank's rows of the SPD system A c = b as a distributed AIJ matrix and vectors.

        The C++ core builds the slab's rows in one pass as the two CSR blocks of PETSc's MPIAIJ
        format (the slab's own columns, the neighbouring ranks' columns), which PETSc keeps as its
        storage."""
        nz = active.shape[0]
        offsets = unknown_offsets(active)
        cuts = self._slab_cuts(offsets)
        z0, z1 = (int(c) for c in cuts[self.comm.Get_rank() : self.comm.Get_rank() + 2])
        n_local, n_global = int(offsets[z1] - offsets[z0]), int(offsets[-1])
        index64 = np.dtype(PETSc.IntType).itemsize == 8
        largest = int(np.diff(offsets[cuts]).max())  # judged alike on every rank: none enters PETSc alone
        if not index64 and 7 * largest >= 2**31:
            raise CalbatchError(
                f"{self.source}: {largest} unknowns on one rank overflow this PETSc's 32-bit indices; run on more ranks"
            )
        own, other, bottom_g, top_g = _core.fick_rows(
            np.ascontiguousarray(self.region), active.view(np.uint8), self._diffusivity_table(), offsets, z0, z1, index64
        )
        # PETSc adopts the arrays as its matrix storage (no copy); on one rank there is no other block.
        matrix = PETSc.Mat().createAIJWithArrays(
            size=((n_local, n_global), (n_local, n_global)),
            csr=own if self.comm.Get_size() == 1 else (own, other),
            comm=PETSc.Comm(self.comm),
        )
        matrix.setOption(PETSc.Mat.Option.SPD, True)
        b = matrix.createVecLeft()
        b.setArray(top_g)  # c = 1 half a voxel above the top slice
        x = matrix.createVecRight()
        x.setArray(np.repeat((np.arange(z0, z1) + 0.5) / nz, np.diff(offsets[z0 : z1 + 1])))  # the open-block profile
        bottom, top = np.flatnonzero(bottom_g), np.flatnonzero(top_g)  # local numbers
        return matrix, b, x, _Faces(bottom, top, bottom_g[bottom], top_g[top])

    def _make_ksp(self, PETSc, matrix):
        ksp = PETSc.KSP().create(comm=matrix.getComm())
        ksp.setOperators(matrix)
        ksp.setOptionsPrefix(OPTIONS_PREFIX)
        ksp.setTolerances(max_it=self.max_iterations)  # before the options, so -ksp_max_it wins
        opts = PETSc.Options()
        for name, value in self.options.items():
            opts.setValue(OPTIONS_PREFIX + name, value)
        try:
            ksp.setFromOptions()
            if ksp.getType() == "cg" and "ksp_norm_type" not in self.user_options:
                # CG's plain residual norm costs a vector norm an iteration; the preconditioned one
                # would need a V-cycle more for its scale |B b| (see the convergence test).
                ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
            ksp.setInitialGuessNonzero(True)
            ksp.setUp()
        except PETSc.Error as exc:
            raise CalbatchError(f"--petsc-options: PETSc could not set up the solver with {self._options_text()} ({petsc_error(exc)})") from None
        finally:
            unused = [name for name in self.user_options if not option_used(OPTIONS_PREFIX + name)]
            for name in self.options:
                opts.delValue(OPTIONS_PREFIX + name)
        if unused:
            ksp.destroy()
            raise CalbatchError(
                f"--petsc-options: -{unused[0]} is not a PETSc option this solve uses (misspelt, or it does"
                " not apply to the chosen KSP/PC)"
            )
        return ksp

    @staticmethod
    def _zero_start_residual(PETSc, ksp, b, work) -> float:
        """The residual norm the KSP would report for x = 0: |b|, |B b| or sqrt(b' B b)."""
        norm_type = ksp.getNormType()
        if norm_type == PETSc.KSP.NormType.UNPRECONDITIONED:
            return b.norm()
        if norm_type == PETSc.KSP.NormType.NONE:
            return math.inf  # nothing to compare: the flux balance alone decides
        ksp.getPC().apply(b, work)
        return work.norm() if norm_type == PETSc.KSP.NormType.PRECONDITIONED else math.sqrt(max(b.dot(work), 0.0))

    def _options_text(self) -> str:
        return " ".join(f"-{k} {v}".strip() for k, v in self.user_options.items()) or "the default options"

    # -- solve ----------------------------------------------------------------------------------
    def solve(self) -> TransportResult:
        """Solve and return a :class:`TransportResult` (the same on every rank)."""
        from mpi4py import MPI

        PETSc = start_petsc()
        start = time.perf_counter()
        porosity = float(np.count_nonzero((self.region == PORE) | (self.region == VOID)) / self.region.size)
        active = self._unknowns()
        nz, ny, nx = active.shape
        base = dict(
            porosity=porosity,
            thickness_voxels=nz,
            ranks=self.comm.Get_size(),
            cbd_diffusivity=self.cbd_diffusivity,
            tolerance=self.tolerance,
            ksp_type=self.options.get("ksp_type", ""),
            pc_type=self.options.get("pc_type", ""),
        )
        if not active.any():
            return TransportResult(
                d_eff_rel=0.0, tau=math.inf, percolating=False, converged=True, inlet_flux=0.0, outlet_flux=0.0,
                flux_mismatch=0.0, iterations=0, residual=0.0, unknowns=0, solve_time_s=0.0,
                wall_time_s=time.perf_counter() - start, **base,
            )  # fmt: skip

        matrix, b, x, faces = self._assemble(PETSc, active)
        ksp = self._make_ksp(PETSc, matrix)
        base.update(ksp_type=ksp.getType(), pc_type=ksp.getPC().getType())

        def fluxes(c) -> tuple[float, float]:
            local = np.array([faces.top_g.sum() - faces.top_g @ c[faces.top], faces.bottom_g @ c[faces.bottom]])
            return tuple(self.comm.allreduce(local, op=MPI.SUM))

        # Converged: the flux balance holds and the residual, in the KSP's norm, is below tolerance
        # times that of a zero start, since a symmetric start or a lucky iterate can balance the
        # fluxes while still far off.
        current = x.duplicate()
        residual_scale = self._zero_start_residual(PETSc, ksp, b, current)

        def converged_test(ksp, its, rnorm):
            inlet, outlet = fluxes(ksp.buildSolution(current).getArray(readonly=True))
            mismatch = relative_mismatch(inlet, outlet)
            if mismatch <= self.tolerance and rnorm <= self.tolerance * residual_scale:
                return PETSc.KSP.ConvergedReason.CONVERGED_RTOL
            if its >= ksp.max_it:
                return PETSc.KSP.ConvergedReason.DIVERGED_MAX_IT
            return PETSc.KSP.ConvergedReason.ITERATING

        ksp.setConvergenceTest(converged_test)
        solve_start = time.perf_counter()
        try:
            ksp.solve(b, x)
        except PETSc.Error as exc:
            raise CalbatchError(f"--petsc-options: the solve failed with {self._options_text()} ({petsc_error(exc)})") from None
        solve_time = time.perf_counter() - solve_start
        converged, iterations = ksp.getConvergedReason() > 0, ksp.getIterationNumber()
        inlet, outlet = fluxes(x.getArray(readonly=True))

        # D_eff from the dissipation sum_faces g (dc)^2 = x'Ax - 2b'x + sum(b) = total flux at the
        # solution: its error is quadratic in the solution error (the flux sums' is linear).
        r = current  # reused as the residual
        matrix.mult(x, r)
        dissipation = r.dot(x) - 2.0 * b.dot(x) + b.sum()
        r.aypx(-1.0, b)
        residual = r.norm() / b.norm()
        for obj in (ksp, matrix, b, x, r):
            obj.destroy()
        d_eff = dissipation * nz / (ny * nx)
        return TransportResult(
            d_eff_rel=d_eff, tau=porosity / d_eff, percolating=True, converged=converged, inlet_flux=inlet,
            outlet_flux=outlet, flux_mismatch=relative_mismatch(inlet, outlet),
            iterations=iterations, residual=residual, unknowns=int(np.count_nonzero(active)),
            solve_time_s=solve_time, wall_time_s=time.perf_counter() - start, **base,
        )  # fmt: skip


def tortuosity(volume: np.ndarray | str, **kwargs) -> TransportResult:
    """Solve one volume (an array or a VOLUME spec); keyword arguments go to :class:`FickSolver`."""
    if isinstance(volume, np.ndarray):
        return FickSolver(volume, **kwargs).solve()
    return FickSolver(read_volume(volume), source=str(volume), **kwargs).solve()


def solve_batch(volumes: Sequence[np.ndarray | str], ranks_per_case: int = 1, comm=None, **kwargs) -> list[TransportResult]:
    """Solve many volumes: ``comm`` is split into groups of ``ranks_per_case`` ranks (the last may
    be smaller), group g solves cases g, g + groups, ...; every rank returns all results in order.

    A case that raises anything (a :class:`CalbatchError` or a bug) does not stop the others: after
    all groups finish, every rank raises the first failed case's error, naming the case.
    """
    from mpi4py import MPI

    comm = MPI.COMM_WORLD if comm is None else comm
    start_petsc()  # PetscInitialize is collective over the world: every rank, before any case can fail
    sub, group, groups = split_groups(comm, ranks_per_case)
    try:
        mine = {case: run_guarded(lambda c=case: tortuosity(volumes[c], comm=sub, **kwargs))
                for case in range(group, len(volumes), groups)}
    finally:
        sub.Free()
    results = gather_cases(comm, mine, leader=comm.Get_rank() % ranks_per_case == 0)
    first_error(results)
    return [results[case] for case in range(len(volumes))]
