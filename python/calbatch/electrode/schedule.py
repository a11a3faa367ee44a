"""The press schedule of a calendering run, frame by frame: how many frames, where the press is at
each and which stage (press / release / relax) each frame belongs to. The DEM generator
(``dem.calender``), the dataset's conditioning and the model's rollout all follow it, so a rollout
has exactly the frames of the DEM series it imitates.

The press starts touching the electrode's top ``h0`` (um), moves down by ``cd`` % of ``h0`` at
``speed`` (m/s = um/us), retracts by ``RELEASE_FACTOR`` x that travel at twice the speed, then
stays away for ``RELAX_FRAMES`` frames after the next frame boundary. Time is counted in DEM time
steps ``dt`` exactly as LIGGGHTS counts them, so the frame count and stages match the DEM's.
"""

from __future__ import annotations

import numpy as np

from ..errors import CalbatchError

STAGES = ("press", "release", "relax")
RELEASE_FACTOR = 0.6  # the press retracts by 0.6 x its travel at twice its speed ...
RELAX_FRAMES = 2  # ... then stays away for two frames
# Spheres pressed against the press overlap it: the top solid voxel of the v2 dataset's frames lies
# up to 5 slices above the first slice over the press (1 at CD 20, 4-5 at CD 50), so material may sit
# this many slices above the press; only the slices beyond are known void (training mask, rollout).
WALL_OVERLAP_VOXELS = 6
PRESS_SPEED_M_S = 0.05  # the default press speed (= um/us); 0.1 left 1.2 % more thickness (docs/dem.md)
FRAME_TRAVEL_UM = 1.0  # default frame interval: the time the press needs for 1 um
# The DEM's default time step (um/us units) when none is known: 2.5e-4 us per um of the smallest
# diameter (dem.settings.DT_PER_UM), 2 um CBD spheres -> 5e-4 us. The frame count does not depend
# on it unless the press travel falls within one time step of a frame boundary.
DEFAULT_DT_US = 5e-4


def press_schedule(cd: float, h0: float, speed: float = PRESS_SPEED_M_S, frame_interval_us: float | None = None,
                   dt: float | None = None) -> dict:
    """The frames of a calendering run to ``cd`` percent of the uncalendered top ``h0`` (um).

    Returns ``n_frames``, per frame ``time_us``, ``press_z_um`` and ``phase`` (a stage name), and
    the scalars ``press_speed_m_s``, ``press_steps``, ``release_steps``, ``frame_steps``, ``dt``, ``travel_um`` and
    ``press_lowest_um`` -- the same numbers ``dem.calender`` computes.
    """
    if not (np.isfinite(cd) and 0 < cd < 90):
        raise CalbatchError(f"cd: must be between 0 and 90 percent, got {cd:g}")
    if not (np.isfinite(h0) and h0 > 0):
        raise CalbatchError(f"h0: the uncalendered top must be positive (um), got {h0:g}")
    if frame_interval_us is None and speed > 0:
        frame_interval_us = FRAME_TRAVEL_UM / speed
    if not (speed > 0 and frame_interval_us is not None and frame_interval_us > 0):
        raise CalbatchError(f"speed {speed:g} and frame interval {frame_interval_us} must be positive")
    dt = DEFAULT_DT_US if dt is None else float(dt)
    if not dt > 0:
        raise CalbatchError(f"dt: must be positive, got {dt:g}")
    travel = cd / 100 * h0
    frame_steps = max(1, int(round(frame_interval_us / dt)))
    press_steps = int(round(travel / speed / dt))
    release_steps = int(round(RELEASE_FACTOR * travel / (2 * speed) / dt))
    total = -(-(press_steps + release_steps) // frame_steps) * frame_steps + RELAX_FRAMES * frame_steps
    n_frames = total // frame_steps + 1
    steps = np.arange(n_frames) * frame_steps
    time_us = steps * dt
    release_start = press_steps * dt
    press_z = np.where(time_us <= release_start, h0 - speed * time_us,
                       np.minimum(h0 - travel + 2 * speed * (time_us - release_start),
                                  h0 - travel + RELEASE_FACTOR * travel))
    phase = np.where(steps <= press_steps, "press", np.where(steps <= press_steps + release_steps, "release", "relax"))
    return {"n_frames": int(n_frames), "time_us": time_us, "press_z_um": press_z, "phase": phase,
            "press_speed_m_s": float(speed), "press_steps": press_steps, "release_steps": release_steps, "frame_steps": frame_steps,
            "dt": dt, "travel_um": travel, "press_lowest_um": h0 - travel}


def schedule_of_series(attrs: dict) -> dict:
    """The schedule a series file's attributes imply (its CD, top, speed, frame interval, dt)."""
    try:
        cd = float(attrs["cd_percent"])
        h0 = float(attrs["uncalendered_top_um"])
        speed = float(attrs["press_speed_m_s"])
    except KeyError as exc:
        raise CalbatchError(f"series attribute {exc.args[0]!r} missing: cannot rebuild the press schedule") from None
    dt = float(attrs["timestep_us"]) if "timestep_us" in attrs else None
    # the stored interval is frame_steps * dt; pass it so the rounding reproduces frame_steps
    interval = float(attrs["frame_interval_us"]) if "frame_interval_us" in attrs else None
    return press_schedule(cd, h0, speed, interval, dt)


def stage_index(phase) -> np.ndarray:
    """Stage names -> 0 press, 1 release, 2 relax; an unknown name is an error naming it."""
    phase = np.asarray(phase).astype(str)
    bad = sorted(set(phase.tolist()) - set(STAGES))
    if bad:
        raise CalbatchError(f"phase: unknown stage {bad[0]!r} (expected one of {', '.join(STAGES)})")
    return np.array([STAGES.index(p) for p in phase.tolist()], dtype=np.int64)
