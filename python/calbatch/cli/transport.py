"""``calbatch tortuosity VOLUME``: D_eff and tortuosity by the PETSc Fick solve, also under mpirun."""

from __future__ import annotations

from ..errors import InvalidResult
from .output import finite, print_result, stdout_to_stderr


def _tortuosity(args) -> None:
    from .. import transport

    with stdout_to_stderr():  # PETSc monitors (-ksp_monitor) print to fd 1
        result = transport.tortuosity(args.volume, cbd_diffusivity=args.cbd_diffusivity, tolerance=args.tolerance,
                                      petsc_options=args.petsc_options)
    table = f"volume                 {args.volume}\n" + result.table()
    print_result({"volume": args.volume, **result.to_dict()}, args.json, table)
    if not result.converged and not args.allow_unconverged:
        raise InvalidResult(f"{args.volume}: the solve did not converge (flux mismatch {result.flux_mismatch:.2e}, "
                            f"tolerance {result.tolerance:g}); its result is flagged converged=false "
                            "(--allow-unconverged accepts it)")


def add_cli(subparsers) -> None:
    from ..transport import DEFAULT_CBD_DIFFUSIVITY, DEFAULT_TOLERANCE

    p = subparsers.add_parser(
        "tortuosity",
        help="effective diffusivity and tortuosity factor by a Fick solve (PETSc; mpirun -n N to spread it)",
    )
    p.add_argument("volume", help="VOLUME: .npy, .tif/.tiff stack or file.h5:/dataset")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--cbd-diffusivity", type=finite("nonnegative"), default=DEFAULT_CBD_DIFFUSIVITY, metavar="D",
                   help=f"CBD diffusivity relative to the bulk electrolyte (default {DEFAULT_CBD_DIFFUSIVITY:.3f}; "
                        "0 = insulating)")
    p.add_argument("--tolerance", type=finite(), default=DEFAULT_TOLERANCE, metavar="T",
                   help=f"converged when |inlet - outlet| / mean flux is below this (default {DEFAULT_TOLERANCE:g})")
    p.add_argument("--petsc-options", default=None, metavar="'-OPT VALUE ...'",
                   help="PETSc options overriding the defaults (CG + hypre BoomerAMG), e.g. "
                        "--petsc-options='-pc_type gamg -ksp_monitor'")
    p.add_argument("--allow-unconverged", action="store_true",
                   help="exit 0 even when the solve did not converge (the result says converged=false)")
    p.set_defaults(run=_tortuosity)
