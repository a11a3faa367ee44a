"""The public runtime: :class:`Predictor` loads a calbatch model once, then rolls out and measures
any number of (structure, CD) cases with no reload and no file I/O per call -- the Python API for
optimisation loops, and the screen's worker. It is the stepping loop (:class:`calbatch.surrogate.step.Stepper`:
several cases on one grid can share each network call, ``batch_size``) with series, final
structures, metrics and the Fick solve on top.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data import shipped_model_path
from ..electrode.checks import check_frames
from ..electrode.volume import validate
from ..errors import CalbatchError
from .rules import DEFAULT_RULE
from .step import Stepper, electrode_top


def shipped_model(option: str = "the model parameter") -> Path:
    """The shipped model's path, or a one-line error naming ``option`` when there is none yet."""
    path = shipped_model_path()
    if not path.is_file():
        raise CalbatchError(f"no shipped model yet ({path} is missing): give a model file with {option}")
    return path



def cd_value(cd) -> float:
    """A CD given to the API: a real number (not a string, not a bool), finite."""
    if isinstance(cd, (str, bytes, bool, np.bool_)) or not isinstance(cd, (int, float, np.integer, np.floating)):
        raise CalbatchError(f"predict: a CD is a number in percent, got {cd!r}")
    if not np.isfinite(cd):
        raise CalbatchError(f"predict: a CD is a finite number, got {cd!r}")
    return float(cd)

