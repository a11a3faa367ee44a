"""Is a predicted calendering physical? Checks applied where a case finishes (the screen, ``calbatch
rollout``, the Python API, optimize), each failure one line naming the frame and the value:

- the model's scores are finite (a NaN network decodes to frames of void, which look like data);
- every frame keeps most of the starting electrode's solid (AM + CBD voxels);
- while the press goes down, the electrode stays under it (its wall overlap allowed), and after the
  release it springs back by less than half the uncalendered thickness (the DEM: 4-20 %);
- a CD is within the model's trained range, or past it by at most the margin its file states.
"""

from __future__ import annotations

import numpy as np

from .. import _core
from ..errors import CalbatchError
from .volume import AM, CBD

MIN_SOLID_KEPT = 0.5  # of frame 0's solid voxels, in every frame
PRESS_MARGIN_OF_H0 = 0.1  # the top may sit this far (x h0) above the press while pressing: spheres overlap the wall
MAX_REBOUND_OF_H0 = 0.5  # final thickness - lowest press position, at most this x h0
DEFAULT_CD_MARGIN = 5.0  # percent points past the trained CD range, for model files that do not state theirs


class NonPhysical(CalbatchError):
    """A case whose prediction is not physical: the case fails with this one line."""


def _solid_and_top(frame: np.ndarray) -> tuple[int, int]:
    histogram, _, top = _core.census(np.ascontiguousarray(frame, dtype=np.uint8), True)
    return int(histogram[AM] + histogram[CBD]), int(top) + 1


def check_scores(scores: np.ndarray, step: int) -> None:
    """Refuse non-finite network output (the step that made frame ``step``)."""
    if not np.isfinite(scores).all():
        raise NonPhysical(f"the model's output is not finite (NaN or infinity) at frame {step}")


def check_frames(frames, attrs: dict, phase=None, press_z=None) -> None:
    """``frames``: the series (or frame 0 and the final frame); ``attrs``: its ``uncalendered_top_um``,
    ``press_lowest_um`` and ``voxel_size_um``; ``phase`` / ``press_z``: per frame, when the whole
    series is given (the press check needs them)."""
    vs, h0, lowest = float(attrs["voxel_size_um"]), float(attrs["uncalendered_top_um"]), float(attrs["press_lowest_um"])
    solid0, _ = _solid_and_top(frames[0])
    top = 0
    for k in range(len(frames)):
        solid, top = _solid_and_top(frames[k])
        if solid < MIN_SOLID_KEPT * solid0:
            raise NonPhysical(f"frame {k} lost its material: {solid} solid voxels of the {solid0} it started with")
        pressing = phase is not None and press_z is not None and str(phase[k]) == "press"
        if pressing and top * vs > float(press_z[k]) + PRESS_MARGIN_OF_H0 * h0:
            raise NonPhysical(f"frame {k}: the electrode ({top * vs:.2f} um) is above the press "
                              f"({float(press_z[k]):.2f} um) while pressing")
    if top * vs - lowest > MAX_REBOUND_OF_H0 * h0:
        raise NonPhysical(f"final thickness {top * vs:.2f} um after a press gap of {lowest:.2f} um: a spring-back "
                          f"of more than {MAX_REBOUND_OF_H0:g} x the uncalendered {h0:.2f} um")


def check_series(series: dict) -> None:
    """:func:`check_frames` on a series dict (every frame, with its phases and press positions)."""
    check_frames(series["frames"], series["attrs"], series["phase"], series["press_z_um"])


def cd_margin(meta: dict) -> float:
    """The margin (percent points) past its trained CD range a model file says it may be used."""
    try:
        return float(meta.get("cd_margin_percent", DEFAULT_CD_MARGIN))
    except (TypeError, ValueError):
        raise CalbatchError(f"model metadata 'cd_margin_percent': expected a number, got {meta['cd_margin_percent']!r}") from None


def check_cd(cd: float, cd_range: tuple[float, float], margin: float, where: str = "CD") -> None:
    """Refuse a CD further than ``margin`` outside the trained range (``--allow-extrapolation`` skips this)."""
    lo, hi = cd_range
    if not lo - margin - 1e-9 <= cd <= hi + margin + 1e-9:
        raise CalbatchError(f"{where} {cd:g} %: outside the model's trained range {lo:g}-{hi:g} % by more than its "
                            f"margin of {margin:g} points; --allow-extrapolation runs it anyway")
