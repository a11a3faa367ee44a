"""``calbatch optimize [ELECTRODE] (--porosity X | --tau X | --min-tau --max-porosity X)``: the CD
that gives an electrode a target, found with scipy.optimize over full rollouts of the model (flags,
or a YAML file with --config; flags win)."""

from __future__ import annotations

from pathlib import Path

from ..electrode.volume import DEFAULT_CBD_DIFFUSIVITY
from .output import count, finite, print_result, stdout_to_stderr, to_json

DEFAULTS = {"electrode": None, "model": None, "cd_range": None, "grid": 5, "xtol": 0.1, "cbd_diffusivity": DEFAULT_CBD_DIFFUSIVITY,
            "threads": None}


def _settings(args) -> dict:
    """The config file's values (if any), overridden by the flags given; the target checked."""
    from ..errors import CalbatchError
    from ..optimize.config import load_config
    from ..optimize.search import Target

    s = dict(DEFAULTS, target=None)
    if args.config:
        s.update(load_config(Path(args.config)))
    for key in DEFAULTS:
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if args.min_tau != (args.max_porosity is not None):
        raise CalbatchError("--min-tau and --max-porosity go together: the lowest tau at porosity <= X")
    given = [t for t in (("porosity", args.porosity), ("tau", args.tau), ("min_tau", args.max_porosity)) if t[1] is not None]
    if len(given) > 1:
        raise CalbatchError("give one target: --porosity X, --tau X, or --min-tau --max-porosity X")
    if given:
        s["target"] = Target(*given[0])
    if s["target"] is None:
        raise CalbatchError("no target: give --porosity X, --tau X, or --min-tau --max-porosity X (or --config FILE)")
    return s


def _table(r: dict) -> str:
    key = "tau" if r["target_kind"] == "tau" else "porosity"
    lines = [f"{'CD %':>7} {'porosity':>9}" + (f" {'tau':>7} {'D_eff':>7}" if "tau" in r["curve"][0] else "")
             + f" {'s':>6}  stage"]
    for p in r["curve"]:
        lines.append(f"{p['cd_percent']:7.3f} {p['porosity']:9.4f}" + (f" {p['tau']:7.3f} {p['d_eff']:7.4f}" if "tau" in p else "")
                     + f" {p['seconds']:6.2f}  {p['stage']}")
    a = r["answer"]
    flag = "  (outside the model's trained CD range)" if a["cd_extrapolated"] else ""
    lines += ["", f"target    {r['target']} ({r['electrode']})",
              f"answer    CD {a['cd_percent']:.3f} %: porosity {a['porosity']:.4f}"
              + (f", tau {a['tau']:.3f}" if "tau" in a else "")
              + (f" (residual {a['residual']:+.4f} {key})" if "residual" in a else "") + flag,
              f"search    {r['method']}, {r['evaluations']} rollouts in {r['seconds']:.1f} s "
              f"(model loaded once in {r['model_load_s']:.2f} s); reachable porosity "
              f"{r['reachable']['porosity'][0]:.4f}-{r['reachable']['porosity'][1]:.4f}"]
    if "dem_check" in r:
        c = r["dem_check"]
        lines.append(f"DEM check CD {c['cd_percent']:.3f} %: porosity {c['dem_porosity']:.4f} (model "
                     f"{c['dl_minus_dem_porosity_points']:+.2f} points off"
                     + (f", DEM {c['dem_minus_target_points']:+.2f} points from the target" if "dem_minus_target_points" in c else "")
                     + (f"; tau DEM {c['dem_tau']:.3f}, model {100 * c['dl_tau_rel_error']:+.1f} %" if "dem_tau" in c else "")
                     + f"), {c['dem_wall_s']:.0f} s of DEM")
    for k, label in (("plot", "plot"), ("results_file", "results")):
        if k in r:
            lines.append(f"{label:<9} {r[k]}")
    return "\n".join(lines)


