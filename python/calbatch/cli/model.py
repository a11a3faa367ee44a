"""``calbatch train | tune | export | rollout | evaluate``: the learned frame model's command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from .output import count, finite, print_result


@contextlib.contextmanager
def _stderr_to_devnull():
    """File descriptor 2 to /dev/null while the block runs (C++ start-up chatter of TF, absl)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _quiet_tensorflow() -> None:
    """Import TensorFlow, Keras and tf2onnx without their C++ notices on stderr (the oneDNN notice,
    absl's pre-initialisation warning), so stderr keeps to progress bars and calbatch's errors."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _stderr_to_devnull():
        import keras  # noqa: F401
        import tensorflow as tf
        import tf2onnx  # noqa: F401

        tf.constant(0.0) + 1.0  # the first op initialises the CPU device (more notices)


def _crop(text: str):
    if text.lower() in ("0", "none", "full"):
        return None
    try:
        parts = [int(x) for x in text.replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CY,CX such as 32,32 (or 'none'), got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected two positive sizes CY,CX, got {text!r}")
    return tuple(parts)


def _train(args) -> None:
    _quiet_tensorflow()
    from ..model.dataset import parse_split
    from ..model.train import train

    if args.model == "calbatch":
        config = {"channels": args.channels, "layers_coarse": args.layers, "factor": args.factor,
                  "hidden": args.hidden, "max_residual": args.max_residual}
    else:
        config = {"filters": args.filters, "dense": args.dense}
    r = train([Path(s) for s in args.series], Path(args.out), kind=args.model, config=config,
              test_split=parse_split(args.test_split) if args.test_split else None, val_fraction=args.val_fraction,
              epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, horizon=args.horizon, crop=args.crop,
              noise=args.noise, patience=args.patience, seed=args.seed, resume=args.resume,
              max_windows=args.max_windows, max_val_windows=args.max_val_windows, vol_weight=args.vol_weight)
    last = r["history"][-1] if r["history"] else {}
    table = (f"run          {r['out']}\nmodel        {r['kind']} ({r['params']:,d} parameters)\n"
             f"series       train {r['train_series']}, val {r['val_series']}, test {r['test_series']}\n"
             f"epochs       {r['epoch']}\nlast         train {last.get('train_loss')} val {last.get('val_loss')}\n"
             f"best val     {r['best_val']}")
    print_result(r, args.json, table)


def _export(args) -> None:
    _quiet_tensorflow()
    from ..model.export import export
    from ..model.train import load_trained

    model, run = load_trained(Path(args.run_dir), args.weights)
    r = export(model, run, Path(args.out), opset=args.opset, check_grid=args.check_grid)
    print_result(r, args.json, f"{r['out']}  opset {r['opset']}  {r['bytes']:,d} bytes  "
                               f"max |ONNX - Keras| {r['max_abs_diff']:.2e} (raw outputs: {r['max_rel_diff']:.1e} of the "
                               f"largest) on {r['check_grid_zyx']}\n"
                               f"training final porosity (evaluate's same-CD baseline) at CD "
                               f"{', '.join(r['training_final_porosity_by_cd']) or 'none (no readable training series)'} %")


def _rollout(args) -> None:
    from ..data import example_volume_path
    from ..electrode.checks import cd_margin, check_cd
    from ..electrode.volume import split_h5_path
    from ..errors import CalbatchError
    from ..model.export import load_onnx
    from ..surrogate.rollout import rollout_file

    start = example_volume_path() if args.start == "example" else args.start
    file = Path(split_h5_path(start)[0])
    if Path(args.out).resolve() == file.resolve():
        raise CalbatchError(f"--out {args.out}: is the start file; choose another name (its input is never overwritten)")
    if Path(start).is_dir() or file.is_dir():
        raise CalbatchError(f"{args.start}: is a folder, not a volume or series file")
    if not args.allow_extrapolation:
        _, meta = load_onnx(Path(args.model), 1)
        lo_hi = json.loads(meta.get("cd_range_percent", "[0, 90]"))
        check_cd(args.cd, tuple(lo_hi), cd_margin(meta), "--cd")
    r = rollout_file(Path(args.model), Path(start), args.cd, Path(args.out), args.start_frames, args.decision,
                     args.voxel_size, args.threads)
    flag = "  (CD outside the trained range: extrapolated)" if r["cd_extrapolated"] else ""
    print_result(r, args.json, f"{r['out']}  {r['frames']} frames  CD {r['cd_percent']:g} %  "
                               f"{r['seconds_per_step']:.3f} s/step{flag}")


def _pct(value) -> str:
    """A fraction as a percentage; a mean-abs statistic as its mean; '-' when absent."""
    if isinstance(value, dict):
        value = value.get("mean_abs")
    return "-" if value is None else f"{100 * abs(value):.1f}%"


def _signed(value) -> str:
    return "-" if value is None else f"{100 * value:+.1f}%"


def _evaluate_table(r: dict) -> str:
    """The summary per pass (means over the series, worst R^2) and one line per series."""
    lines = [f"{'pass':<22} {'R2 mean':>7} {'R2 worst':>8} {'IoU AM':>6} {'AM vol':>7} {'porosity':>8} {'contact':>7} "
             f"{'D_eff':>6} {'tau':>6} {'thick':>5}"]
    for name, v in r["summary"].items():
        if "r2_mean" not in v:  # the training-set porosity baseline: porosity only
            lines.append(f"{name:<22} {'-':>7} {'-':>8} {'-':>6} {'-':>7} {_pct(v['final_porosity_error']):>8}")
            continue
        thick = v["final_thickness_error_voxels"]["mean_abs"]
        lines.append(f"{name:<22} {v['r2_mean']:7.3f} {v['r2_worst']:8.3f} {v['iou_mean']['AM']:6.3f} "
                     f"{_pct(v['am_volume_error_max']):>7} {_pct(v['final_porosity_error']):>8} {_pct(v['contact_area_error']):>7} "
                     f"{_pct(v.get('d_eff_error')):>6} {_pct(v.get('tau_error')):>6} {thick:5.1f}")
    lines.append("(R2 over frames; IoU AM mean; AM vol: worst |volume error| in any frame; porosity, contact areas, D_eff, "
                 "tau: mean |relative error| on the final frame; thick: mean |final thickness error| in voxels)")
    lines.append(f"{'series':<28} {'CD':>4} {'R2 free':>7} {'porosity':>8} {'D_eff':>6}  flag  "
                 "(free rollout from frame 0; relative errors of the final frame)")
    for s in r["series"]:
        p = s["passes"]["free_from_frame0"]
        d = p["final"].get("d_eff_rel", {}).get("rel_error")
        lines.append(f"{Path(s['series']).name:<28} {s['cd_percent']:4g} {p['r2_mean']:7.3f} "
                     f"{_signed(p['final']['porosity']['rel_error']):>8} {_signed(d):>6}  "
                     f"{'CD EXTRAPOLATED' if s['cd_extrapolated'] else ''}")
    if "plots" in r:
        lines.append(f"report and plots in {Path(r['plots'][0]).parent}")
    return "\n".join(lines)


def _evaluate(args) -> None:
    import warnings

    from ..evaluate.run import evaluate
    from ..surrogate.rollout import ExtrapolationWarning
    from .output import to_json

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ExtrapolationWarning)
        r = evaluate(Path(args.model), [Path(s) for s in args.series], [Path(t) for t in args.twin], args.decision,
                     args.threads, fick=not args.no_fick, out=Path(args.out) if args.out else None,
                     progress=not args.quiet)
    r["warnings"] = [str(w.message) for w in caught]
    for w in caught:
        sys.stderr.write(f"calbatch evaluate: warning: {w.message}\n")
    if args.out:
        from ..electrode.series import atomic_text

        atomic_text(Path(args.out) / "evaluation.json", to_json(r))
    print_result(r, args.json, _evaluate_table(r))


def _tune(args) -> None:
    _quiet_tensorflow()
    from ..model.dataset import parse_split
    from ..model.tune import tune

    r = tune([Path(s) for s in args.series], Path(args.out), kind=args.model, trials=args.trials, epochs=args.epochs,
             max_windows=args.max_windows, max_val_windows=args.max_val_windows, crop=args.crop,
             batch_size=args.batch_size, score_horizon=args.score_horizon,
             test_split=parse_split(args.test_split) if args.test_split else None, val_fraction=args.val_fraction,
             seed=args.seed, resume=args.resume)
    lines = [f"{'trial':>5} {'state':<9} {'score':>9}  parameters"]
    for t in r["trials"]:
        score = "-" if t["value"] is None else f"{t['value']:.5f}"
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
        lines.append(f"{t['number']:5d} {t['state']:<9} {score:>9}  {params}")
    best = r["best"]
    if best:
        lines.append(f"best: trial {best['number']} (validation score {best['value']:.5f}); train it in full with\n"
                     f"  calbatch train SERIES... --out RUN {' '.join(best['train_options'])}")
    lines.append(f"study {r['storage']}; results {Path(args.out) / 'study.json'}, {Path(args.out) / 'best.json'}")
    print_result(r, args.json, "\n".join(lines))


def _training_parser(subparsers, name: str, help: str, out_help: str):
    """The parser of a command that trains on DEM series (train, tune): the series, --out, --model."""
    p = subparsers.add_parser(name, help=help)
    p.add_argument("series", nargs="+", help="series files with voxel frames (.h5)")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--model", choices=("calbatch", "paper"), default="calbatch", help="model kind (default calbatch)")
    return p


def add_cli(subparsers) -> None:
    from ..surrogate.rules import DEFAULT_RULE, RULES

    p = _training_parser(subparsers, "train", "train a frame model on DEM series (checkpoints, resume, early stop)",
                         "run folder (checkpoints, run.json, state.json)")
    p.add_argument("--epochs", type=count(), default=20, help="epochs at most (default 20)")
    p.add_argument("--batch-size", type=count(), default=2, help="windows per batch (default 2)")
    p.add_argument("--lr", type=finite(), default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--horizon", type=count(), default=2, help="steps unrolled per window; >1 = pushforward (default 2)")
    p.add_argument("--crop", type=_crop, default=(32, 32), metavar="CY,CX",
                   help="random periodic x/y crop for training, or 'none' (default 32,32; paper: whole frames)")
    p.add_argument("--noise", type=finite("nonnegative"), default=0.01,
                   help="fraction of input voxels replaced by a z-neighbour's code (default 0.01)")
    p.add_argument("--vol-weight", type=finite("nonnegative"), default=0.1, help="weight of the phase-volume loss")
    p.add_argument("--patience", type=count(), default=4, help="epochs without validation gain before stopping")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--test-split", default=None, metavar="SPEC",
                   help="held-out series: whole electrodes and electrode:CD,CD (default the paper's '4;1:45;2:35;3:25,45')")
    p.add_argument("--val-fraction", type=finite("nonnegative"), default=0.15,
                   help="share of the remaining series for validation (default 0.15)")
    p.add_argument("--max-windows", type=count(), default=None, help="windows per epoch at most")
    p.add_argument("--max-val-windows", type=count(), default=None, help="validation windows at most")
    p.add_argument("--channels", type=count(), default=24, help="calbatch: coarse channels (default 24)")
    p.add_argument("--layers", type=count(), default=4, help="calbatch: coarse 3x3x3 layers (default 4)")
    p.add_argument("--factor", type=count(2), default=4, help="calbatch: coarse cell size in voxels (default 4)")
    p.add_argument("--hidden", type=count(0), default=0, help="calbatch: per-voxel correction units (default 0: per cell)")
    p.add_argument("--max-residual", type=finite(), default=4.0, help="calbatch: largest learned z shift per step, voxels (default 4)")
    p.add_argument("--filters", type=count(), default=16, help="paper: Conv1D filters (paper 256; default 16)")
    p.add_argument("--dense", type=count(), default=150, help="paper: bottleneck width (default 150)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_train)

    p = subparsers.add_parser("export", help="a trained run -> ONNX with metadata, checked against Keras")
    p.add_argument("run_dir", metavar="RUN", help="run folder from `calbatch train`")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--weights", choices=("best", "last"), default="best", help="which checkpoint (default best)")
    p.add_argument("--opset", type=count(17), default=17, help="ONNX opset, 17 or newer (default 17)")
    p.add_argument("--check-grid", type=count(), nargs=3, default=None, metavar=("NZ", "NY", "NX"),
                   help="grid of the Keras/ONNX check (default the training grid)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_export)

    def rollout_common(q):
        q.add_argument("--decision", choices=RULES, default=DEFAULT_RULE,
                       help="scores -> phases: particles (the default: particles moved whole as the network "
                            "favours, to the AM/CBD counts and top the model's phase budget plans), budget (the "
                            "planned counts and top, voxel by voxel), conserve (counts kept), expected or argmax")
        q.add_argument("--threads", type=count(), default=None, help="ONNX Runtime threads (default: its choice)")
        q.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = subparsers.add_parser("rollout", help="free rollout of an ONNX model through the DEM's press schedule")
    p.add_argument("model", help="ONNX model from `calbatch export`")
    p.add_argument("start", help="uncalendered volume (.npy, .tif, file.h5:/dataset, or example) or a series file (.h5)")
    p.add_argument("--cd", type=finite(), required=True, help="compression degree in percent")
    p.add_argument("--out", required=True, help="series file to write (.h5)")
    p.add_argument("--start-frames", type=int, choices=(1, 3), default=1,
                   help="frames of a series to start from (default 1: the uncalendered frame)")
    p.add_argument("--voxel-size", type=finite(), default=None,
                   help="voxel edge in um (default: what the file states, else the model's; a file that states another is refused)")
    p.add_argument("--allow-extrapolation", action="store_true",
                   help="run a CD further outside the model's trained range than the margin its file states")
    rollout_common(p)
    p.set_defaults(run=_rollout)

    p = subparsers.add_parser("evaluate", help="free and teacher-forced rollouts and baselines against DEM series")
    p.add_argument("model", help="ONNX model from `calbatch export`")
    p.add_argument("series", nargs="+", help="DEM series files with voxel frames (.h5)")
    p.add_argument("--twin", action="append", default=[], metavar="TWIN.h5",
                   help="a twin DEM series (same pack and CD, another --dt), matched to a series by microstructure id "
                        "and CD: its errors are the ceiling (repeatable)")
    p.add_argument("--no-fick", action="store_true", help="skip the Fick solves (D_eff, tau) of the final frames")
    p.add_argument("--out", default=None, help="folder for evaluation.json and the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    rollout_common(p)
    p.set_defaults(run=_evaluate)

    p = _training_parser(subparsers, "tune", "Optuna search over the training knobs, trials scored on validation data",
                         "study folder (study.db, study.json, best.json, trials/)")
    p.add_argument("--trials", type=count(), default=8, help="trials in all, counting resumed ones (default 8)")
    p.add_argument("--epochs", type=count(), default=2, help="epochs per trial (default 2)")
    p.add_argument("--max-windows", type=count(), default=32, help="training windows per epoch (default 32)")
    p.add_argument("--max-val-windows", type=count(), default=16, help="validation windows (default 16)")
    p.add_argument("--batch-size", type=count(), default=2, help="windows per batch (default 2)")
    p.add_argument("--crop", type=_crop, default=(32, 32), metavar="CY,CX",
                   help="periodic x/y crop of training and validation windows, or 'none' (default 32,32)")
    p.add_argument("--score-horizon", type=count(), default=2,
                   help="steps unrolled when scoring every trial on validation (default 2)")
    p.add_argument("--test-split", default=None, metavar="SPEC",
                   help="held-out series, never read (default the paper's '4;1:45;2:35;3:25,45')")
    p.add_argument("--val-fraction", type=finite("nonnegative"), default=0.15,
                   help="share of the remaining series for validation (default 0.15)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampler and of every trial (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the study in --out")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_tune)
