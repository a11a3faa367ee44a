"""The particle state's hot loops on the default dataset, in one run.

    python3 benchmarks/bench_particles.py [--series NAME ...] [--quick]

1. The sphere decomposition of voxel frames: frames of a few DEM series (first, press lowest, last),
   voxelized by the core, decomposed, re-voxelized: R2, porosity and contact areas against the input,
   spheres per phase against the DEM's particles, the AM spheres' centre and radius errors against
   the nearest DEM AM particle, time per frame.
2. Neighbour pairs of 1,063 particles (one case, 8 cases batched) against scipy's cKDTree with a
   periodic box (the same pairs, checked), and the overlap projection. Times are the best of
   several repeats; the ratio is reference time / core time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from calbatch import _core
from calbatch.electrode.particles import (
    decompose,
    minimum_image,
    neighbours,
    neighbours_batch,
    overlaps,
    particles_of,
    project,
)
from timing import best_time

DATA = Path(__file__).resolve().parents[1] / "data" / "dem" / "default" / "particles"
SERIES = ("ms1_cd20", "ms4_cd35", "ms6_cd47.4", "ms8_cd31.2")
CUTOFF_UM = 0.5  # pairs within half a micron of contact: what a graph network's edges might hold
NZ = 125


def am_errors(truth, found) -> tuple[float, float]:
    """Median centre distance (um) from each DEM AM particle to the nearest AM sphere found, and the
    median radius error (um) of that sphere."""
    t, f = truth.phases == 2, found.phases == 2
    d = truth.centres[t][:, None, :] - found.centres[f][None, :, :]
    minimum_image(d, truth.box)
    dist = np.linalg.norm(d, axis=2)
    k = dist.argmin(axis=1)
    return float(np.median(dist.min(axis=1))), float(np.median(found.radii[f][k] - truth.radii[t]))


def decomposition(series: list[str], quick: bool) -> None:
    print("sphere decomposition of voxelized DEM frames (76 x 76 x 125, 0.4 um)")
    print(f"{'frame':<22}{'spheres AM/CBD':>16}{'DEM AM/CBD':>12}{'R2':>8}{'porosity in/out':>18}"
          f"{'pore-CBD':>9}{'pore-AM':>9}{'AM-CBD':>8}{'AM dx um':>9}{'AM dr um':>9}{'s':>7}")
    rows = []
    for name in series:
        path = DATA / f"{name}.h5"
        import h5py

        with h5py.File(path) as f:
            n_frames, press = len(f["press_z_um"]), f["press_z_um"][()]
        picks = [0, int(np.argmin(press)), n_frames - 1][: 1 if quick else 3]
        for frame in picks:
            truth = particles_of(path, frame=frame)
            volume = truth.voxelize(NZ)
            start = time.perf_counter()
            found = decompose(volume, truth.voxel_size, f"{name}:{frame}")
            seconds = time.perf_counter() - start
            fid = found.fidelity
            c = fid["contact_error_percent"]
            dx, dr = am_errors(truth, found)
            counts = [int(np.sum(p.phases == ph)) for p in (found, truth) for ph in (2, 1)]
            rows.append((fid["r2"], abs(fid["porosity"] - fid["porosity_input"]), *(abs(v) for v in c.values()), seconds))
            print(f"{name + ':' + str(frame):<22}{counts[0]:>9}/{counts[1]:<6}{counts[2]:>6}/{counts[3]:<5}"
                  f"{fid['r2']:>8.4f}{fid['porosity_input']:>10.4f}/{fid['porosity']:.4f}"
                  f"{c['pore-CBD']:>+8.1f}%{c['pore-AM']:>+8.1f}%{c['AM-CBD']:>+7.1f}%{dx:>9.3f}{dr:>+9.3f}{seconds:>7.2f}")
    r2, por, pc, pa, ac, sec = zip(*rows)
    print(f"over {len(rows)} frames: R2 mean {statistics.mean(r2):.4f} worst {min(r2):.4f}; |porosity error| mean "
          f"{statistics.mean(por):.4f} worst {max(por):.4f}; |contact area error| mean pore-CBD "
          f"{statistics.mean(pc):.1f} %, pore-AM {statistics.mean(pa):.1f} %, AM-CBD {statistics.mean(ac):.1f} % "
          f"(worst {max(pc + pa + ac):.1f} %); {statistics.mean(sec):.2f} s a frame")


def reference_pairs(p, cutoff: float):
    """The same pairs by scipy's cKDTree (periodic box in x, y; z padded so it never wraps)."""
    from scipy.spatial import cKDTree

    x = p.centres.copy()
    x[:, :2] %= np.asarray(p.box)
    reach = 2 * p.radii.max() + cutoff
    span = x[:, 2].max() + 2 * reach
    tree = cKDTree(x - [0, 0, x[:, 2].min() - reach], boxsize=[*p.box, span])
    ij = tree.query_pairs(reach, output_type="ndarray")
    ij.sort(axis=1)
    d = x[ij[:, 1]] - x[ij[:, 0]]
    minimum_image(d, p.box)
    keep = np.linalg.norm(d, axis=1) < p.radii[ij[:, 0]] + p.radii[ij[:, 1]] + cutoff
    ij, d = ij[keep], d[keep]
    order = np.lexsort((ij[:, 1], ij[:, 0]))
    return ij[order], d[order]


