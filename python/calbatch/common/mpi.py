"""MPI helpers every parallel stage shares (the Fick batch, the screen): the rank without starting
MPI, printing on one rank, errors agreed by all ranks before a collective, and groups of ranks.

mpi4py is imported only by the functions that take a communicator, so a plain run never needs it.
"""

from __future__ import annotations

import os
import traceback

from ..errors import CalbatchError

# Open MPI, MPICH/Hydra, PMIx and Slurm each tell a process its rank in one of these.
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID")


def world_rank() -> int:
    """This process's rank in the job (0 when not started by mpirun), without initialising MPI."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def is_root() -> bool:
    """True on the one rank that prints (rank 0, or any plain run)."""
    return world_rank() == 0


def agree(comm, error: BaseException | CaseError | None) -> None:
    """Call on every rank of ``comm`` before a collective: when any rank had an error, every rank
    raises the lowest rank's error (a CalbatchError stays one, anything else is re-raised as a
    RuntimeError carrying its traceback), so no rank enters the collective alone."""
    mine = error if error is None or isinstance(error, CaseError) else CaseError(error)
    for found in comm.allgather(mine):
        if found is not None:
            raise found.exception()


class CaseError:
    """A failure as plain data, so it crosses ranks: ``user`` for a CalbatchError (one line), ``bug``
    for anything else (with its traceback)."""

    def __init__(self, error: BaseException):
        self.kind = "user" if isinstance(error, CalbatchError) else "bug"
        self.text = str(error) if self.kind == "user" else "".join(
            traceback.format_exception(type(error), error, error.__traceback__)).rstrip()

    def exception(self, where: str = "") -> BaseException:
        prefix = f"{where}: " if where else ""
        if self.kind == "user":
            return CalbatchError(prefix + self.text)
        return RuntimeError(f"{prefix}failed on another rank or group:\n{self.text}")


def run_guarded(work, *args, **kwargs):
    """``work(*args, **kwargs)``, or a :class:`CaseError` for any exception it raised (not only
    calbatch's: a case that fails must not leave the other ranks of a batch waiting)."""
    try:
        return work(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - handed back as data and re-raised on every rank
        return CaseError(exc)


def split_groups(comm, ranks_per_group: int):
    """Split ``comm`` into consecutive groups of ``ranks_per_group`` ranks (the last may be smaller);
    return (sub-communicator, this group's index, number of groups)."""
    if ranks_per_group < 1:
        raise CalbatchError(f"ranks per case: must be >= 1, got {ranks_per_group}")
    group = comm.Get_rank() // ranks_per_group
    groups = -(-comm.Get_size() // ranks_per_group)
    return comm.Split(color=group, key=comm.Get_rank()), group, groups


def gather_cases(comm, mine: dict, leader: bool) -> dict:
    """Every rank's {case: result} merged on all ranks; only group leaders contribute (every rank
    of a group holds the same results)."""
    merged: dict = {}
    for part in comm.allgather(mine if leader else {}):
        merged.update(part)
    return merged


def first_error(results: dict) -> None:
    """Raise the error of the lowest-numbered failed case, if any (on every rank alike)."""
    for case in sorted(results):
        if isinstance(results[case], CaseError):
            raise results[case].exception(f"case {case}")
