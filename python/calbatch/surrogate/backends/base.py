"""What every backend shares: the protocol the stepping loop calls and the output buffers' shape."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np


class Backend(Protocol):
    """What the stepping loop needs of a backend."""

    name: str
    device: str  # "cpu" or "cuda"

    @classmethod
    def open(cls, name: str, path: Path, session, threads: int | None, batch_size: int, channels: int) -> Backend:
        """The backend ``name`` for the model file ``path`` (``session``: its CPU session, open),
        running up to ``batch_size`` cases whose output has ``channels`` (0: codes)."""

    def run(self, x: np.ndarray, cond: np.ndarray) -> np.ndarray:
        """The network output of one step (a host buffer the backend owns)."""


def cache_dir(kind: str) -> Path:
    """The folder of compiled GPU engines: $CALBATCH_CACHE/<kind>, default ~/.cache/calbatch/<kind>."""
    root = os.environ.get("CALBATCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "calbatch")
    return Path(root) / kind


def output_shape(b: int, grid: tuple, channels: int) -> tuple:
    """The network output of ``b`` cases on ``grid``: class scores (channels 4) or codes (0)."""
    return (b, *grid, channels) if channels else (b, *grid)
