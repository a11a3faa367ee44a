"""Type stubs of calbatch's C++ core (cpp/src/core.cpp and the bindings beside it)."""

import enum

import numpy as np
import numpy.typing as npt

_Csr = tuple[npt.NDArray[np.integer], npt.NDArray[np.integer], npt.NDArray[np.float64]]

def census(
    volume: npt.NDArray[np.uint8], periodic_xy: bool = True
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]: ...
def error_sums(truth: npt.NDArray[np.uint8], pred: npt.NDArray[np.uint8]) -> tuple[int, int, int, int, int]: ...
def voxelize_spheres(
    centers: npt.NDArray[np.float64],
    radii: npt.NDArray[np.float64],
    phases: npt.NDArray[np.uint8],
    lx: float,
    ly: float,
    z0: float,
    voxel_size: float,
    shape: tuple[int, int, int],
) -> tuple[npt.NDArray[np.uint8], int]: ...
def fick_rows(
    phases: npt.NDArray[np.uint8],
    active: npt.NDArray[np.uint8],
    diffusivity: npt.NDArray[np.float64],
    offsets: npt.NDArray[np.int64],
    z0: int,
    z1: int,
    index64: bool,
) -> tuple[_Csr, _Csr, npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...
def decide(
    scores: npt.NDArray[np.float32],
    first_void: int,
    counts: tuple[int, int] | None = None,
    out: npt.NDArray[np.uint8] | None = None,
) -> npt.NDArray[np.uint8]: ...
def max_threads() -> int: ...
class Decision(enum.Enum):
    argmax = 0
    conserve = 1
    counts = 2
    nearest = 3

def rollout_window(frames: list[npt.NDArray[np.uint8]], t: npt.NDArray[np.int64], out: npt.NDArray[np.uint8]) -> None: ...
def rollout_advance(
    output: npt.NDArray[np.float32],
    frames: list[npt.NDArray[np.uint8]],
    t: npt.NDArray[np.int64],
    first_void: npt.NDArray[np.int64],
    rule: Decision,
    counts: npt.NDArray[np.int64] | None = None,
) -> None: ...
def neighbour_pairs(
    centres: npt.NDArray[np.float64], radii: npt.NDArray[np.float64] | None, lx: float, ly: float, cutoff: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]: ...
def neighbour_pairs_batch(
    centres: list[npt.NDArray[np.float64]],
    radii: list[npt.NDArray[np.float64]] | None,
    boxes: npt.NDArray[np.float64],
    cutoff: float,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64]]: ...
def sphere_decomposition(
    volume: npt.NDArray[np.uint8], min_gain: float, min_r2: int, penalty: float, grow: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.uint8]]: ...
def project_overlaps(
    centres: list[npt.NDArray[np.float64]],
    radii: list[npt.NDArray[np.float64]],
    phases: list[npt.NDArray[np.uint8]],
    boxes: npt.NDArray[np.float64],
    press_z: npt.NDArray[np.float64],
    tolerance: npt.NDArray[np.float64],
    iterations: int,
    average: bool = True,
) -> tuple[list[npt.NDArray[np.float64]], npt.NDArray[np.float64]]: ...
def particle_step_features(
    centres: list[npt.NDArray[np.float64]],
    radii: list[npt.NDArray[np.float64]],
    phases: list[npt.NDArray[np.uint8]],
    boxes: npt.NDArray[np.float64],
    press: npt.NDArray[np.float64],
    stage: npt.NDArray[np.int64],
    cd: npt.NDArray[np.float64],
    *,
    cutoff: float,
    z_scale: float,
    length_scale: float,
    overlap_scale: float,
    gap_low: float,
    gap_high: float,
    cd_scale: float,
    prior_scale: float,
    top_share: float,
    stored_scale: float,
    stages: int,
    press_stage: int,
    am: int,
    cbd: int,
) -> tuple[
    npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int32], npt.NDArray[np.int32], npt.NDArray[np.float64]
]: ...
def particle_step_advance(
    centres: list[npt.NDArray[np.float64]],
    radii: list[npt.NDArray[np.float64]],
    phases: list[npt.NDArray[np.uint8]],
    boxes: npt.NDArray[np.float64],
    prior: npt.NDArray[np.float64],
    residual: npt.NDArray[np.float64],
    press_next: npt.NDArray[np.float64],
    *,
    max_residual: float,
    collector_wall: float,
    press_wall: npt.NDArray[np.float64],
    tolerance: npt.NDArray[np.float64] | None,
    iterations: int,
    settle: npt.NDArray[np.float64] | None = None,
    hold: npt.NDArray[np.float64] | None = None,
    pull_off: float = 0.0,
    contacts: npt.NDArray[np.int32] | None = None,
    voxel_size: npt.NDArray[np.float64],
    out: list[npt.NDArray[np.uint8]] | None = None,
) -> list[npt.NDArray[np.float64]]: ...
