"""``calbatch screen``: every case of a cases file (rollout, metrics, optional Fick) spread over the
MPI ranks, each finished case saved at once, so a crash or kill loses none of them.

- Rank 0 reads and checks everything (the cases file, the model, every electrode against the
  model) before anything is written; an error is agreed by all ranks (one line, exit 2).
- Cases still to do are dealt round robin to the ranks, or, with ``fick.ranks_per_case`` = r > 1,
  to groups of r ranks: the group's first rank rolls out and measures, the group solves Fick.
- Each rank appends one JSON line per finished case to its own part file,
  ``DIR/parts/run<attempt>-rank<rank>.jsonl`` (written, flushed and fsync'ed; kept volumes and
  series are written atomically before their line). A run that is killed leaves at most a torn
  last line, which is ignored, and that case is done again on ``--resume``.
- ``--resume`` reads every part file, skips the cases found there and writes new part files (a new
  attempt number), so no case is written twice; the merge keeps each case's first record.
- At the end rank 0 merges the part files into ``results.csv`` / ``results.json`` (one row per case
  of the cases file, in case order), draws the plots and returns the summary.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from ..common.mpi import CaseError, agree, run_guarded, split_groups
from ..electrode.series import atomic_text
from ..errors import CalbatchError
from . import report
from .config import Case, Screen, load

MANIFEST = "screen.json"
_PART = re.compile(r"^run(\d+)-rank(\d+)\.jsonl$")


def _safe(case_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+@-]", "_", case_id)


# --- part files -----------------------------------------------------------------------------------

def read_parts(out: Path) -> list[dict]:
    """Every complete record in ``out/parts`` (a torn last line of a killed run is skipped), in
    file order (attempt, rank) and line order."""
    records = []
    parts = out / "parts"
    if not parts.is_dir():
        return records
    names = sorted((tuple(int(g) for g in m.groups()), p.name) for p in parts.iterdir() if (m := _PART.match(p.name)))
    for _, name in names:
        with open(parts / name, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # torn by a kill: the case was not finished
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return records


def finished(out: Path) -> dict[str, dict]:
    """case id -> its first record."""
    done: dict[str, dict] = {}
    for r in read_parts(out):
        done.setdefault(r["case_id"], r)
    return done


class PartWriter:
    """One rank's part file: a line per finished case, on disk before the next case starts."""

    def __init__(self, out: Path, attempt: int, rank: int):
        self.path = out / "parts" / f"run{attempt:03d}-rank{rank:04d}.jsonl"
        self.file = None

    def write(self, record: dict) -> None:
        if self.file is None:
            self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        self.file.write(json.dumps(record) + "\n")  # inf / nan as JSON extensions, read back by json
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class _Progress:
    """Rank 0's bar over every rank's finished cases (counted from the part files' lines)."""

    def __init__(self, out: Path, attempt: int, total: int, show: bool | None):
        from tqdm import tqdm

        self.parts, self.prefix = out / "parts", f"run{attempt:03d}-"
        self.sizes: dict[str, tuple[int, int]] = {}
        self.bar = tqdm(total=total, desc="screen", unit="case", file=sys.stderr,
                        disable=(not sys.stderr.isatty()) if show is None else not show)

    def poll(self) -> None:
        count = 0
        for p in self.parts.glob(self.prefix + "*.jsonl"):
            offset, lines = self.sizes.get(p.name, (0, 0))
            with open(p, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            lines += chunk.count(b"\n")
            self.sizes[p.name] = (offset + len(chunk), lines)
            count += lines
        self.bar.update(count - self.bar.n)

    def close(self) -> None:
        self.poll()
        self.bar.close()


# --- checks before anything is written ------------------------------------------------------------

def prepare(cases_file, out: Path | None, resume: bool, model=None, threads: int | None = None,
            backend: str | None = None):
    """Check the cases file, the model and every electrode; check the output folder. Returns the
    :class:`Screen`, the output folder and a :class:`~calbatch.screen.Predictor`."""
    from ..electrode.volume import read_volume
    from ..surrogate.predictor import Predictor

    screen = load(cases_file, model)
    c = screen.config
    if backend:  # --backend overrides the cases file's backend:
        c.backend = backend
    out = Path(out) if out is not None else Path(f"screen_{screen.source.stem}")
    manifest = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise CalbatchError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not resume:
            raise CalbatchError(f"--out {out}: the folder exists; --resume continues it, or choose another --out")
        if not manifest.is_file():
            raise CalbatchError(f"--resume: {out} holds no {MANIFEST}: not a screen's output folder")
        try:
            before = json.loads(manifest.read_text())["settings"]
        except (ValueError, KeyError):
            raise CalbatchError(f"--resume: {manifest} is unreadable") from None
        now = json.loads(json.dumps(screen.settings()))
        changed = [k for k in now if before.get(k) != now[k]]
        if changed:
            raise CalbatchError(f"--resume: {changed[0]} differs from the run in {out} ({before.get(changed[0])!r} "
                                f"there, {now[changed[0]]!r} now); choose another --out")
    predictor = Predictor(screen.model, rule=c.decision, voxel_size=c.voxel_size, threads=threads or c.threads or None,
                          batch_size=c.batch_size, backend=c.backend)
    for e in screen.electrodes:
        where = f"{screen.source}, line {e.line}" if e.line else str(screen.source)
        try:
            predictor.check(read_volume(e.spec), e.spec)
        except CalbatchError as exc:
            raise CalbatchError(f"{where}: electrode {e.name}: {exc}") from None
    return screen, out, predictor


def _start_folder(screen: Screen, out: Path) -> int:
    """Create the output folders and manifest; return this run's attempt number."""
    for sub in ("parts", "volumes", "series"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    attempts = [int(m.group(1)) for p in (out / "parts").iterdir() if (m := _PART.match(p.name))]
    attempt = max(attempts, default=-1) + 1
    manifest = out / MANIFEST
    if not manifest.is_file():
        from .. import __version__

        text = json.dumps({"format": "calbatch-screen/1", "calbatch_version": __version__,
                           "cases_file": str(screen.source.resolve()), "settings": screen.settings()}, indent=1)
        atomic_text(manifest, text + "\n")
    return attempt


# --- one case -------------------------------------------------------------------------------------

def _base(case: Case) -> dict:
    return {"case_id": case.id, "index": case.index, "electrode": case.electrode.name,
            "electrode_file": case.electrode.spec, "cd_percent": case.cd}


def _failed(case: Case, err: CaseError, rank: int, timings: dict) -> dict:
    lines = err.text.strip().splitlines() or ["unknown error"]
    return {**_base(case), "status": "failed", "error": lines[0] if err.kind == "user" else lines[-1],
            "traceback": None if err.kind == "user" else err.text, "flags": "", "rank": rank,
            **{f"time_{k}_s": v for k, v in timings.items()}}


class _Worker:
    """A group leader's rollouts (batched) and metrics; every group rank's Fick solve."""

    def __init__(self, screen: Screen, out: Path, predictor, comm, sub, leader: bool, writer: PartWriter | None):
        self.screen, self.out, self.p = screen, out, predictor
        self.comm, self.sub, self.leader, self.writer = comm, sub, leader, writer
        self.rank = comm.Get_rank()
        self._volumes: dict[str, np.ndarray] = {}
        self.fick = screen.config.fick
        self.keep = screen.config.keep

    def _read(self, spec: str) -> np.ndarray:
        from ..electrode.volume import read_volume

        if spec not in self._volumes:
            if len(self._volumes) >= 4:
                self._volumes.pop(next(iter(self._volumes)))
            self._volumes[spec] = read_volume(spec)
        return self._volumes[spec]

    def _rollouts(self, cases: list[Case]) -> list:
        """(series or CaseError, timings) per case; one batched loop for the cases that started."""
        from ..electrode.metrics import measure

        started, out = [], []
        for case in cases:
            timings = {}
            t = time.perf_counter()
            state = run_guarded(lambda c=case: self.p._start(self._read(c.electrode.spec), c.cd, None))
            timings["read"] = time.perf_counter() - t
            out.append([state, timings])
            if not isinstance(state, CaseError):
                started.append(state)
        t = time.perf_counter()
        err = run_guarded(self.p._run, started)
        share = (time.perf_counter() - t) / max(len(started), 1)
        for item in out:
            if isinstance(item[0], CaseError):
                continue
            if isinstance(err, CaseError):
                item[0] = err
                continue
            item[1]["rollout"] = share
            series = self.p._series(item[0])
            item[0] = series
            item.append(measure(series["frames"][0], self.p.voxel_size))
        return out

    def run(self, cases: list[Case]) -> None:
        size = self.p.batch_size if self.leader else 1
        for k in range(0, len(cases), size):
            chunk = cases[k:k + size]
            rolled = self._rollouts(chunk) if self.leader else [None] * len(chunk)
            for case, item in zip(chunk, rolled):
                self._finish(case, item)

    def _finish(self, case: Case, item) -> None:
        """Metrics of the final structure (leader), the Fick solve (the group), the record (leader)."""
        record, final = None, None
        if self.leader:
            series, timings = item[0], item[1]
            if isinstance(series, CaseError):
                record = _failed(case, series, self.rank, timings)
            else:
                record = run_guarded(self._record, case, series, item[2], timings)
                if isinstance(record, CaseError):
                    record = _failed(case, record, self.rank, timings)
                else:
                    final = series["frames"][-1]
        if self.fick.enabled:
            final = self.sub.bcast(final, root=0)  # None: the case failed, no solve
            if final is not None:
                t = time.perf_counter()
                result = run_guarded(self._solve, final)
                if self.leader:
                    timings["fick"] = time.perf_counter() - t
                    if isinstance(result, CaseError):
                        lines = result.text.strip().splitlines()
                        record.update(status="failed", traceback=None if result.kind == "user" else result.text,
                                      error="Fick: " + lines[0 if result.kind == "user" else -1])
                    else:
                        record.update(report.flat_fick(result))
                        if not result["percolating"]:
                            record["flags"].append("not_percolating")
                        elif not result["converged"]:
                            record["flags"].append("fick_not_converged")
        if self.leader:
            record["flags"] = ";".join(record["flags"]) if isinstance(record["flags"], list) else record["flags"]
            timings["total"] = sum(timings.values())
            record.update({f"time_{k}_s": v for k, v in timings.items()})
            self.writer.write(record)

    def _record(self, case: Case, series: dict, before: dict, timings: dict) -> dict:
        from ..electrode.metrics import measure

        t = time.perf_counter()
        m = measure(series["frames"][-1], self.p.voxel_size)
        timings["metrics"] = time.perf_counter() - t
        steps = series["wall_time_s"][1:]
        extrapolated = bool(series["attrs"]["cd_extrapolated"])
        record = {**_base(case), "status": "ok", "error": None, "flags": ["cd_extrapolated"] if extrapolated else [],
                  "cd_extrapolated": extrapolated, "frames": len(series["frames"]),
                  "seconds_per_step": float(np.mean(steps)) if steps.size else 0.0, "rank": self.rank,
                  **report.flat_metrics(True, before), **report.flat_metrics(False, m)}
        record.update(self._keep(case, series))
        return record

    def _solve(self, volume: np.ndarray) -> dict:
        from ..transport import FickSolver

        f = self.fick
        return FickSolver(volume, cbd_diffusivity=f.cbd_diffusivity, tolerance=f.tolerance, comm=self.sub).solve().to_dict()

    def _keep(self, case: Case, series: dict) -> dict:
        files: dict = {}
        name = _safe(case.id)
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

def run_screen(cases_file, out=None, resume: bool = False, model=None, threads: int | None = None,
               progress: bool | None = None, plots: bool = True, comm=None, backend: str | None = None) -> dict:
    """Run (or, with ``resume``, continue) the screen of ``cases_file`` into ``out``; every rank
    of ``comm`` (default: the world) must call it. Returns the summary on every rank."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD if comm is None else comm
    rank, size = comm.Get_rank(), comm.Get_size()
    start = time.perf_counter()
    setup = None
    if rank == 0:
        def first():
            screen, folder, predictor = prepare(cases_file, out, resume, model, threads, backend)
            attempt = _start_folder(screen, folder)
            done = finished(folder)
            return screen, folder, predictor, attempt, sorted(done)
        setup = run_guarded(first)
        shared = setup if isinstance(setup, CaseError) else setup[:2] + setup[3:]
    else:
        shared = None
    shared = comm.bcast(shared, root=0)
    if isinstance(shared, CaseError):
        raise shared.exception()
    screen, folder, attempt, done = shared
    done = set(done)
    pending = [c for c in screen.cases if c.id not in done]
    fick = screen.config.fick
    if fick.enabled:
        from ..transport import start_petsc

        start_petsc()  # PetscInitialize is collective over the world: every rank, before any case can fail
    per_case = fick.ranks_per_case if fick.enabled else 1
    sub, group, groups = split_groups(comm, per_case)
    leader = sub.Get_rank() == 0
    mine = pending[group::groups]
    err = None
    writer = PartWriter(folder, attempt, rank) if leader else None
    bar = _Progress(folder, attempt, len(pending), progress) if rank == 0 else None
    try:
        if rank == 0:
            predictor = setup[2]
        elif leader and mine:
            from ..surrogate.predictor import Predictor

            c = screen.config
            predictor = Predictor(screen.model, rule=c.decision, voxel_size=c.voxel_size,
                                  threads=threads or c.threads or None, batch_size=c.batch_size, backend=c.backend)
        else:
            predictor = None
        worker = _Worker(screen, folder, predictor, comm, sub, leader, writer)
        if rank == 0 and bar is not None:
            writer.write = _and_poll(writer.write, bar)
        worker.run(mine)
    except Exception as exc:  # noqa: BLE001 - agreed below, so no rank waits alone
        err = CaseError(exc)
    finally:
        if writer is not None:
            writer.close()
        sub.Free()
    request = comm.Ibarrier()
    while not request.Test():
        if bar is not None:
            bar.poll()
        time.sleep(0.05)
    if bar is not None:
        bar.close()
    agree(comm, err)
    summary = None
    if rank == 0:
        summary = run_guarded(_merge, screen, folder, len(done), len(pending), size, time.perf_counter() - start, plots)
    summary = comm.bcast(summary, root=0)
    if isinstance(summary, CaseError):
        raise summary.exception()
    return summary


def _and_poll(write, bar):
    def wrapped(record):
        write(record)
        bar.poll()
    return wrapped


def _merge(screen: Screen, out: Path, resumed: int, ran: int, ranks: int, wall: float, plots: bool) -> dict:
    records = finished(out)
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
