"""``calbatch bench dl-vs-dem [PACK] --cd CD ...``: the DEM calendering and the model's rollout of
the same electrode side by side: wall times per step and per case, their ratio, and the DL
result's accuracy against that DEM run; with a projection of the DEM's cost at the paper's settings."""

from __future__ import annotations

from pathlib import Path

from ..electrode.series import atomic_text
from ..electrode.volume import DEFAULT_CBD_DIFFUSIVITY
from .output import count, finite, print_result, stdout_to_stderr, to_json


def check_json_out(path: str | None) -> None:
    """Refuse an --out that cannot be written before hours of DEM, not after."""
    from ..errors import CalbatchError

    if path is not None and (Path(path).is_dir() or not Path(path).suffix == ".json"):
        raise CalbatchError(f"--out {path}: expected a results file name ending in .json")
    check_writable(path, "--out")


def check_writable(path: str | None, option: str) -> None:
    """Refuse a file whose folder cannot be made or written, before the work that fills it."""
    import os

    from ..errors import CalbatchError

    if path is None:
        return
    parent = Path(path).absolute().parent
    while not parent.exists():  # folders still to make: the first one that exists must take them
        parent = parent.parent
    if not parent.is_dir():
        raise CalbatchError(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise CalbatchError(f"{option} {path}: the folder {parent} is not writable")


def _yes(flag: bool) -> str:
    return "met" if flag else "MISSED"


def format_report(r: dict) -> str:
    """The human table: per step, per case, the goals, the projection."""
    b = r["dl_backend"]
    lines = [f"pack {r['pack']} (top {r['h0_um']:.2f} um, grid {'x'.join(map(str, r['grid_zyx']))} z,y,x); "
             f"model {r['model']}",
             f"DL: {b['name']} {b['version']} {', '.join(b['providers_used'])} (threads {b['threads'] or 'default'}), "
             f"median of {r['dl_repeats']} rollouts"
             + "".join(f"; {k} unavailable ({v})" for k, v in r["dl_backends_unavailable"].items())
             + f"; DEM: LIGGGHTS at the settings of {r['dem_settings']['source']}"]
    for c in r["cases"]:
        t, a = c["timing"], c["accuracy"]
        flag = "  (CD outside the model's trained range)" if c["cd_extrapolated"] else ""
        lines += ["", f"CD {c['cd_percent']:g} %: {t['frames']} frames{flag}",
                  f"{'frame':>5} {'stage':<8} {'DEM s':>8} {'DL s':>8} {'DEM/DL':>8} {'R2':>7} {'AM vol':>7}"]
        for f in c["per_frame"]:
            lines.append(f"{f['frame']:5d} {f['phase']:<8} {f['dem_s']:8.2f} {f['dl_s']:8.3g} {f['ratio']:7.0f}x "
                         f"{f['r2']:7.3f} {f['am_volume_ratio']:7.3f}")
        lines.append(f"per step: DEM {t['dem_s_per_step']:.2f} s (press {t['dem_s_per_press_step']:.2f} s), "
                     f"DL {t['dl_s_per_step']:.3g} s: {t['ratio_per_step']:.0f}x")
        for name, bt in t["backends"].items():
            lines.append(f"backend {name}: DL {bt['dl_s_per_step']:.3g} s a step, {bt['ratio_per_step']:.0f}x"
                         + ("" if bt["same_frames"] else " (frames differ from the first backend's)"))
        lines.append(f"per case: DEM {t['dem_case_s']:.1f} s of LIGGGHTS ({t['dem_run_s']:.1f} s with voxelization), "
                     f"DL {t['dl_case_s']:.3g} s (rollout + metrics{' + Fick' if 'tau_dl' in a else ''}): "
                     f"{t['ratio_per_case']:.0f}x")
        lines.append(f"accuracy: R2 mean {a['r2_mean']:.3f} / worst {a['r2_worst']:.3f}; porosity DL {a['porosity_dl']:.4f} "
                     f"DEM {a['porosity_dem']:.4f} ({100 * a['porosity_rel_error']:+.1f} %); thickness "
                     f"{a['thickness_voxels_dl']} / {a['thickness_voxels_dem']} voxels; AM volume within "
                     f"{100 * a['am_volume_error_max']:.1f} %")
        lines.append("contact areas (um2, DL / DEM): " + "; ".join(
            f"{k} {v['dl_um2']:.0f} / {v['dem_um2']:.0f} ({100 * v['rel_error']:+.1f} %)" for k, v in a["contact_areas"].items()))
        if "tau_dl" in a:
            lines.append(f"Fick: D_eff/D_bulk DL {a['d_eff_dl']:.4f} DEM {a['d_eff_dem']:.4f} "
                         f"({100 * a['d_eff_rel_error']:+.1f} %); tau DL {a['tau_dl']:.3f} DEM {a['tau_dem']:.3f} "
                         f"({100 * a['tau_rel_error']:+.1f} %){'' if a['fick_converged'] else '  NOT CONVERGED'}")
        lines.append("goals: " + ", ".join(f"{k} {_yes(v)}" for k, v in c["goals_met"].items()))
    p = r["projection"]
    lines += ["", f"PROJECTION, not a measurement: the DEM at the paper's settings, from the measured "
              f"{p['measured_s_per_frame']:.1f} s a press frame: real AM stiffness ({p['am_modulus_gpa']['real']:g} GPa "
              f"instead of {p['am_modulus_gpa']['calbatch']:g}) x{p['steps_factor']:.2f} steps -> "
              f"{p['projected_s_per_frame_real_stiffness']:.0f} s; CT-shaped particles as clumps of "
              f"{p['spheres_per_particle']} spheres x{p['spheres_factor']:.2f} -> "
              f"{p['projected_s_per_frame_paper_settings']:.0f} s a frame (the paper: ~47 min)"]
    return "\n".join(lines)


def _dl_vs_dem(args) -> None:
    from ..dem.reference import dem_settings
    from ..evaluate.bench import dl_vs_dem

    check_json_out(args.out)
    settings = dem_settings(None if args.dataset == "none" else Path(args.dataset), speed=args.speed,
                            frame_interval_us=args.frame_interval, dt=args.dt, nprocs=args.nprocs)
    fick = False if args.no_fick else {"cbd_diffusivity": args.cbd_diffusivity}
    with stdout_to_stderr():  # LIGGGHTS and PETSc chatter off stdout
        r = dl_vs_dem(Path(args.pack) if args.pack else None, args.cd, model=args.model, settings=settings,
                      threads=args.threads, repeats=args.repeats, fick=fick, keep=Path(args.keep) if args.keep else None,
                      clump_spheres=args.clump_spheres, backends=args.backend,
                      renders=Path(args.out).with_suffix("") if args.out else None)
    if args.out:
        atomic_text(Path(args.out), to_json(r))
        r["results_file"] = args.out
    shown = [c["render"] for c in r["cases"] if c.get("render")]
    print_result(r, args.json, format_report(r) + (f"\nresults: {args.out}" if args.out else "")
                 + "".join(f"\n3-D render, DEM against model: {p}" for p in shown))


def add_cli(subparsers) -> None:
    from ..dem.reference import DEFAULT_DATASET

    p = subparsers.add_parser("bench", help="benchmarks of calbatch against the DEM (dl-vs-dem)")
    sub = p.add_subparsers(dest="bench_command", required=True, metavar="VERB", parser_class=type(p))
    q = sub.add_parser("dl-vs-dem", help="DEM calendering and the model's rollout of one electrode side by side")
    q.add_argument("pack", nargs="?", default=None,
                   help="pack file from `calbatch dem pack` (default: the example electrode's, shipped)")
    q.add_argument("--cd", type=finite(), nargs="+", required=True, help="compression degree(s) in percent")
    q.add_argument("--model", default=None, help="ONNX model (default: the shipped one)")
    q.add_argument("--backend", nargs="+", default=["cpu"], metavar="NAME",
                   help="DL backend(s) timed: cpu (default), ort-cuda, ort-tensorrt, tensorrt, or all (every one "
                        "that opens here); the first is compared with the DEM")
    q.add_argument("--threads", type=count(), default=None, help="ONNX Runtime threads (default: its choice)")
    q.add_argument("--repeats", type=count(), default=3, help="DL rollouts per case; times are their median (default 3)")
    q.add_argument("--no-fick", action="store_true", help="skip D_eff and tau (the Fick solves)")
    q.add_argument("--cbd-diffusivity", type=finite("nonnegative"), default=DEFAULT_CBD_DIFFUSIVITY,
                   help=f"CBD diffusivity relative to the pore's for the Fick solves (default {DEFAULT_CBD_DIFFUSIVITY:.4f} = 0.5^1.5)")
    q.add_argument("--dataset", default=str(DEFAULT_DATASET),
                   help="dataset.json whose calender_settings the DEM uses (default: the default dataset's; "
                        "'none': calbatch's DEM defaults)")
    q.add_argument("--speed", type=finite(), default=None, help="override: press speed in m/s")
    q.add_argument("--frame-interval", type=finite(), default=None, help="override: simulated us between frames")
    q.add_argument("--dt", type=finite(), default=None, help="override: DEM time step in us")
    q.add_argument("--nprocs", type=count(), default=None, help="override: MPI ranks per LIGGGHTS run")
    q.add_argument("--clump-spheres", type=count(), default=20,
                   help="projection only: spheres per CT-shaped particle (an assumption; default 20)")
    q.add_argument("--keep", default=None, metavar="DIR", help="keep the DEM and DL series in this folder")
    q.add_argument("--out", default=None, metavar="FILE.json", help="also write the results as JSON here, and a 3-D render of each case beside it")
    q.add_argument("--json", action="store_true", help="print JSON instead of tables")
    q.set_defaults(run=_dl_vs_dem)
