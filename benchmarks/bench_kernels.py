"""C++ core against plain numpy on a 76 x 76 x 125 electrode, side by side in one run.

    python3 benchmarks/bench_kernels.py [VOLUME]

Times are the best of several repeats; the ratio is numpy time / C++ time.
"""

from __future__ import annotations

import sys

import numpy as np

from calbatch import _core, read_volume
from calbatch.data import example_volume_path
from calbatch.electrode import _reference
from calbatch.electrode.voxelize import voxelize_spheres
from timing import best_time


def main() -> None:
    spec = sys.argv[1] if len(sys.argv) > 1 else example_volume_path()
    volume = read_volume(spec)
    other = np.roll(volume, 3, axis=2)
    rng = np.random.default_rng(0)
    n = 200
    centers = np.column_stack([rng.uniform(0, 30.4, n), rng.uniform(0, 30.4, n), rng.uniform(0, 48, n)])
    radii, phases = rng.uniform(0.6, 5.0, n), rng.choice(np.array([1, 2], np.uint8), n)
    vox = (centers, radii, phases, (30.4, 30.4), volume.shape, 0.4)

    # The Fick matrix of the electrode's percolating pore and CBD (calbatch.transport's set-up).
    from calbatch.transport import FickSolver, unknown_offsets

    solver = FickSolver(volume, source=str(spec))
    region, active = np.ascontiguousarray(solver.region), solver._unknowns()
    diffusivity, offsets = solver._diffusivity_table(), unknown_offsets(active)
    fick = (region, active.view(np.uint8), diffusivity, offsets, 0, active.shape[0], False)

    # The rollout's decision rule (conserve) on class scores over the electrode's grid, press at 80 %.
    from calbatch.surrogate.rules import decide

    scores = rng.random((*volume.shape, 4), dtype=np.float32)
    first_void = int(0.8 * volume.shape[0])

    big = np.ascontiguousarray(np.tile(volume, (2, 4, 4))[:, :256, :256])  # 250 x 256 x 256, threaded path
    rows = [
        ("contact areas + fractions + thickness", lambda: _core.census(volume, True),
         lambda: _reference.census(volume, True), 50, 5),
        ("the same on 250 x 256 x 256 (threaded)", lambda: _core.census(big, True),
         lambda: _reference.census(big, True), 10, 2),
        ("MSE / MAE / R2 sums", lambda: _core.error_sums(volume, other),
         lambda: _reference.error_sums(volume, other), 50, 5),
        (f"Fick matrix rows, {int(offsets[-1])} unknowns", lambda: _core.fick_rows(*fick),
         lambda: _reference.fick_matrix(region, active, diffusivity), 20, 3),
        ("decision rule conserve (rollout step)", lambda: decide(scores, volume, "conserve", first_void),
         lambda: _reference.decide(scores, volume, "conserve", first_void), 30, 5),
        (f"voxelize {n} spheres", lambda: voxelize_spheres(*vox),
         lambda: _reference.voxelize_spheres(*vox), 10, 1),
    ]
    print(f"volume {spec}: {volume.shape} (z, y, x), {_core.max_threads()} OpenMP threads"
          " (volumes under 2^22 voxels run on one)")
    print(f"{'kernel':<40}{'C++ ms':>10}{'numpy ms':>12}{'ratio':>9}")
    for name, fast, slow, fast_repeats, slow_repeats in rows:
        t_cpp, t_np = best_time(fast, fast_repeats), best_time(slow, slow_repeats)
        print(f"{name:<40}{t_cpp * 1e3:>10.2f}{t_np * 1e3:>12.1f}{t_np / t_cpp:>8.0f}x")


if __name__ == "__main__":
    main()
