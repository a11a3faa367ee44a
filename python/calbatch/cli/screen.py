"""``calbatch screen CASES.yaml [--out DIR] [--resume]``: every electrode x CD case of a cases file
through the model, its metrics and Fick, under ``mpirun -n N`` or plainly; resumable.
``calbatch demo``: the screen of the shipped example cases with the shipped model (the main job)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidResult
from .output import count, print_result, stdout_to_stderr


def _demo(args) -> None:
    from ..data import example_cases_path

    args.cases, args.model, args.threads, args.no_plots, args.backend = example_cases_path(), None, None, False, None
    args.allow_extrapolation = False
    # a second demo into the same folder finds every case done and shows the table again
    args.resume = Path(args.out).is_dir()
    _screen(args)


def _screen(args) -> None:
    from ..screen import run_screen

    with stdout_to_stderr():  # PETSc and ONNX Runtime chatter off stdout
        summary = run_screen(args.cases, out=args.out, resume=args.resume, model=args.model, threads=args.threads,
                             plots=not args.no_plots, backend=args.backend, progress=not args.quiet,
                             allow_extrapolation=args.allow_extrapolation)
    table = summary.pop("table")
    lines = [table, "",
             f"{summary['finished']} of {summary['cases']} cases in {summary['results_csv']} "
             f"({summary['ran']} run now on {summary['ranks']} rank(s) in {summary['wall_time_s']:.1f} s, "
             f"{summary['skipped_as_done']} already done; {summary['failed']} failed, {summary['flagged']} flagged)"]
    if summary["plots"]:
        lines.append("plots: " + ", ".join(summary["plots"]))
    print_result(summary, args.json, "\n".join(lines))
    if summary["failed"]:
        raise InvalidResult(f"{summary['failed']} of {summary['cases']} cases failed; their errors are in the "
                            f"error column of {summary['results_csv']}")


def add_cli(subparsers) -> None:
    from ..surrogate import BACKENDS

    p = subparsers.add_parser(
        "screen", help="predict and measure every electrode x CD case of a YAML cases file (mpirun -n N; resumable)")
    p.add_argument("cases", help="cases file (YAML): model, electrodes, cds, fick, keep, decision")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default screen_<cases file name>); must not exist unless --resume")
    p.add_argument("--resume", action="store_true", help="continue the run in --out: skip its finished cases")
    p.add_argument("--model", default=None, metavar="MODEL.onnx", help="model file (overrides the cases file's model:)")
    p.add_argument("--threads", type=count(), default=None, help="ONNX Runtime threads per rank (default: the cases "
                   "file's threads:, else ONNX Runtime's choice)")
    p.add_argument("--backend", default=None, choices=BACKENDS,
                   help="where the network runs (overrides the cases file's backend:; default cpu)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--allow-extrapolation", action="store_true",
                   help="run CDs further outside the model's trained range than the margin its file states")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=_screen)

    p = subparsers.add_parser("demo", help="the main job: screen the shipped example electrode at CD 20, 35 and 50 "
                                           "with the shipped model (porosity, contact areas, D_eff, tau, plots)")
    p.add_argument("--out", default="calbatch_demo", metavar="DIR", help="output folder (default calbatch_demo)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=_demo)