def hot_loops() -> None:
    cases = [particles_of(DATA / f"ms{k}_cd35.h5" if k <= 4 else next(DATA.glob(f"ms{k}_*.h5")), frame=-1)
             for k in range(1, 9)]
    one = cases[0]
    ij, d = neighbours(one, CUTOFF_UM)
    ref_ij, ref_d = reference_pairs(one, CUTOFF_UM)
    assert np.array_equal(ij, ref_ij) and np.allclose(d, ref_d), "core and cKDTree pairs differ"
    t1 = best_time(lambda: neighbours(one, CUTOFF_UM), 50)
    r1 = best_time(lambda: reference_pairs(one, CUTOFF_UM), 20)
    t8 = best_time(lambda: neighbours_batch(cases, CUTOFF_UM), 20)
    t8_each = sum(best_time(lambda c=c: neighbours(c, CUTOFF_UM), 20) for c in cases)
    r8 = best_time(lambda: [reference_pairs(c, CUTOFF_UM) for c in cases], 5)
    # The projection on the frame jiggled by 0.2 um (as a learned step might leave it), the DEM's
    # own largest overlaps per pair type as the tolerance, the press on the top particle.
    tolerance = overlaps(one)
    press = float(np.max(one.centres[:, 2] + one.radii))
    jiggled = replace(one, centres=one.centres + np.random.default_rng(0).normal(0, 0.2, one.centres.shape))
    excess = [project(jiggled, press, tolerance, iterations=k)[1] for k in (0, 4, 16)]
    tp = best_time(lambda: project(jiggled, press, tolerance, iterations=4), 20)
    print(f"\nneighbour pairs, {one.n} particles (final frames of 8 series), r_i + r_j + {CUTOFF_UM} um, periodic"
          f" x, y ({len(ij)} pairs in case 1; {_core.max_threads()} OpenMP threads; load {os.getloadavg()[0]:.1f})")
    print(f"{'':<34}{'core ms':>10}{'cKDTree ms':>12}{'ratio':>8}")
    print(f"{'one case':<34}{t1 * 1e3:>10.3f}{r1 * 1e3:>12.2f}{r1 / t1:>7.1f}x")
    print(f"{'8 cases batched':<34}{t8 * 1e3:>10.3f}{r8 * 1e3:>12.2f}{r8 / t8:>7.1f}x"
          f"   ({t8 / 8 * 1e3:.3f} ms a case; the 8 one by one {t8_each * 1e3:.2f} ms)")
    print(f"overlap projection of the frame jiggled by 0.2 um, tolerance the DEM's own largest overlaps "
          f"({', '.join(f'{k} {v:.2f}' for k, v in tolerance.items())} um): largest excess {excess[0]:.3f} um, "
          f"after 4 sweeps {excess[1]:.3f}, after 16 {excess[2]:.3f}; 4 sweeps {tp * 1e3:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", nargs="+", default=list(SERIES), help="series names under data/dem/default/particles")
    parser.add_argument("--quick", action="store_true", help="first frame of each series only")
    args = parser.parse_args()
    decomposition(args.series, args.quick)
    hot_loops()


if __name__ == "__main__":
    main()
