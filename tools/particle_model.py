"""The learned particle step on the default DEM dataset: train (resumable), export, and score free
rollouts from frame 0 on the validation series against the DEM.

    python3 tools/particle_model.py [--epochs N] [--out runs/particle_model] [--score-only | --export-only]
                                    [--onnx FILE]

The shipped default model is data/particle_model's best weights exported into the package:
``--out data/particle_model --export-only --onnx python/calbatch/data/model.onnx``.

The split is the frame model's (electrode 4 and four more cases held out, seven validation series
drawn with seed 0), so the two are scored on the same series. ``--extra FOLDER`` adds a further
dataset's particle files (``calbatch dem dataset --first 9``: electrodes in no split) to training only.
"""

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from calbatch.electrode.metrics import compare
from calbatch.model.dataset import split
from calbatch.model.particle_data import batch, load_particle_file, sample, score_series
from calbatch.model.particle_train import ParticleOptions, export, train
from calbatch.surrogate.particle_step import onnx_residual, rollout, step

ROOT = Path(__file__).resolve().parents[1]
PARTICLES = ROOT / "data/dem/default/particles"
DEFAULT_ELECTRODES = range(1, 9)


def the_split() -> dict:
    infos = []
    for f in sorted(PARTICLES.glob("*.h5")):
        s = load_particle_file(f)
        infos.append(SimpleNamespace(path=f, electrode=s["electrode"], cd=s["cd"]))
    return {k: [i.path for i in v] for k, v in split(infos).items()}


def score(model: Path, files: list[Path], tolerance: dict | str | None) -> list[dict]:
    """Free rollouts from frame 0 (and teacher-forced single steps) against the DEM, per series."""
    residual_of, rows = onnx_residual(model), []
    for f in files:
        s = load_particle_file(f)
        p, nz = s["p"], 125
        traj = rollout(p, {"press_z_um": s["press"], "phase": s["stage"]}, s["cd"], residual_of, tolerance)
        forced = [step([replace(p, centres=s["pos"][t])], [(s["press"][max(t - 1, 0)], s["press"][t], s["press"][t + 1])],
                       [s["stage"][t + 1]], [s["cd"]], residual_of, tolerance, h0=[s["press"][0]])[0].voxelize(nz)
                  for t in range(len(traj) - 1)]
        dem = [replace(p, centres=x).voxelize(nz) for x in s["pos"][1:]]
        r2 = [compare(w, g)["r2"] for g, w in zip(forced, dem)]
        rows.append({"series": f.stem, **score_series(s, traj), "r2_forced_mean": float(np.mean(r2))})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs/particle_model")
    for f in fields(ParticleOptions):
        kind = (lambda v: v.lower() in ("1", "true", "yes")) if isinstance(f.default, bool) else type(f.default)
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    ap.add_argument("--score-only", action="store_true", help="export the run in --out and score it, no training")
    ap.add_argument("--export-only", action="store_true", help="export the run in --out, no training, no scoring")
    ap.add_argument("--split", choices=("val", "test"), default="val", help="the series to score (choose on val)")
    ap.add_argument("--onnx", type=Path, help="where the export goes (default: OUT/particle_step.onnx)")
    ap.add_argument("--extra", type=Path, action="append", default=[],
                    help="a further dataset folder whose particles/*.h5 join training only (repeatable)")
    args = ap.parse_args()
    trained_only = args.score_only or args.export_only
    state = args.out / "state.json"
    opts = (ParticleOptions(**json.loads(state.read_text())["options"]) if trained_only and state.exists()
            else ParticleOptions(**{f.name: getattr(args, f.name) for f in fields(ParticleOptions)}))
    parts = the_split()
    for folder in args.extra:
        further = sorted((folder / "particles").glob("*.h5"))
        if not further:
            sys.exit(f"--extra {folder}: no particle files in {folder / 'particles'}")
        for f in further:  # an electrode of the default dataset would leak its validation and test packs
            if load_particle_file(f)["electrode"] in DEFAULT_ELECTRODES:
                sys.exit(f"--extra {f}: electrode {load_particle_file(f)['electrode']} is one of the default dataset's")
        parts["train"] += further
    if not trained_only:
        train(parts["train"], parts["val"], args.out, opts,
              progress=lambda row: print(json.dumps(row), file=sys.stderr, flush=True))
    s = load_particle_file(parts["val"][0])
    example = batch([sample(s, 3, np.random.default_rng(0), 0.0)])[:4]
    model = args.onnx or args.out / "particle_step.onnx"
    gap = export(args.out, opts, model, example, parts["train"])
    print(f"export: {model}, largest difference from Keras {gap:.2e}", file=sys.stderr)
    if args.export_only:
        return
    rows = score(model, parts[args.split], opts.tolerance)
    summary = {k: float(np.mean([abs(r[k]) for r in rows])) for k in rows[0] if k != "series"}
    (args.out / f"{'validation' if args.split == 'val' else 'test'}.json").write_text(
        json.dumps({"rows": rows, "mean_abs": summary, "tolerance": opts.tolerance}, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
