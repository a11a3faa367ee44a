"""Effective diffusivity and tortuosity factor of an electrode volume by a steady Fick solve.

Entry points: :class:`FickSolver` (one volume; ``solve()`` returns a :class:`TransportResult`),
:func:`tortuosity` (the same in one call) and :func:`solve_batch` (many volumes over a split
communicator). ``calbatch tortuosity VOLUME`` runs it from the shell, also under ``mpirun -n N``.

Method
------
- Cell-centred finite volumes on the voxel grid, 7-point stencil, unit voxel. The diffusivity of
  the face between two voxels is the harmonic mean of their diffusivities.
- Pore (and any void voxel inside the solved region: electrolyte above a dip in the surface) has
  the bulk diffusivity 1, CBD a relative diffusivity ``cbd_diffusivity``, AM is insulating.
- Periodic in x and y. Concentration 0 half a voxel below slice 0 (current collector side) and 1
  half a voxel above the top slice, so an open block gives tau = 1 exactly.
- The void above the electrode is cut off: the solve runs over slices 0 .. top, top being the
  highest slice that holds any non-void voxel (the electrode thickness of the voxelizer). Keeping
  the void would add a free-electrolyte layer whose length depends on the press position.
- Unknowns exist only on conducting voxels whose cluster (6-connected, periodic in x and y) touches
  both the bottom and the top slice; isolated and one-sided (dead-end) clusters carry no steady
  flux and are dropped, so the matrix is SPD and CG never sees a singular block. When nothing
  percolates, D_eff = 0 and tau = inf with ``percolating = False`` (a result, not an error).
- PETSc (petsc4py) distributed AIJ matrix; each rank owns a slab of whole z-slices holding a near
  equal share of the unknowns; the C++ core builds its rows in PETSc's own MPIAIJ layout, which
  PETSc adopts without a copy. The connectivity labelling is done on every rank over the whole
  volume (memory O(volume) per rank).
- CG with hypre BoomerAMG by default (chosen by measurement, see docs/transport.md); any PETSc
  option may be given (``petsc_options``), and an option that the solve never reads is an error,
  so a typo does not pass silently.
- Converged means the relative mismatch of inlet and outlet flux is at most ``tolerance`` and the
  residual (|b - Ax| with CG) is below the same factor times a zero start's, checked at every
  iteration; a solve that stops short (iteration limit, breakdown) says so with
  ``converged = False``.

Results: D_eff / D_bulk = Q * thickness / (Nx * Ny), Q the total flux for a unit concentration
drop taken from the dissipation sum_faces g dc^2 (equal to the flux at the exact solution, with an
error quadratic in the solution's; the inlet and outlet fluxes are reported too); porosity = pore
fraction of the solved region (void inside it counted as pore; the eps TauFactor uses);
tau = porosity / (D_eff / D_bulk) (MacMullin, D_bulk = 1).

CBD default: the carbon-binder domain is nanoporous and electrolyte-filled. Its relative
diffusivity is taken as Bruggeman's eps_CBD^1.5 with a CBD nanoporosity eps_CBD = 0.5, i.e.
0.5^1.5 = 0.3536, the assumption of the Franco group's electrode-manufacturing models (Chouchane
et al., J. Power Sources 444 (2019) 227285), the group whose DEM electrodes the paper uses. Set
``cbd_diffusivity=0`` to make CBD insulating (as a pore-only solver such as TauFactor's
PeriodicSolver does).
"""

from .petsc import DEFAULT_PETSC_OPTIONS, OPTIONS_PREFIX, parse_petsc_options, start_petsc
from .solver import (
                     DEFAULT_CBD_DIFFUSIVITY,
                     DEFAULT_MAX_ITERATIONS,
                     DEFAULT_TOLERANCE,
                     FickSolver,
                     TransportResult,
                     electrode_thickness,
                     percolating_mask,
                     relative_mismatch,
                     solve_batch,
                     tortuosity,
                     unknown_offsets,
)

__all__ = ["DEFAULT_CBD_DIFFUSIVITY", "DEFAULT_MAX_ITERATIONS", "DEFAULT_PETSC_OPTIONS", "DEFAULT_TOLERANCE", "OPTIONS_PREFIX",
           "FickSolver", "TransportResult", "electrode_thickness", "parse_petsc_options", "percolating_mask",
           "relative_mismatch", "solve_batch", "start_petsc", "tortuosity", "unknown_offsets"]
