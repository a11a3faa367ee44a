"""The rollout engine on the paper's 76x76x125 grid: the shipped model on the shipped example electrode.

    python3 benchmarks/bench_engine.py                    # every part, a short run
    python3 benchmarks/bench_engine.py --cases 8 --json   # a longer screen; JSON on stdout

Parts (ONNX Runtime on the CPU, ``--threads`` intra-op threads unless said otherwise):

1. ``step``: seconds per rollout step of the engine at batch 1 (median over the case's steps) and
   per case-step at each ``--batches`` size; seconds per full case (rollout + metrics + Fick on one
   process, :meth:`calbatch.screen.Predictor.predict`).
2. ``loop``: the engine's loop (the C++ core's window and decision, I/O binding) against
   ``calbatch rollout``'s plain Python loop (its ``network_inputs``, ``session.run``,
   ``next_frame``) over the same ONNX session, one case each, interleaved; their ratio (> 1: the
   engine is faster), and a check that both made the same frames bit for bit.
3. ``screen``: ``calbatch screen`` of ``--cases`` cases (the example electrode at CDs evenly spaced
   over 20-50 %, Fick on) under ``mpirun -n 1`` and ``-n 2``, one ONNX Runtime thread and one
   OpenMP thread per rank; cases per minute of each and the speed-up (goal: >= 1.8).

Prints a table (``--json``: the numbers as JSON). Figures depend on the machine and its load:
report them with both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCREEN = """import json, sys
from mpi4py import MPI
from calbatch.screen import run_screen
s = run_screen(sys.argv[1], out=sys.argv[2], threads=1, progress=False, plots=False)
s.pop("table")
if MPI.COMM_WORLD.Get_rank() == 0:
    print(json.dumps(s))
