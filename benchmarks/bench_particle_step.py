"""The learned particle step against today's frame model step, side by side in one run.

    python3 benchmarks/bench_particle_step.py [--repeats N] [--json]

Free rollouts from frame 0 of DEM particle series (1,063 particles, each step's frame rendered on
the 76 x 76 x 125 grid), the shipped particle network (python/calbatch/data/model.onnx) on
ONNX Runtime's CPU provider:

1. ``frame``: one rollout step of one case, the particle step (the core's features, the network,
   the core's update and render) against the shipped frame model's step with the ``particles``
   rule (python/calbatch/data/frame_model.onnx through the engine, 2 threads) from the same electrode's
   frame 0, voxelized. Goal: at most a third.
2. ``batch``: per case, a step of 8 cases (the 8 electrodes) in one call against the same 8 stepped
   one by one (batch 1). Goal: less per case. The batch's network runs in parts
   of a case, two side by side (:func:`calbatch.surrogate.particle_step.onnx_residual`), and one
   after another.
3. ``core``: the core's step against the numpy reference it replaced
   (``particle_step._reference_step`` and a render per case), batch 1 and 8, with a check that both
   made the same positions and frames bit for bit.

Each variant is a whole rollout (the steps alone), run ``--repeats`` times interleaved with the
others; its figure is the best run's seconds per step (per case-step for a batch). The machine is
shared: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from calbatch import _core
from calbatch.model.particle_data import load_particle_file
from calbatch.surrogate import particle_step as ps
from timing import best_time

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "dem" / "default" / "particles"
PARTICLE_MODEL = ROOT / "python" / "calbatch" / "data" / "model.onnx"
FRAME_MODEL = ROOT / "python" / "calbatch" / "data" / "frame_model.onnx"
TOLERANCE = {"CBD-CBD": 0.5, "AM-CBD": 0.7, "AM-AM": 1.3}  # tools/particle_model.py's default
NZ = 125
ONE = "ms4_cd35"  # held-out electrode 4
EIGHT = ("ms1_cd35", "ms2_cd35", "ms3_cd35", "ms4_cd35", "ms5_cd31", "ms6_cd37", "ms7_cd31.6", "ms8_cd37")


def rollout(series: list[dict], steps: int, residual_of, core: bool, batched: bool):
    """``steps`` steps of every series from its frame 0 (one call for all, or one per case):
    (seconds of the steps, final positions, final frames)."""
    cases = [s["p"] for s in series]
    frames = [np.empty(p.grid(NZ), dtype=np.uint8) for p in cases]
    groups = [list(range(len(series)))] if batched else [[k] for k in range(len(series))]
    t0 = time.perf_counter()
    for t in range(steps):
        for g in groups:
            press = [(s["press"][max(t - 1, 0)], s["press"][t], s["press"][t + 1]) for s in (series[k] for k in g)]
            args = (press, [series[k]["stage"][t + 1] for k in g], [series[k]["cd"] for k in g], residual_of, TOLERANCE)
            if core:
                moved = ps.step([cases[k] for k in g], *args, out=[frames[k] for k in g])
            else:
                moved = ps._reference_step([cases[k] for k in g], *args)
                for k, p in zip(g, moved):
                    frames[k] = p.voxelize(NZ)
            for k, p in zip(g, moved):
                cases[k] = p
    return time.perf_counter() - t0, [p.centres for p in cases], frames


def frame_model_step(volume: np.ndarray, cd: float, threads: int) -> float:
    """Seconds per step of the frame model's rollout (the engine, batch 1, ``particles`` rule)."""
    from calbatch import Predictor

    engine = Predictor(FRAME_MODEL, threads=threads)
    (case,) = engine.cases([volume], [cd])
    return float(case.wall[1:].sum() / (case.n_frames - 1))