def _optimize(args) -> None:
    import time

    from ..dem.reference import dem_settings
    from ..electrode.series import atomic_text
    from ..errors import CalbatchError
    from ..optimize.plots import plot_curve
    from ..optimize.search import check_with_dem, load_electrode, optimize
    from ..screen import Predictor
    from .bench import check_json_out, check_writable

    s = _settings(args)
    check_json_out(args.out)
    if args.plot and Path(args.plot).suffix.lower() != ".png":
        raise CalbatchError(f"--plot {args.plot}: expected a file name ending in .png")
    check_writable(args.plot, "--plot")
    electrode = load_electrode(s["electrode"])
    if args.check_dem == "auto" and electrode["pack"] is None:  # say so before the search, not after
        raise CalbatchError(f"--check-dem: the electrode {electrode['name']} is a volume, not a pack; name the pack "
                            "it was voxelized from: --check-dem PACK.h5")
    fick = {"cbd_diffusivity": s["cbd_diffusivity"]}
    t0 = time.perf_counter()
    predictor = Predictor(s["model"], threads=s["threads"])
    load_s = time.perf_counter() - t0
    with stdout_to_stderr():  # PETSc and LIGGGHTS chatter off stdout
        r = optimize(electrode, s["target"], predictor, s["cd_range"], s["grid"], s["xtol"], fick, not args.quiet,
                     args.allow_extrapolation)
        r["model_load_s"] = load_s
        if args.check_dem:
            settings = dem_settings(None if args.dataset == "none" else Path(args.dataset))
            r["dem_check"] = check_with_dem(r, electrode, predictor, fick,
                                            None if args.check_dem == "auto" else args.check_dem, settings)
    if args.plot:
        r["plot"] = plot_curve(r, Path(args.plot))
    if args.out:
        atomic_text(Path(args.out), to_json(r))
        r["results_file"] = args.out
    print_result(r, args.json, _table(r))


def add_cli(subparsers) -> None:
    from ..dem.reference import DEFAULT_DATASET

    p = subparsers.add_parser("optimize", help="the CD that gives an electrode a target porosity or tortuosity")
    p.add_argument("electrode", nargs="?", default=None,
                   help="uncalendered volume (.npy, .tif, file.h5:/dataset) or pack file (default: the shipped example)")
    g = p.add_argument_group("target (one of)")
    g.add_argument("--porosity", type=finite("fraction"), default=None, help="reach this porosity (nanopores excluded)")
    g.add_argument("--tau", type=finite(), default=None, help="reach this tortuosity factor (Fick solve per rollout)")
    g.add_argument("--min-tau", action="store_true", help="the lowest tau at porosity <= --max-porosity")
    g.add_argument("--max-porosity", type=finite("fraction"), default=None, help="the porosity bound of --min-tau")
    p.add_argument("--config", default=None, metavar="FILE.yaml", help="settings and target as YAML (flags win)")
    p.add_argument("--model", default=None, help="ONNX model (default: the shipped one)")
    p.add_argument("--cd-range", type=finite(), nargs=2, default=None, metavar=("LO", "HI"),
                   help="CDs searched, percent (default: the model's trained range)")
    p.add_argument("--grid", type=count(2), default=None, help="CDs scanned before refining (default 5)")
    p.add_argument("--xtol", type=finite(), default=None, help="CD tolerance of the refinement, percent (default 0.1)")
    p.add_argument("--cbd-diffusivity", type=finite("nonnegative"), default=None,
                   help=f"CBD diffusivity relative to the pore's, for tau (default {DEFAULT_CBD_DIFFUSIVITY:.4f} = 0.5^1.5)")
    p.add_argument("--threads", type=count(), default=None, help="ONNX Runtime threads (default: its choice)")
    p.add_argument("--check-dem", nargs="?", const="auto", default=None, metavar="PACK",
                   help="run the DEM at the CD found and compare (the electrode's pack, or PACK)")
    p.add_argument("--dataset", default=str(DEFAULT_DATASET),
                   help="dataset.json whose calender settings the DEM check uses (default: the default dataset's)")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="the searched curve as a PNG")
    p.add_argument("--out", default=None, metavar="FILE.json", help="also write the results as JSON here")
    p.add_argument("--allow-extrapolation", action="store_true",
                   help="search CDs further outside the model's trained range than the margin its file states")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=_optimize)
