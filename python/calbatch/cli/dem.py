"""``calbatch dem pack | calender | dataset | revoxelize | summary | plot``: the DEM stage's command line.
Flag names follow the API's keyword names (``--n-am`` is ``n_am``, ``--nprocs`` is ``nprocs``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import dem
from ..dem.settings import CBD_DIAMETER_UM, DEFAULT_AM_PARTICLES, DEFAULT_CDS, DEFAULT_MASS_RATIO, DEFAULT_SPEED
from ..electrode.volume import DEFAULT_NANOPOROSITY, DEFAULT_VOXEL_SIZE_UM
from .output import count, finite, print_result, stdout_to_stderr


def _mass_ratio(text: str) -> tuple[float, float]:
    try:
        am, cbd = (finite()(x) if i == 0 else finite("nonnegative")(x) for i, x in enumerate(text.split(":")))
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected AM:CBD as two numbers such as 96:4, got {text!r}") from None
    return am, cbd


def _grid(q) -> None:
    q.add_argument("--voxel-size", type=finite(), default=DEFAULT_VOXEL_SIZE_UM, help="voxel edge in um (default 0.4)")
    q.add_argument("--nz", type=count(), default=125, help="voxels along z, the press axis (default 125)")


def _json(q) -> None:
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _dem_options(q) -> None:
    q.add_argument("--dt", type=finite(), default=None, help="time step in us (default: 2.5e-4 x smallest diameter in um)")
    q.add_argument("--nprocs", type=count(), default=1, help="MPI ranks per LIGGGHTS run (default 1)")


def _calender_options(q) -> None:
    q.add_argument("--speed", type=finite(), default=DEFAULT_SPEED, help=f"press speed in m/s (default {DEFAULT_SPEED:g})")
    q.add_argument("--frame-interval", type=finite(), default=None,
                   help=f"simulated time between frames in us (default: 1 um of press travel, {1 / DEFAULT_SPEED:g} us "
                        f"at {DEFAULT_SPEED:g} m/s)")


def _pack_options(q) -> None:
    q.add_argument("--n-am", type=count(), default=DEFAULT_AM_PARTICLES,
                   help=f"AM particles per electrode (default {DEFAULT_AM_PARTICLES})")
    q.add_argument("--box", type=finite(), default=30.4, help="periodic x-y box edge in um (default 30.4)")
    q.add_argument("--size-scale", type=finite(), default=1.0, help="scale all diameters (small test systems)")
    q.add_argument("--mass-ratio", type=_mass_ratio, default=DEFAULT_MASS_RATIO, metavar="AM:CBD",
                   help="AM:CBD mass ratio (default 96:4)")
    q.add_argument("--nanoporosity", type=finite("fraction"), default=DEFAULT_NANOPOROSITY,
                   help="nanopore fraction of the CBD domain (default 0.5)")
    q.add_argument("--cbd-diameter", type=finite(), default=CBD_DIAMETER_UM,
                   help=f"CBD sphere diameter in um (default {CBD_DIAMETER_UM:g})")


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("dem", help="DEM ground truth with LIGGGHTS: pack, calender, dataset, revoxelize, plot")
    sub = p.add_subparsers(dest="dem_command", required=True, metavar="VERB", parser_class=type(p))

    q = sub.add_parser("pack", help="settle an uncalendered electrode (pack file)")
    q.add_argument("--out", required=True, help="pack file to write (.h5)")
    q.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    q.add_argument("--microstructure-id", type=count(), default=1, help="microstructure id (default 1)")
    for add in (_pack_options, _grid, _json, _dem_options):
        add(q)
    q.set_defaults(run=_pack)

    q = sub.add_parser("calender", help="press a pack to a CD, release, relax; write the series file")
    q.add_argument("pack", help="pack file from `calbatch dem pack`")
    q.add_argument("--cd", type=finite(), required=True, help="compression degree in percent of the thickness")
    q.add_argument("--out", required=True, help="series file to write (.h5)")
    q.add_argument("--particles-out", default=None, help="also write the compact particle-only file here (.h5)")
    q.add_argument("--plots", default=None, help="folder for the series' PNG plots")
    for add in (_grid, _json, _dem_options, _calender_options):
        add(q)
    q.set_defaults(run=_calender)

    q = sub.add_parser("dataset", help="electrodes x CDs (paper grid + random CDs), in parallel, resumable")
    q.add_argument("--out", required=True, help="output folder (the shipped one is data/dem/default)")
    q.add_argument("--n", type=count(0), default=4, help="electrodes at the --cd list (default 4)")
    q.add_argument("--cd", type=finite(), nargs="+", default=list(DEFAULT_CDS),
                   help="CD list in percent (default 20 25 .. 50)")
    q.add_argument("--n-random", type=count(0), default=4, help="further electrodes at random CDs (default 4)")
    q.add_argument("--random-cds", type=count(), default=7, help="random CDs per further electrode, in 20-50 (default 7)")
    q.add_argument("--seed", type=int, default=1, help="seed of the first electrode; electrode k gets seed+k-first")
    q.add_argument("--first", type=count(), default=1,
                   help="number of the first electrode (default 1; 9 numbers a further dataset after the default's 8)")
    q.add_argument("--workers", type=count(), default=2, help="parallel LIGGGHTS runs (default 2)")
    for add in (_pack_options, _grid, _json, _dem_options, _calender_options):
        add(q)
    q.set_defaults(run=_dataset)

    q = sub.add_parser("revoxelize", help="voxelize the particle frames of series files again, without DEM")
    q.add_argument("sources", nargs="+", help="series or particle files (.h5)")
    q.add_argument("--out", required=True, help="output series file (.h5) for one source, or a folder for several")
    _grid(q)
    _json(q)
    q.set_defaults(run=_revoxelize)

    q = sub.add_parser("summary", help="a dataset's results per CD (porosity, spring-back, contacts, cost)")
    q.add_argument("folder", help="dataset folder (holding particles/*.h5)")
    q.add_argument("--markdown", action="store_true", help="a markdown table per CD instead of one row per series")
    _json(q)
    q.set_defaults(run=_summary)

    q = sub.add_parser("plot", help="PNG plots of one series (a series or particle file)")
    q.add_argument("series", help="series or particle file (.h5)")
    q.add_argument("--out", required=True, help="folder for the PNGs")
    _json(q)
    q.set_defaults(run=_plot)


def _pack_settings(args) -> dict:
    return {"n_am": args.n_am, "box_xy": args.box, "size_scale": args.size_scale, "voxel_size": args.voxel_size,
            "nz": args.nz, "dt": args.dt, "nprocs": args.nprocs, "mass_ratio": args.mass_ratio,
            "nanoporosity": args.nanoporosity, "cbd_diameter": args.cbd_diameter}


def _calender_settings(args) -> dict:
    return {"speed": args.speed, "frame_interval_us": args.frame_interval, "dt": args.dt,
            "voxel_size": args.voxel_size, "nz": args.nz, "nprocs": args.nprocs}


def _pack(args) -> None:
    with stdout_to_stderr():
        r = dem.pack(Path(args.out), seed=args.seed, microstructure_id=args.microstructure_id, **_pack_settings(args))
    print_result(r, args.json, "\n".join(f"{k:<26} {v}" for k, v in r.items()))


def _calender(args) -> None:
    with stdout_to_stderr():
        r = dem.calender(Path(args.pack), args.cd, Path(args.out),
                         particles_out=Path(args.particles_out) if args.particles_out else None,
                         **_calender_settings(args))
        if args.plots:
            r["plots"] = dem.plot(Path(args.out), Path(args.plots))
    print_result(r, args.json, dem.format_table([r]))


def _dataset(args) -> None:
    plan = dem.dataset_plan(args.n, args.cd, args.n_random, args.random_cds, args.seed, first=args.first)
    with stdout_to_stderr():
        r = dem.dataset(Path(args.out), plan, args.workers, _pack_settings(args), _calender_settings(args))
    print_result(r, args.json, dem.format_table(r["series"]))


def _revoxelize(args) -> None:
    r = dem.revoxelize([Path(s) for s in args.sources], Path(args.out), args.voxel_size, args.nz)
    print_result({"revoxelized": r}, args.json, "\n".join(f"{x['source']} -> {x['out']} {x['shape_zyx']}" for x in r))


def _plot(args) -> None:
    paths = dem.plot(Path(args.series), Path(args.out))
    print_result({"plots": paths}, args.json, "\n".join(paths))


def _summary(args) -> None:
    rows = dem.summarize_dataset(Path(args.folder))
    print_result({"series": rows}, args.json, dem.cd_table(rows) if args.markdown else dem.format_table(rows))
