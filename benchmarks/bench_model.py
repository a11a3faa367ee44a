"""One model step on the paper's 76x76x125 grid: ONNX Runtime against TensorFlow on the same model.

    python3 benchmarks/bench_model.py                     # untrained calbatch model, 2 threads
    python3 benchmarks/bench_model.py --run RUN_DIR       # a trained run (its best weights)
    python3 benchmarks/bench_model.py --paper             # also the paper-style model (fixed grid)

Builds the model (or loads a run), exports it with tf2onnx to a temporary file, then times
``--repeat`` steps each of ``model(frames, cond)`` in TensorFlow (a traced function) and of an ONNX
Runtime CPU session (no thread spinning), interleaved so both see the same machine load, both
limited to ``--threads`` threads, after one warm-up step.
Prints the median seconds per step of each and their ratio (TF / ORT; > 1 means ONNX Runtime is
faster). The step is the network only; the rollout's decision rule adds a few ms.

Measured on the project's 2-core machine while it also ran a niced two-process DEM dataset (load
2.7-3.6), the smoke-trained calbatch model (24 coarse channels, 58.6 k parameters; --run), 9 steps
each, three runs:
    2 threads: TensorFlow 2.21 0.049 / 0.043 / 0.045 s, ONNX Runtime 1.32 0.043 / 0.045 / 0.054 s
               (TF/ORT 1.12 / 0.94 / 0.83): parity within the machine's noise
    1 thread:  TensorFlow 0.039 s, ONNX Runtime 0.036 s (TF/ORT 1.09)
The first export of this design ran 0.37 s in ONNX Runtime against 0.15 s in TensorFlow: per-node
profiles (SessionOptions.enable_profiling) showed full-grid Equal/Cast one-hots, clamps written as a
scalar minus a tensor, and broadcasts along middle or last axes (4-5x slower than same-shape
operations in ONNX Runtime), not the layout transposes around the 3-D convolutions, which act only
on the coarse grid here. calbatch.model.layers avoids each. A rollout step (network plus the
``conserve`` decision rule) took 0.07-0.11 s. The paper-style model at 125x76x76 (16 filters, 143 M
parameters) did not export: tf2onnx grew past the machine's 23 GB and was OOM-killed, so --paper
benches it on --paper-grid (48x32x32: TF 0.003 s, ORT 0.001 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _time_both(fns, repeat: int) -> list[float]:
    """Median seconds per call of each function, calls interleaved so both see the same load."""
    for fn in fns:
        fn()  # warm-up (tracing, allocation)
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def bench(model, run: dict, grid, threads: int, repeat: int) -> dict:
    import tensorflow as tf

    from calbatch.model.export import export, load_onnx, random_input

    frames, cond = random_input(grid, float(run["voxel_size_um"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        check = export(model, run, path, check_grid=grid)
        sess, _ = load_onnx(path, threads=threads)
        call = tf.function(lambda f, c: model([f, c], training=False))
        t_ort, t_tf = _time_both([lambda: sess.run(None, {"frames": frames, "cond": cond}),
                                  lambda: call(tf.constant(frames), tf.constant(cond)).numpy()], repeat)
    return {"model": run["kind"], "params": int(model.count_params()), "grid_zyx": list(grid), "threads": threads,
            "tensorflow_s": t_tf, "onnxruntime_s": t_ort, "tf_over_ort": t_tf / t_ort,
            "max_abs_diff": check["max_abs_diff"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="training run folder (default: an untrained calbatch model)")
    ap.add_argument("--paper", action="store_true", help="also the paper-style model, on --paper-grid")
    ap.add_argument("--paper-grid", type=int, nargs=3, default=[48, 32, 32], metavar=("NZ", "NY", "NX"),
                    help="grid of the paper-style model (default 48 32 32: at 125x76x76, 143 M parameters, "
                         "tf2onnx needed more than this machine's 23 GB and was OOM-killed)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--grid", type=int, nargs=3, default=[125, 76, 76], metavar=("NZ", "NY", "NX"))
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from calbatch.model.networks import build
    from calbatch.model.train import load_trained

    if args.run:
        model, run = load_trained(Path(args.run))
    else:
        run = {"kind": "calbatch", "config": {}, "voxel_size_um": 0.4, "grid_zyx": args.grid, "cd_range": [20, 50]}
        model = build("calbatch")
    results = [bench(model, run, tuple(args.grid), args.threads, args.repeat)]
    if args.paper:
        pg = args.paper_grid
        prun = {"kind": "paper", "config": {"grid": pg}, "voxel_size_um": 0.4, "grid_zyx": pg, "cd_range": [20, 50]}
        results.append(bench(build("paper", grid=pg), prun, tuple(pg), args.threads, args.repeat))
    for r in results:
        print(f"{r['model']:<9} {r['params']:>11,d} params  grid {r['grid_zyx']}  {r['threads']} threads  "
              f"TensorFlow {r['tensorflow_s']:.3f} s  ONNX Runtime {r['onnxruntime_s']:.3f} s  "
              f"TF/ORT {r['tf_over_ort']:.2f}  (max |diff| {r['max_abs_diff']:.1e})")
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