def parts(one: dict, residual_of) -> dict:
    """One step of one case: the core's features (the call before the network), the network, and
    the step without the network (both core calls: features, then update and render)."""
    p, press = one["p"], one["press"]
    args = ([(press[0], press[1], press[2])], [one["stage"][2]], [one["cd"]])
    frame = np.empty(p.grid(NZ), dtype=np.uint8)
    graph = ps.features([p], *args)
    residual = residual_of(*graph[:4])
    return {"features": best_time(lambda: ps.features([p], *args), 20),
            "network": best_time(lambda: residual_of(*graph[:4]), 20),
            "core calls": best_time(lambda: ps.step([p], *args, lambda *_: residual, TOLERANCE, out=[frame]), 20)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs of every variant, interleaved (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="the frame model's ONNX Runtime threads (default 2)")
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = ap.parse_args()
    one = load_particle_file(DATA / f"{ONE}.h5")
    eight = [load_particle_file(DATA / f"{name}.h5") for name in EIGHT]
    steps_one = len(one["press"]) - 1
    steps_eight = min(len(s["press"]) for s in eight) - 1
    residual_of = ps.onnx_residual(PARTICLE_MODEL)
    one_worker = ps.onnx_residual(PARTICLE_MODEL, workers=1)  # the batch's network parts run one after another
    volume = one["p"].voxelize(NZ)
    load = [os.getloadavg()[0]]
    variants = {
        "particle, 1 case": lambda: rollout([one], steps_one, residual_of, True, True),
        "particle numpy, 1 case": lambda: rollout([one], steps_one, residual_of, False, True),
        "particle, 8 batched": lambda: rollout(eight, steps_eight, residual_of, True, True),
        "particle, 8 batched, 1 worker": lambda: rollout(eight, steps_eight, one_worker, True, True),
        "particle, 8 one by one": lambda: rollout(eight, steps_eight, residual_of, True, False),
        "particle numpy, 8 batched": lambda: rollout(eight, steps_eight, residual_of, False, True),
    }
    per_step = {"particle, 1 case": steps_one, "particle numpy, 1 case": steps_one}
    best = {k: np.inf for k in variants} | {"frame model, 1 case": np.inf}
    results = {}
    frame_model_step(volume, one["cd"], args.threads)  # warm-up: sessions, first-run kernels
    variants["particle, 1 case"]()
    for _ in range(args.repeats):
        for name, run in variants.items():
            seconds, centres, frames = run()
            results[name] = (centres, frames)
            best[name] = min(best[name], seconds / (per_step.get(name) or steps_eight * len(eight)))
        best["frame model, 1 case"] = min(best["frame model, 1 case"], frame_model_step(volume, one["cd"], args.threads))
        load.append(os.getloadavg()[0])
    equal = {n: all(a.tobytes() == b.tobytes() for x, y in zip(results[n], results[n.replace(" numpy", "")])
                    for a, b in zip(x, y))
             for n in ("particle numpy, 1 case", "particle numpy, 8 batched")}  # the same network calls
    split = parts(one, residual_of)
    figures = {"seconds_per_case_step": best, "one_step_parts_s": split, "bit_identical_to_numpy": equal,
               "steps": {"one case": steps_one, "eight cases": steps_eight}, "openmp_threads": _core.max_threads(),
               "load_average": load,
               "ratios": {"frame model / particle step, 1 case": best["frame model, 1 case"] / best["particle, 1 case"],
                          "batch 1 / batch 8, per case (the same 8 cases)":
                              best["particle, 8 one by one"] / best["particle, 8 batched"],
                          "numpy / core, 1 case": best["particle numpy, 1 case"] / best["particle, 1 case"],
                          "numpy / core, 8 batched": best["particle numpy, 8 batched"] / best["particle, 8 batched"]}}
    if args.json:
        print(json.dumps(figures, indent=1))
        return
    print(f"particle step: {one['p'].n} particles, frames {' x '.join(map(str, volume.shape))} rendered, "
          f"{_core.max_threads()} OpenMP threads, the network on 1 ONNX Runtime thread; frame model on {args.threads}; "
          f"load average {' / '.join(f'{x:.1f}' for x in load)}")
    for name, s in best.items():
        print(f"  {name:<32}{s * 1e3:9.1f} ms a case-step")
    print("  one step, 1 case: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in split.items()))
    for name, r in figures["ratios"].items():
        print(f"  {name:<48}{r:7.2f}x")
    print("  numpy reference made the same positions and frames: " + ", ".join(f"{k}: {v}" for k, v in equal.items()))


if __name__ == "__main__":
    main()