"""


def python_loop(p, start, cd) -> tuple[np.ndarray, float]:
    """A plain Python loop of :func:`calbatch.surrogate.rules.decide` over the predictor's open
    session and plan: (frames, seconds)."""
    from calbatch.surrogate.contract import conditioning, past_indices
    from calbatch.surrogate.rules import decide
    from calbatch.surrogate.step import start_frames

    t0 = time.perf_counter()
    given, h0 = start_frames(start, p.voxel_size)
    sched = p.model.schedule(cd, h0)
    frames = np.empty((sched["n_frames"], *given.shape[1:]), dtype=np.uint8)
    frames[0] = given[0]
    plan = p.plan(sched, cd, h0, given[0])
    tops, counts = plan["top_um"], plan["counts"]
    for t in range(sched["n_frames"] - 1):
        x = np.ascontiguousarray(np.moveaxis(frames[past_indices(t)], 0, -1))[None]
        c = conditioning(cd, h0, p.voxel_size, tops[t], tops[t + 1], sched["phase"][t + 1])[None]
        out = p.session.run(None, {"frames": x, "cond": c})[0][0]
        frames[t + 1] = decide(out, frames[t], p.rule, plan["first_void"][t], None if counts is None else counts[t])
    return frames, time.perf_counter() - t0


def bench_steps(model: Path, volume: np.ndarray, cd: float, threads: int, batches: list[int]) -> dict:
    from calbatch import Predictor

    out: dict = {"batch_step_s": {}}
    for b in batches:
        engine = Predictor(model, threads=threads, batch_size=b)
        engine.cases([volume], [cd])  # warm-up: allocation, first-run kernels
        t0 = time.perf_counter()
        cases = engine.cases([volume] * b, [cd] * b)
        steps = sum(c.n_frames - 1 for c in cases)
        out["batch_step_s"][b] = (time.perf_counter() - t0) / steps
        if b == 1:
            out["frames"] = cases[0].n_frames
            out["step_s"] = float(statistics.median(cases[0].wall[1:]))
    from calbatch.transport import start_petsc

    start_petsc()  # PETSc's start-up once, outside the timed case (a screen pays it once per rank)
    predictor = Predictor(model, threads=threads)
    t0 = time.perf_counter()
    r = predictor.predict(volume, cd, fick=True)
    out["case_s"] = time.perf_counter() - t0
    out["case_stages_s"] = dict(r["timings_s"])
    return out


def bench_loop(model: Path, volume: np.ndarray, cd: float, threads: int) -> dict:
    from calbatch import Predictor

    engine = Predictor(model, threads=threads)
    engine.cases([volume], [cd])  # warm-up
    t0 = time.perf_counter()
    (case,) = engine.cases([volume], [cd])
    t_engine = time.perf_counter() - t0
    frames, t_python = python_loop(engine, volume, cd)
    return {"frames": case.n_frames, "engine_s": t_engine, "python_s": t_python, "ratio": t_python / t_engine,
            "bit_identical": bool(np.array_equal(case.frames, frames))}


def bench_screen(model: Path, n_cases: int, ranks: int, folder: Path) -> dict:
    cds = [round(float(v), 2) for v in np.linspace(20, 50, n_cases)]
    cases = folder / "cases.yaml"
    cases.write_text(f"model: {model}\nelectrodes: [example]\ncds: {cds}\nfick: {{enabled: true}}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1"}
    out = folder / f"screen_{ranks}"
    t0 = time.perf_counter()
    proc = subprocess.run(["mpirun", "-n", str(ranks), sys.executable, "-c", SCREEN, str(cases), str(out)],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"bench_engine: the screen on {ranks} rank(s) failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"ranks": ranks, "cases": summary["ran"], "failed": summary["failed"], "screen_s": summary["wall_time_s"],
            "process_s": wall, "cases_per_min": 60 * summary["ran"] / summary["wall_time_s"]}


def main() -> None:
    from calbatch.data import example_volume_path
    from calbatch.electrode.volume import read_volume

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "python" / "calbatch" / "data" / "model.onnx")
    ap.add_argument("--cd", type=float, default=35.0, help="CD (%%) of the timed cases (default 35)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads in parts 1 and 2 (default 2)")
    ap.add_argument("--batches", default="1,4", help="batch sizes timed in part 1 (default 1,4)")
    ap.add_argument("--cases", type=int, default=4, help="cases of the screen in part 3 (default 4)")
    ap.add_argument("--parts", default="step,loop,screen", help="which parts to run (default all)")
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    volume = read_volume(example_volume_path())
    result: dict = {"grid_zyx": list(volume.shape), "model": str(args.model), "cd_percent": args.cd,
                    "threads": args.threads, "load_average": os.getloadavg()[0]}
    if "step" in parts:
        result["step"] = bench_steps(args.model, volume, args.cd, args.threads, [int(b) for b in args.batches.split(",")])
    if "loop" in parts:
        result["loop"] = bench_loop(args.model, volume, args.cd, args.threads)
    if "screen" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            one = bench_screen(args.model, args.cases, 1, Path(tmp))
            two = bench_screen(args.model, args.cases, 2, Path(tmp))
        result["screen"] = {"1": one, "2": two, "speedup": two["cases_per_min"] / one["cases_per_min"]}
    result["load_average_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(result, indent=1))
        return
    rows = [("grid (z, y, x)", " x ".join(map(str, volume.shape))),
            ("load average (start / end)", f"{result['load_average']:.1f} / {result['load_average_end']:.1f}")]
    if "step" in result:
        s = result["step"]
        rows += [(f"rollout step, batch 1 (CD {args.cd:g}, {s['frames']} frames)", f"{s['step_s']:.3f} s")]
        rows += [(f"rollout step per case, batch {b}", f"{v:.3f} s") for b, v in s["batch_step_s"].items()]
        stages = ", ".join(f"{k} {v:.2f}" for k, v in s["case_stages_s"].items())
        rows += [("full case (rollout + metrics + Fick)", f"{s['case_s']:.2f} s ({stages})")]
    if "loop" in result:
        lp = result["loop"]
        rows += [("rollout, engine (C++ loop)", f"{lp['engine_s']:.2f} s"),
                 ("rollout, plain Python loop", f"{lp['python_s']:.2f} s"),
                 ("Python / engine", f"{lp['ratio']:.2f} x ({'bit-identical' if lp['bit_identical'] else 'FRAMES DIFFER'})")]
    if "screen" in result:
        sc = result["screen"]
        for r in ("1", "2"):
            x = sc[r]
            rows.append((f"screen, {r} rank(s), {x['cases']} cases", f"{x['cases_per_min']:.2f} cases/min ({x['screen_s']:.1f} s)"))
        rows.append(("screen speed-up, 2 ranks / 1", f"{sc['speedup']:.2f} x (goal >= 1.8)"))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


if __name__ == "__main__":
    main()
