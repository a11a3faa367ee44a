"""A screen's output folder: its manifest (what a ``--resume`` must share with the first run: the
settings and the case list), the part files each rank appends its finished cases to, and the names
of kept files.

- ``screen.json`` holds the settings that change results (model content, rule, voxel size, Fick
  options but not its parallelism, what is kept) and the case list (each electrode's content hash,
  the CDs). A resume compares both and refuses any difference in one line.
- ``parts/run<attempt>-rank<rank>.jsonl``: one JSON line per finished case, flushed and fsync'ed.
  A killed run leaves at most a torn last line, which is ignored (that case runs again).
- Kept files are named by case id, percent-encoded, so two ids never share a file name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ..electrode.series import atomic_text
from ..errors import CalbatchError

MANIFEST = "screen.json"
FORMAT = "calbatch-screen/2"
_PART = re.compile(r"^run(\d+)-rank(\d+)\.jsonl$")


def file_name(case_id: str) -> str:
    """A file name for a case id, one to one: characters outside [A-Za-z0-9_.@+-] (and '%') as %XX."""
    return quote(case_id, safe="@+")


def volume_hash(volume: np.ndarray) -> str:
    """The content hash of an electrode: its shape and voxels, whatever file format holds them."""
    h = hashlib.sha256(repr(volume.shape).encode())
    h.update(np.ascontiguousarray(volume, dtype=np.uint8).data)
    return h.hexdigest()


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- the manifest and resume ------------------------------------------------------------------------

def _case_list_differences(before: dict, now: dict) -> list[str]:
    diffs = []
    if before.get("model_sha256") != now["model_sha256"]:
        diffs.append("the model file's content")
    old, new = before.get("electrodes", {}), now["electrodes"]
    for label, names in (("electrodes added", sorted(set(new) - set(old))),
                         ("electrodes dropped", sorted(set(old) - set(new))),
                         ("electrodes whose voxels changed", sorted(n for n in set(old) & set(new) if old[n] != new[n]))):
        if names:
            diffs.append(f"{label}: {', '.join(names[:3])}" + (f" and {len(names) - 3} more" if len(names) > 3 else ""))
    old_cds, new_cds = set(before.get("cds", [])), set(now["cds"])
    for label, cds in (("CDs added", sorted(new_cds - old_cds)), ("CDs dropped", sorted(old_cds - new_cds))):
        if cds:
            diffs.append(f"{label}: {', '.join(f'{c:g}' for c in cds[:5])}" + (" ..." if len(cds) > 5 else ""))
    return diffs


def check_resume(out: Path, settings: dict, case_list: dict) -> None:
    """Refuse a resume whose settings or case list differ from the run's in ``out`` (one line)."""
    manifest = out / MANIFEST
    if not manifest.is_file():
        raise CalbatchError(f"--resume: {out} holds no {MANIFEST}: not a screen's output folder")
    try:
        data = json.loads(manifest.read_text())
        before, cases_before = data["settings"], data.get("case_list")
    except (ValueError, KeyError, TypeError):
        raise CalbatchError(f"--resume: {manifest} is unreadable") from None
    now = json.loads(json.dumps(settings))
    changed = [k for k in now if before.get(k) != now[k]]
    if changed:
        k = changed[0]
        raise CalbatchError(f"--resume: {k} differs from the run in {out} ({before.get(k)!r} there, {now[k]!r} now); "
                            "choose another --out")
    if cases_before is None:
        raise CalbatchError(f"--resume: {manifest} was written by an older calbatch and does not record its case list; "
                            "start a new folder with another --out")
    diffs = _case_list_differences(cases_before, case_list)
    if diffs:
        raise CalbatchError(f"--resume: the case list differs from the run in {out} ({'; '.join(diffs)}); resume with "
                            "the same cases, or start a new folder with another --out")


def start(out: Path, source: Path, settings: dict, case_list: dict) -> int:
    """Create the output folders and the manifest (once); return this run's attempt number."""
    for sub in ("parts", "volumes", "series"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    attempts = [int(m.group(1)) for p in (out / "parts").iterdir() if (m := _PART.match(p.name))]
    manifest = out / MANIFEST
    if not manifest.is_file():
        from .. import __version__

        text = json.dumps({"format": FORMAT, "calbatch_version": __version__, "cases_file": str(source.resolve()),
                           "settings": settings, "case_list": case_list}, indent=1)
        atomic_text(manifest, text + "\n")
    return max(attempts, default=-1) + 1


# --- part files -----------------------------------------------------------------------------------

def read_parts(out: Path) -> list[dict]:
    """Every complete record in ``out/parts`` (a torn last line of a killed run is skipped), in
    file order (attempt, rank) and line order."""
    records: list[dict] = []
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
    """One rank's part file: a line per finished case, on disk before the next case starts;
    ``after`` (if given) is called after each line."""

    def __init__(self, out: Path, attempt: int, rank: int, after=None):
        self.path = out / "parts" / f"run{attempt:03d}-rank{rank:04d}.jsonl"
        self.file = None
        self.after = after

    def write(self, record: dict) -> None:
        if self.file is None:
            self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        self.file.write(json.dumps(record) + "\n")  # inf / nan as JSON extensions, read back by json
        self.file.flush()
        os.fsync(self.file.fileno())
        if self.after is not None:
            self.after(record)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def count_lines(out: Path, attempt: int, sizes: dict) -> int:
    """Finished cases of this attempt over every rank's part file (``sizes``: what was read before)."""
    count = 0
    for p in (out / "parts").glob(f"run{attempt:03d}-*.jsonl"):
        offset, lines = sizes.get(p.name, (0, 0))
        with open(p, "rb") as f:
            f.seek(offset)
            chunk = f.read()
        lines += chunk.count(b"\n")
        sizes[p.name] = (offset + len(chunk), lines)
        count += lines
    return count
