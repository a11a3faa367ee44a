"""DEM wall time per frame for the full-size system: the DEM side of the DL-vs-DEM comparison.

    python3 benchmarks/bench_dem.py                      # CD 35 and 50, 1 rank
    python3 benchmarks/bench_dem.py --cd 35 --nprocs 1 2 # also under mpirun -n 2
    python3 benchmarks/bench_dem.py --pause-dataset DIR  # SIGSTOP the `dem dataset` running in DIR meanwhile

Packs microstructure 1 (seed 1, the default formulation: 140 AM + 923 CBD spheres in 30.4 x 30.4 um,
~44 um thick) once, then calenders it with the default settings (press 0.05 m/s, one frame per 1 um
of travel, dt 5e-4 us) and prints, per CD and rank count: frames, the DEM wall time per press frame (the time
between two frame dumps while the press moves down, the mean over the run), per frame over the
whole run including release and relaxation, and the total with voxelization and file writing. The
paper's DEM took ~47 min a frame. With --pause-dataset DIR the process group in
DIR/dataset.pgid is stopped for the benchmark and continued afterwards (its own
per-frame wall times then include the pause).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from calbatch import dem

os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cd", type=float, nargs="+", default=[35, 50])
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1])
    parser.add_argument("--pause-dataset", metavar="DIR", default=None, help="folder of a running dem dataset")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    pgid = None
    pgid_file = Path(args.pause_dataset or ".") / "dataset.pgid"
    if args.pause_dataset and pgid_file.exists():
        pgid = int(pgid_file.read_text())
        os.killpg(pgid, signal.SIGSTOP)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pack = Path(tmp) / "pack.h5"
            start = time.perf_counter()
            packed = dem.pack(pack, seed=1)
            rows.append({"step": "pack", "wall_s": time.perf_counter() - start, "porosity": packed["porosity"]})
            for nprocs in args.nprocs:
                for cd in args.cd:
                    start = time.perf_counter()
                    r = dem.calender(pack, cd, Path(tmp) / f"cd{cd:g}_np{nprocs}.h5", nprocs=nprocs, progress=False)
                    rows.append({
                        "step": f"calender CD {cd:g}", "np": nprocs, "frames": r["frames"],
                        "dem_s_per_press_frame": r["dem_wall_time_per_press_frame_s"],
                        "dem_s_per_frame": r["dem_wall_time_s"] / (r["frames"] - 1),
                        "total_s": time.perf_counter() - start,
                    })
    finally:
        if pgid is not None:
            os.killpg(pgid, signal.SIGCONT)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print("  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        print("paper's DEM: ~47 min (2820 s) a frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
