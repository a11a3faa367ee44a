"""``calbatch screen``: every case of a cases file (rollout, metrics, optional Fick) spread over the
MPI ranks, each finished case saved at once, so a crash or kill loses none of them.

- Rank 0 reads and checks everything (the cases file, the model, every electrode against the
  model, the CDs against its trained range, a resume against the first run) before anything is
  written; an error is agreed by all ranks (one line, exit 2). It then takes the folder's lock
  (:mod:`calbatch.common.lock`): one run per folder.
- Cases still to do are dealt round robin to the ranks, or, with ``fick.ranks_per_case`` = r > 1,
  to groups of r ranks: the group's first rank rolls out and measures, the group solves Fick. A
  rank or group with no case joins every collective all the same.
- Each rank appends one JSON line per finished case to its own part file (:mod:`.folder`); kept
  volumes and series are written atomically before their line. ``--resume`` skips the cases found
  there and writes new part files, so no case is written twice.
- A case whose prediction is not physical (:mod:`calbatch.electrode.checks`) fails with its reason.
- At the end rank 0 merges the part files into ``results.csv`` / ``results.json`` (one row per case
  of the cases file, in case order), draws the plots and returns the summary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..common.lock import LOCK_NAME, FolderLock, holder
from ..common.mpi import CaseError, agree, run_guarded, split_groups
from ..common.progress import Progress
from ..errors import CalbatchError
from . import folder as fold
from . import report
from .config import Case, Screen, load

# --- checks before anything is written ------------------------------------------------------------

def _predictor(screen: Screen, threads: int | None):
    from ..surrogate.predictor import Predictor

    c = screen.config
    return Predictor(screen.model, rule=c.decision, voxel_size=c.voxel_size, threads=threads or c.threads or None,
                     batch_size=c.batch_size, backend=c.backend)


def prepare(cases_file, out: Path | None, resume: bool, model=None, threads: int | None = None,
            backend: str | None = None, allow_extrapolation: bool = False):
    """Check the cases file, the model, every electrode and CD, the output folder and (on resume)
    that the run in it is the same screen. Returns the :class:`Screen`, the output folder, a
    :class:`~calbatch.screen.Predictor` and the case list (content hashes, CDs)."""
    from ..electrode.checks import cd_margin, check_cd
    from ..electrode.volume import read_volume, voxel_size_of

    screen = load(cases_file, model)
    c = screen.config
    if backend:  # --backend overrides the cases file's backend:
        c.backend = backend
    out = Path(out) if out is not None else Path(f"screen_{screen.source.stem}")
    if out.exists() and not out.is_dir():
        raise CalbatchError(f"--out {out}: exists and is not a folder")
    running = holder(out / LOCK_NAME)
    if running is not None:
        raise CalbatchError(f"--out {out}: another run is using this folder ({running.get('what')}, pid "
                            f"{running.get('pid')} on {running.get('host')}, since {running.get('started')}); "
                            "wait for it to end or choose another --out")
    if out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()) and not resume:
        raise CalbatchError(f"--out {out}: the folder exists; --resume continues it, or choose another --out")
    predictor = _predictor(screen, threads)
    hashes = {}
    for e in screen.electrodes:
        where = f"{screen.source}, line {e.line}" if e.line else str(screen.source)
        try:
            voxel_size_of(e.spec, c.voxel_size, predictor.model.voxel_size, "voxel_size in the cases file")
            volume, _ = predictor.check(read_volume(e.spec), e.spec)
            predictor.particles_of(e.spec)  # a particle model's start: read (or decomposed) and checked now
        except CalbatchError as exc:
            raise CalbatchError(f"{where}: electrode {e.name}: {exc}") from None
        hashes[e.name] = fold.volume_hash(volume)
    if not (allow_extrapolation or c.allow_extrapolation):
        for cd in screen.cds:
            check_cd(cd, predictor.cd_range, cd_margin(predictor.meta), f"{screen.source}: cds: CD")
    case_list = {"model_sha256": fold.file_hash(screen.model), "electrodes": hashes, "cds": screen.cds}
    if resume and out.is_dir() and any(out.iterdir()):
        fold.check_resume(out, screen.settings(), case_list)
    return screen, out, predictor, case_list


# --- one case -------------------------------------------------------------------------------------

def _base(case: Case) -> dict:
    return {"case_id": case.id, "index": case.index, "electrode": case.electrode.name,
            "electrode_file": case.electrode.spec, "cd_percent": case.cd}


def _error_line(err: CaseError) -> str:
    lines = err.text.strip().splitlines() or ["unknown error"]
    return lines[0] if err.kind == "user" else lines[-1]


@dataclass
class _Rolled:
    """A case on its way through the group leader: its series and the metrics of its start, or
    the error that stopped it; the seconds of each stage."""
    case: Case
    timings: dict = field(default_factory=dict)
    state: object = None  # the engine's case while it rolls out
    series: dict | None = None
    before: dict | None = None
    error: CaseError | None = None


class _Worker:
    """A group leader's rollouts (batched) and metrics; every group rank's Fick solve."""

    def __init__(self, screen: Screen, out: Path, predictor, sub, leader: bool, rank: int,
                 writer: fold.PartWriter | None):
        self.screen, self.out, self.p = screen, out, predictor
        self.sub, self.leader, self.rank, self.writer = sub, leader, rank, writer
        self._volumes: dict[str, tuple[np.ndarray, float | None]] = {}
        self.fick = screen.config.fick
        self.keep = screen.config.keep

    def _read(self, spec: str) -> tuple[np.ndarray, float | None]:
        """The electrode and its stated uncalendered top (a pack's), else None: from the voxels."""
        from ..electrode.volume import read_volume, volume_attrs

        if spec not in self._volumes:
            if len(self._volumes) >= 4:
                self._volumes.pop(next(iter(self._volumes)))
            self._volumes[spec] = (read_volume(spec), volume_attrs(spec).get("top_um"))
        return self._volumes[spec]

    def _start(self, case: Case):
        volume, h0 = self._read(case.electrode.spec)
        return self.p.start(volume, case.cd, h0, particles=self.p.particles_of(case.electrode.spec))

    def _rollouts(self, cases: list[Case]) -> list[_Rolled]:
        """One batched loop for the cases that started; each case's series or error."""
        from ..electrode.metrics import measure

        items = [_Rolled(c) for c in cases]
        for item in items:
            t = time.perf_counter()
            state = run_guarded(self._start, item.case)
            item.timings["read"] = time.perf_counter() - t
            if isinstance(state, CaseError):
                item.error = state
            else:
                item.state = state
        started = [item for item in items if item.error is None]
        t = time.perf_counter()
        err = run_guarded(self.p.run, [item.state for item in started])
        share = (time.perf_counter() - t) / max(len(started), 1)
        for item in started:
            if isinstance(err, CaseError):
                item.error = err
                continue
            item.timings["rollout"] = share
            item.series = self.p.series(item.state, source="calbatch screen")
            item.before = measure(item.series["frames"][0], self.p.voxel_size)
        return items

    def run(self, cases: list[Case]) -> None:
        if not cases:  # an idle rank: nothing to roll out, no collective of a case to join
            return
        size = self.p.batch_size if self.leader else 1
        for k in range(0, len(cases), size):
            chunk = cases[k:k + size]
            rolled = self._rollouts(chunk) if self.leader else [_Rolled(c) for c in chunk]
            for item in rolled:
                self._finish(item)

    def _finish(self, item: _Rolled) -> None:
        """The record (leader: metrics, physical checks, kept files) and the group's Fick solve."""
        record, timings = None, item.timings
        if self.leader:
            if item.error is None:
                record = run_guarded(self._record, item)
                if isinstance(record, CaseError):
                    item.error = record
            if item.error is not None:
                record = {**_base(item.case), "status": "failed", "error": _error_line(item.error),
                          "traceback": None if item.error.kind == "user" else item.error.text, "flags": [],
                          "rank": self.rank}
        if self.fick.enabled:
            final = item.series["frames"][-1] if self.leader and item.error is None else None
            final = self.sub.bcast(final, root=0)  # None: the case failed, no solve
            if final is not None:
                t = time.perf_counter()
                result = run_guarded(self._solve, final)
                if self.leader:
                    timings["fick"] = time.perf_counter() - t
                    self._fick_record(record, result)
        if self.leader:
            record["flags"] = ";".join(record["flags"])
            timings["total"] = sum(timings.values())
            record.update({f"time_{k}_s": v for k, v in timings.items()})
            self.writer.write(record)

    @staticmethod
    def _fick_record(record: dict, result) -> None:
        if isinstance(result, CaseError):
            record.update(status="failed", traceback=None if result.kind == "user" else result.text,
                          error="Fick: " + _error_line(result))
            return
        record.update(report.flat_fick(result))
        if not result["percolating"]:
            record["flags"].append("not_percolating")
        elif not result["converged"]:
            record["flags"].append("fick_not_converged")

    def _record(self, item: _Rolled) -> dict:
        from ..electrode.checks import check_series
        from ..electrode.metrics import measure

        series, case = item.series, item.case
        check_series(series)  # not physical: the case fails with the reason
        t = time.perf_counter()
        m = measure(series["frames"][-1], self.p.voxel_size)
        item.timings["metrics"] = time.perf_counter() - t
        steps = series["wall_time_s"][1:]
        extrapolated = bool(series["attrs"]["cd_extrapolated"])
        flags = (["cd_extrapolated"] if extrapolated else []) + [f"{k}_undefined" for k in m["undefined"]]
        record = {**_base(case), "status": "ok", "error": None, "flags": flags,
                  "cd_extrapolated": extrapolated, "frames": len(series["frames"]),
                  "seconds_per_step": float(np.mean(steps)) if steps.size else 0.0, "rank": self.rank,
                  **report.flat_metrics(True, item.before), **report.flat_metrics(False, m)}
        record.update(self._keep(case, series))
        return record

    def _solve(self, volume: np.ndarray) -> dict:
        from ..transport import FickSolver

        f = self.fick
        return FickSolver(volume, cbd_diffusivity=f.cbd_diffusivity, tolerance=f.tolerance, comm=self.sub).solve().to_dict()

    def _keep(self, case: Case, series: dict) -> dict:
        import os

        files: dict = {}
        name = fold.file_name(case.id)
        if self.keep.final_volumes:
            path = self.out / "volumes" / f"{name}.npy"
            tmp = path.with_name(f".{path.name}.tmp.npy")
            np.save(tmp, series["frames"][-1])
            os.replace(tmp, path)
            files["final_volume"] = str(path)
        if self.keep.series:
            from ..electrode.series import write_series

            path = self.out / "series" / f"{name}.h5"
            s = dict(series)
            s["attrs"] = {**series["attrs"], "case_id": case.id, "start_file": case.electrode.spec}
            write_series(path, s)
            files["series_file"] = str(path)
        return files


# --- the whole screen -----------------------------------------------------------------------------

class _Start(NamedTuple):
    screen: Screen
    folder: Path
    predictor: object
    lock: FolderLock
    attempt: int
    done: list


def _first(cases_file, out, resume, model, threads, backend, allow_extrapolation) -> _Start:
    """Rank 0's start: every check, then the lock, the folder and what is left to do."""
    screen, folder, predictor, case_list = prepare(cases_file, out, resume, model, threads, backend,
                                                   allow_extrapolation)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(folder, f"calbatch screen {screen.source}").acquire()
    try:
        attempt = fold.start(folder, screen.source, screen.settings(), case_list)
        done = sorted(fold.finished(folder))
    except BaseException:
        lock.release()
        raise
    return _Start(screen, folder, predictor, lock, attempt, done)


def run_screen(cases_file, out=None, resume: bool = False, model=None, threads: int | None = None,
               progress: bool = False, plots: bool = True, comm=None, backend: str | None = None,
               allow_extrapolation: bool = False) -> dict:
    """Run (or, with ``resume``, continue) the screen of ``cases_file`` into ``out``; every rank
    of ``comm`` (default: the world) must call it. ``progress``: a line per finished case on
    stderr (rank 0). Returns the summary on every rank."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD if comm is None else comm
    rank = comm.Get_rank()
    start = time.perf_counter()
    setup = run_guarded(_first, cases_file, out, resume, model, threads, backend, allow_extrapolation) if rank == 0 else None
    shared = None  # what every rank needs (the lock and the model session stay on rank 0)
    if rank == 0:
        shared = setup if isinstance(setup, CaseError) else (setup.screen, setup.folder, setup.attempt, setup.done)
    shared = comm.bcast(shared, root=0)
    if isinstance(shared, CaseError):
        raise shared.exception()
    screen, folder, attempt, done = shared
    try:
        return _run(comm, screen, folder, attempt, set(done), setup.predictor if rank == 0 else None, threads,
                    progress, plots, start)
    finally:
        if rank == 0:
            setup.lock.release()


def _run(comm, screen: Screen, folder: Path, attempt: int, done: set, predictor, threads, progress: bool,
         plots: bool, start: float) -> dict:
    rank, size = comm.Get_rank(), comm.Get_size()
    pending = [c for c in screen.cases if c.id not in done]
    fick = screen.config.fick
    if fick.enabled:
        from ..transport import start_petsc

        start_petsc()  # PetscInitialize is collective over the world: every rank, before any case can fail
    sub, group, groups = split_groups(comm, fick.ranks_per_case if fick.enabled else 1)
    leader = sub.Get_rank() == 0
    mine = pending[group::groups]
    err = None
    bar = Progress("screen", len(pending), "case", progress) if rank == 0 else None
    sizes: dict = {}

    def tick(record=None) -> None:
        n = fold.count_lines(folder, attempt, sizes)
        if n != bar.done:
            bar.update(n, "" if record is None else f"{record['case_id']} {record['status']}")

    writer = fold.PartWriter(folder, attempt, rank, tick if rank == 0 else None) if leader else None
    try:
        if predictor is None and leader and mine:
            predictor = _predictor(screen, threads)
        _Worker(screen, folder, predictor, sub, leader, rank, writer).run(mine)
    except Exception as exc:  # noqa: BLE001 - agreed below, so no rank waits alone
        err = CaseError(exc)
    finally:
        if writer is not None:
            writer.close()
        sub.Free()
    request = comm.Ibarrier()
    while not request.Test():
        if bar is not None:
            tick()
        time.sleep(0.05)
    if bar is not None:
        tick()
    agree(comm, err)
    summary = None
    if rank == 0:
        summary = run_guarded(_merge, screen, folder, len(done), len(pending), size, time.perf_counter() - start, plots)
    summary = comm.bcast(summary, root=0)
    if isinstance(summary, CaseError):
        raise summary.exception()
    return summary


def _merge(screen: Screen, out: Path, resumed: int, ran: int, ranks: int, wall: float, plots: bool) -> dict:
    records = fold.finished(out)
    rows = [records[c.id] for c in screen.cases if c.id in records]
    tables = report.write_tables(rows, out)
    pngs = report.plots(rows, out / "plots", model=screen.model) if plots else []
    failed = [r for r in rows if r["status"] == "failed"]
    flagged = [r for r in rows if r["status"] == "ok" and r.get("flags")]
    return {"out": str(out), "cases": len(screen.cases), "finished": len(rows), "failed": len(failed),
            "flagged": len(flagged), "skipped_as_done": resumed, "ran": ran, "ranks": ranks,
            "wall_time_s": wall, "cases_per_s": ran / wall if wall > 0 else 0.0,
            "results_csv": tables["csv"], "results_json": tables["json"], "plots": pngs,
            "table": report.table(rows)}
