"""PETSc plumbing of the Fick solver: the default solver options, parsing the user's, starting
PETSc (collective over the world, without calbatch's command line) and asking it which options
were read, so a typo in ``--petsc-options`` is an error, not a silent default."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from ..errors import CalbatchError

# CG + BoomerAMG with cheap-setup 3-D settings and one forward SOR sweep down, one backward up (a
# symmetric V-cycle at half the cost of symmetric SOR each way): the fastest of the measured
# choices (docs/transport.md).
DEFAULT_PETSC_OPTIONS = {
    "ksp_type": "cg",
    "pc_type": "hypre",
    "pc_hypre_type": "boomeramg",
    "pc_hypre_boomeramg_coarsen_type": "PMIS",
    "pc_hypre_boomeramg_interp_type": "ext+i",
    "pc_hypre_boomeramg_strong_threshold": "0.5",
    "pc_hypre_boomeramg_agg_nl": "1",
    "pc_hypre_boomeramg_P_max": "4",
    "pc_hypre_boomeramg_relax_type_down": "SOR/Jacobi",
    "pc_hypre_boomeramg_relax_type_up": "backward-SOR/Jacobi",
}
OPTIONS_PREFIX = "calbatch_fick_"


def parse_petsc_options(options: str | Sequence[str] | dict | None) -> dict[str, str]:
    """``'-pc_type gamg -ksp_monitor'`` (or a list of tokens, or a dict) -> ``{name: value}``."""
    if options is None:
        return {}
    if isinstance(options, dict):
        return {str(k).lstrip("-"): "" if v is None else str(v) for k, v in options.items()}
    tokens = shlex.split(options) if isinstance(options, str) else [str(t) for t in options]
    parsed: dict[str, str] = {}
    name = None
    for token in tokens:
        if token.startswith("-") and not _is_number(token):
            name = token.lstrip("-")
            if not name:
                raise CalbatchError(f"--petsc-options: empty option name in {' '.join(tokens)!r}")
            parsed[name] = ""
        elif name is None or parsed[name]:
            raise CalbatchError(f"--petsc-options: value {token!r} does not follow an option name")
        else:
            parsed[name] = token
    return parsed


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def start_petsc():
    """Import PETSc, initialising it without the command line (calbatch's own flags are not PETSc's)."""
    import petsc4py

    if not petsc4py.__dict__.get("_calbatch_initialised"):
        petsc4py.init(["calbatch", "-no_signal_handler"])  # a closed pipe should not print a PETSc crash
        petsc4py._calbatch_initialised = True
    from petsc4py import PETSc

    return PETSc


def option_used(name: str) -> bool:
    """PETSc's own record of whether an option was read (PetscOptionsUsed; not in petsc4py 3.18)."""
    import ctypes
    import ctypes.util

    global _LIBPETSC
    if _LIBPETSC is None:
        found = ctypes.util.find_library("petsc_real") or ctypes.util.find_library("petsc")  # Debian: _real
        _LIBPETSC = ctypes.CDLL(found or "libpetsc.so")
    used = ctypes.c_int(0)
    _LIBPETSC.PetscOptionsUsed(None, name.encode(), ctypes.byref(used))  # stored without "-"
    return bool(used.value)


_LIBPETSC = None


def petsc_error(exc) -> str:
    return "out of memory" if exc.ierr == 55 else f"PETSc error code {exc.ierr}"  # 55: PETSC_ERR_MEM