class Predictor(Stepper):
    """A calbatch ONNX model held open (metadata checked once), with :meth:`rollout` (a series, as
    :func:`calbatch.surrogate.rollout.rollout`) and :meth:`predict` (final structure, metrics, optionally the
    series and the Fick solve) for one or many cases; :meth:`start`, :meth:`run` and :meth:`series`
    step cases by hand.

    ``model``: the ONNX file (default: the shipped model); ``rule``: the decision rule
    (:data:`calbatch.surrogate.rules.RULES`); ``voxel_size``: um (default: the model's); ``threads``:
    ONNX Runtime intra-op threads; ``batch_size``: cases on one grid sharing a network call
    (1 = the reference's exact calls); ``backend``: where the network runs
    (:data:`calbatch.surrogate.BACKENDS`; ``cpu``, the default, is ONNX Runtime on the CPU).
    """

    def __init__(self, model: str | Path | None = None, rule: str = DEFAULT_RULE, voxel_size: float | None = None,
                 threads: int | None = None, batch_size: int = 1, backend: str = "cpu"):
        super().__init__(Path(model) if model is not None else shipped_model(), backend=backend, rule=rule,
                         voxel_size=voxel_size, threads=threads, batch_size=batch_size)

    @property
    def cd_range(self) -> tuple[float, float]:
        return self.model.cd_range

    def check(self, volume: np.ndarray, source: str = "start") -> tuple[np.ndarray, float]:
        """The validated volume and its top h0, or a one-line error (bad codes, grid, voxel size)."""
        volume = validate(volume, source)
        h0 = electrode_top(volume, self.voxel_size, source)
        self.model.check_input(volume.shape, self.voxel_size, h0)
        return volume, h0

    # --- the screen's worker steps cases by hand ------------------------------------------------

    def rollouts(self, starts: Sequence[np.ndarray], cds: Sequence[float], h0s: Sequence[float | None] | None = None,
                 particles: Sequence | None = None) -> list[dict]:
        """Series dicts (:func:`calbatch.surrogate.rollout.rollout`'s keys) of many cases, batched;
        ``particles``: per start, what a particle model starts from (:meth:`particles_of`)."""
        return [self.series(c, source="calbatch screen") for c in self.cases(starts, cds, h0s, particles=particles)]

    def rollout(self, start: np.ndarray, cd: float, h0: float | None = None, particles=None) -> dict:
        """One case's series (``start``: one volume or its first three frames), as ``rollout()``."""
        return self.rollouts([start], [cd], [h0], [particles])[0]

    # --- predict: rollout + metrics (+ Fick) --------------------------------------------------

    def predict(self, structures, cds, series: bool = False, metrics: bool = True, fick: bool | dict = False,
                comm=None, particles=None):
        """Roll out and measure: ``structures`` one volume (nz, ny, nx) or a sequence of them,
        ``cds`` one CD (%) or a sequence (one value is used for every structure, one structure for
        every value). Returns one result dict for one structure and one CD, else a list of them.
        ``particles``: for a particle model, what each structure starts from (:meth:`particles_of`,
        one or one per structure; default: a sphere decomposition of the structure).

        Each result: ``cd_percent``, ``cd_extrapolated``, ``final`` (uint8 volume), ``metrics``
        (:func:`calbatch.electrode.metrics.measure` of the final structure), ``fick``
        (:class:`calbatch.transport.TransportResult` as a dict, when ``fick`` is true or a dict of
        :class:`~calbatch.transport.FickSolver` options; solved on ``comm``, default this process
        alone), ``series`` (when asked), ``timings_s``. Nothing is read from or written to disk.
        """
        one_structure = isinstance(structures, np.ndarray) and structures.ndim == 3
        one_cd = np.ndim(cds) == 0
        vols = [structures] if one_structure else list(structures)
        values = [cd_value(cds)] if one_cd else [cd_value(c) for c in cds]
        if len(vols) == 1 and len(values) > 1:
            vols = vols * len(values)
        elif len(values) == 1 and len(vols) > 1:
            values = values * len(vols)
        if len(vols) != len(values):
            raise CalbatchError(f"predict: {len(vols)} structures but {len(values)} CDs (give one, or as many)")
        t0 = time.perf_counter()
        one_start = particles is not None and not isinstance(particles, (list, tuple))
        starts = [particles] * len(vols) if one_start else particles
        if starts is not None and len(starts) != len(vols):
            raise CalbatchError(f"predict: {len(vols)} structures but {len(starts)} particle states (give one, or as many)")
        cases = self.cases(vols, values, series=series, particles=starts)  # without the series: a ring of 3 frames
        t_roll = (time.perf_counter() - t0) / max(len(cases), 1)
        results = []
        for k, (cd, case) in enumerate(zip(values, cases)):
            final = case.final if series else case.final.copy()  # a copy: the ring's other frames need not live on
            try:  # not physical: refused, naming the case
                check_frames([vols[k], final], {"voxel_size_um": self.voxel_size, "uncalendered_top_um": case.h0,
                                                "press_lowest_um": case.sched["press_lowest_um"]})
            except CalbatchError as exc:
                raise type(exc)(f"predict: case {k} (CD {cd:g}): {exc}") from None
            r = {"cd_percent": cd, "cd_extrapolated": case.extrapolated, "final": final, "timings_s": {"rollout": t_roll}}
            r.update(self.measure(final, metrics, fick, comm, r["timings_s"]))
            if series:
                r["series"] = self.series(case, source="calbatch screen")
            results.append(r)
        return results[0] if one_structure and one_cd else results

    def measure(self, volume: np.ndarray, metrics: bool = True, fick: bool | dict = False, comm=None,
                timings: dict | None = None) -> dict:
        """``metrics`` and ``fick`` of one volume (see :meth:`predict`), timing each into ``timings``."""
        from ..electrode.metrics import measure

        timings = {} if timings is None else timings
        out: dict = {}
        if metrics:
            t0 = time.perf_counter()
            out["metrics"] = measure(volume, self.voxel_size)
            timings["metrics"] = time.perf_counter() - t0
        if fick:
            from mpi4py import MPI

            from ..transport import FickSolver

            t0 = time.perf_counter()
            options = fick if isinstance(fick, dict) else {}
            out["fick"] = FickSolver(volume, comm=MPI.COMM_SELF if comm is None else comm, **options).solve().to_dict()
            timings["fick"] = time.perf_counter() - t0
        return out
