"""One run per output folder: a lock file in the folder, created atomically, held for the run and
removed at its end. A lock left by a run that was killed is stale, and taken over, when its PID is
dead on this host or, from another host, when its lease has expired (the holder renews the lease
while it runs, so a live run on another node keeps it)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

from ..errors import CalbatchError

LOCK_NAME = "run.lock"
LEASE_S = 120.0  # a holder renews its lease every LEASE_S / 4 seconds


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def holder(path: Path) -> dict | None:
    """The lock's holder (host, pid, started, what) if the lock is live, else None."""
    try:
        info = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return None  # gone, or torn by a kill before its one write landed
    if not isinstance(info, dict):
        return None
    if info.get("host") == socket.gethostname():
        return info if isinstance(info.get("pid"), int) and _alive(info["pid"]) else None
    return info if age < float(info.get("lease_s", LEASE_S)) else None


class FolderLock:
    """``with FolderLock(folder, what):`` -- refused in one line naming the running holder."""

    def __init__(self, folder: Path, what: str):
        self.path, self.what = Path(folder) / LOCK_NAME, what
        self._stop = threading.Event()
        self._renew: threading.Thread | None = None

    def acquire(self) -> FolderLock:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "what": self.what, "lease_s": LEASE_S}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                found = holder(self.path)
                if found is not None:
                    raise CalbatchError(f"{self.path.parent}: another run is using this folder ({found.get('what')}, "
                                        f"pid {found.get('pid')} on {found.get('host')}, since {found.get('started')}); "
                                        "wait for it to end or choose another --out") from None
                stale = self.path.with_name(f".{LOCK_NAME}.stale{os.getpid()}")
                try:  # one taker wins the rename; the others retry against its fresh lock
                    os.replace(self.path, stale)
                    os.remove(stale)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._renew = threading.Thread(target=self._keep, daemon=True)
            self._renew.start()
            return self
        raise CalbatchError(f"{self.path}: could not take the folder's lock (other runs keep taking it)")

    def _keep(self) -> None:
        while not self._stop.wait(LEASE_S / 4):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        if self._renew is None:
            return
        self._stop.set()
        self._renew.join()
        self._renew = None
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
