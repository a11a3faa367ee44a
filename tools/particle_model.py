"""The learned particle step on the default DEM dataset: train (resumable), export, and score free
rollouts from frame 0 on the validation series against the DEM.

    python3 tools/particle_model.py [--epochs N] [--out runs/particle_model] [--score-only | --export-only]

The split is the frame model's (electrode 4 and four more cases held out, seven validation series
drawn with seed 0), so the two are scored on the same series.
"""

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from calbatch.electrode.metrics import measure
from calbatch.model.dataset import split
from calbatch.model.particle_train import (
    PROJECTION_TOLERANCE_UM,
    ParticleOptions,
    batch,
    export,
    load_particle_file,
    sample,
    train,
)
from calbatch.surrogate.particle_step import onnx_residual, rollout

ROOT = Path(__file__).resolve().parents[1]
PARTICLES = ROOT / "data/dem/default/particles"


def the_split() -> dict:
    infos = []
    for f in sorted(PARTICLES.glob("*.h5")):
        s = load_particle_file(f)
        infos.append(SimpleNamespace(path=f, electrode=s["electrode"], cd=s["cd"]))
    return {k: [i.path for i in v] for k, v in split(infos).items()}


def score(model: Path, files: list[Path], tolerance: dict | None) -> list[dict]:
    residual_of, rows = onnx_residual(model), []
    for f in files:
        s = load_particle_file(f)
        sched = {"press_z_um": s["press"], "phase": s["stage"]}
        traj = rollout(s["p"], sched, s["cd"], residual_of, tolerance)
        nz = 125
        got = replace(s["p"], centres=traj[-1]).voxelize(nz)
        want = replace(s["p"], centres=s["pos"][-1]).voxelize(nz)
        mg, mw = measure(got, s["p"].voxel_size), measure(want, s["p"].voxel_size)
        dd = traj[-1] - s["pos"][-1]
        dd[:, :2] -= np.asarray(s["p"].box) * np.round(dd[:, :2] / np.asarray(s["p"].box))
        drift = np.linalg.norm(dd, axis=1)
        rows.append({"series": f.stem, "porosity_err_pct": 100 * (mg["porosity"] - mw["porosity"]) / mw["porosity"],
                     "thickness_err_vox": (mg["thickness_um"] - mw["thickness_um"]) / s["p"].voxel_size,
                     "am_err_pct": 100 * (np.sum(got == 2) - np.sum(want == 2)) / np.sum(want == 2),
                     "drift_median_um": float(np.median(drift)), "drift_p90_um": float(np.percentile(drift, 90)),
                     "r2": float(1 - np.mean((got.astype(float) - want) ** 2) / np.var(want.astype(float)))})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs/particle_model")
    ap.add_argument("--epochs", type=int, default=ParticleOptions.epochs)
    ap.add_argument("--score-only", action="store_true", help="export the run in --out and score it, no training")
    ap.add_argument("--export-only", action="store_true", help="export the run in --out, no training, no scoring")
    ap.add_argument("--tolerance", default=json.dumps(PROJECTION_TOLERANCE_UM),
                    help="overlaps (um per pair type) the projection leaves; 'none': no projection")
    args = ap.parse_args()
    trained_only = args.score_only or args.export_only
    state = args.out / "state.json"
    opts = (ParticleOptions(**json.loads(state.read_text())["options"]) if trained_only and state.exists()
            else ParticleOptions(epochs=args.epochs))
    parts = the_split()
    tolerance = None if args.tolerance == "none" else json.loads(args.tolerance)
    if not trained_only:
        train(parts["train"], parts["val"], args.out, opts,
              progress=lambda row: print(json.dumps(row), file=sys.stderr, flush=True))
    s = load_particle_file(parts["val"][0])
    example = batch([sample(s, 3, np.random.default_rng(0), 0.0)])[:4]
    model = args.out / "particle_step.onnx"
    gap = export(args.out, opts, model, example, parts["train"], tolerance)
    print(f"export: {model}, largest difference from Keras {gap:.2e}", file=sys.stderr)
    if args.export_only:
        return
    rows = score(model, parts["val"], tolerance)
    summary = {k: float(np.mean([abs(r[k]) for r in rows])) for k in rows[0] if k != "series"}
    (args.out / "validation.json").write_text(json.dumps({"rows": rows, "mean_abs": summary, "tolerance": tolerance}, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
