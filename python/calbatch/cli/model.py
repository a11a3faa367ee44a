"""``calbatch train | tune | export | rollout | evaluate``: the learned frame model's command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from .output import add_flags, count, finite, options_from, print_result


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
    from ..model.options import NETWORKS, TrainOptions, flagged
    from ..model.train import train

    network = {f.name: getattr(args, f.name) for f in flagged(NETWORKS[args.kind])}
    r = train([Path(s) for s in args.series], Path(args.out), options_from(args, TrainOptions, network=network),
              resume=args.resume)
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
                     args.voxel_size, args.threads, particles_out=Path(args.particles_out) if args.particles_out else None)
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
             f"{'D_eff':>6} {'tau':>6} {'pores D_eff':>11} {'tau':>6} {'thick':>5}"]
    for name, v in r["summary"].items():
        if "r2_mean" not in v:  # the training-set porosity baseline: porosity only
            lines.append(f"{name:<22} {'-':>7} {'-':>8} {'-':>6} {'-':>7} {_pct(v['final_porosity_error']):>8}")
            continue
        thick = v["final_thickness_error_voxels"]["mean_abs"]
        lines.append(f"{name:<22} {v['r2_mean']:7.3f} {v['r2_worst']:8.3f} {v['iou_mean']['AM']:6.3f} "
                     f"{_pct(v['am_volume_error_max']):>7} {_pct(v['final_porosity_error']):>8} {_pct(v['contact_area_error']):>7} "
                     f"{_pct(v.get('d_eff_error')):>6} {_pct(v.get('tau_error')):>6} {_pct(v.get('d_eff_error_pores')):>11} "
                     f"{_pct(v.get('tau_error_pores')):>6} {thick:5.1f}")
    lines.append("(R2 over frames; IoU AM mean; AM vol: worst |volume error| in any frame; porosity, contact areas, D_eff, "
                 "tau: mean |relative error| on the final frame, the CBD conducting, then through the pores alone; "
                 "thick: mean |final thickness error| in voxels)")
    if r.get("particle_drift"):
        lines.append("particle drift from the DEM, final frame (mean over series): "
                     + "; ".join(f"{name} median {d['final_median_um']:.2f} um, p90 {d['final_p90_um']:.2f} um "
                                 f"({d['final_aligned_median_um']:.2f} and {d['final_aligned_p90_um']:.2f} um with the "
                                 f"bed's slide of {d['final_slide_um']:.2f} um taken out, R2 per frame then "
                                 f"{d['aligned_r2_mean']:.3f} / {d['aligned_r2_worst']:.3f})"
                                 for name, d in r["particle_drift"].items()))
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
    from ..model.options import TuneOptions
    from ..model.tune import tune

    r = tune([Path(s) for s in args.series], Path(args.out), options_from(args, TuneOptions), resume=args.resume)
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


def _training_parser(subparsers, name: str, help: str, out_help: str, options_class):
    """The parser of a command that trains on DEM series (train, tune): the series, --out, a flag
    per option of ``options_class``, --resume and --json."""
    p = subparsers.add_parser(name, help=help)
    p.add_argument("series", nargs="+", help="series files with voxel frames (.h5)")
    p.add_argument("--out", required=True, help=out_help)
    add_flags(p, options_class, parsers={"crop": _crop})
    p.add_argument("--resume", action="store_true", help=f"continue the {name} run in --out")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def add_cli(subparsers) -> None:
    from ..model.options import NETWORKS, TrainOptions, TuneOptions
    from ..surrogate.rules import DEFAULT_RULE, RULES, rules_help

    p = _training_parser(subparsers, "train", "train a frame model on DEM series (checkpoints, resume, early stop)",
                         "run folder (checkpoints, run.json, state.json)", TrainOptions)
    for network in NETWORKS.values():
        add_flags(p.add_argument_group(f"{network.kind} network"), network)
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
        q.add_argument("--decision", choices=list(RULES), default=DEFAULT_RULE, help="scores -> phases: " + rules_help())
        q.add_argument("--threads", type=count(), default=None, help="ONNX Runtime threads (default: its choice)")
        q.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = subparsers.add_parser("rollout", help="free rollout of an ONNX model through the DEM's press schedule")
    p.add_argument("model", help="ONNX model: a frame model from `calbatch export` or a particle model")
    p.add_argument("start", help="uncalendered volume (.npy, .tif, file.h5:/dataset, or example) or a series file (.h5)")
    p.add_argument("--cd", type=finite(), required=True, help="compression degree in percent")
    p.add_argument("--out", required=True, help="series file to write (.h5)")
    p.add_argument("--particles-out", default=None, metavar="FILE",
                   help="a particle model: also write its particles of every frame here (.h5, the DEM's particle file)")
    p.add_argument("--start-frames", type=int, choices=(1, 3), default=1,
                   help="frames of a series to start from (default 1: the uncalendered frame)")
    p.add_argument("--voxel-size", type=finite(), default=None,
                   help="voxel edge in um (default: what the file states, else the model's; a file that states another is refused)")
    p.add_argument("--allow-extrapolation", action="store_true",
                   help="run a CD further outside the model's trained range than the margin its file states")
    rollout_common(p)
    p.set_defaults(run=_rollout)

    p = subparsers.add_parser("evaluate", help="free and teacher-forced rollouts and baselines against DEM series")
    p.add_argument("model", help="ONNX model: a frame model from `calbatch export` or a particle model")
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
                         "study folder (study.db, study.json, best.json, trials/)", TuneOptions)
    p.set_defaults(run=_tune)
