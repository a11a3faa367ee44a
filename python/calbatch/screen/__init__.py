"""Screening: many electrodes x CDs through a calbatch model, its metrics and (optionally) Fick.

- :class:`Predictor`: the Python API for optimisation loops -- load a model once, then
  ``predict(structures, cds)`` one or many cases (final structure, metrics, optionally the whole
  series and the Fick solve), with no reload and no file I/O per call;
- :func:`run_screen`: ``calbatch screen CASES.yaml`` (also under ``mpirun -n N``), resumable;
- :func:`load`: a cases file, checked (see :mod:`calbatch.screen.config` for its keys).
"""

from ..surrogate.predictor import Predictor, shipped_model
from .config import Case, Screen, load
from .run import run_screen

__all__ = ["Case", "Predictor", "Screen", "load", "run_screen", "shipped_model"]
