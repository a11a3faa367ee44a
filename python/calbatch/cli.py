"""The ``calbatch`` command. Every subcommand has the same shape: bad input is one line on stderr
naming the file, field or value and a non-zero exit (2), results go to stdout as a table or, with
``--json``, as JSON.

Stage modules add their own subcommands through an ``add_cli(subparsers)`` function; they import
heavy dependencies (PETSc, TensorFlow, ...) only inside the command, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from . import __version__
from .errors import CalbatchError

# Modules that register subcommands of their own, in the order --help lists them.
STAGE_MODULES: tuple[str, ...] = ("dem", "transport")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def print_result(result: dict, as_json: bool, table: str | None = None) -> None:
    """Print a command's result as JSON or as its human table."""
    if as_json:
        print(json.dumps(result, indent=2, default=float))
    else:
        print(table if table is not None else json.dumps(result, indent=2, default=float))


def _metrics(args: argparse.Namespace) -> None:
    from .metrics import format_table, measure
    from .volume import read_volume

    if args.voxel_size <= 0:
        raise CalbatchError(f"--voxel-size: must be positive, got {args.voxel_size}")
    volume = read_volume(args.volume)
    result = {"volume": args.volume, **measure(volume, args.voxel_size)}
    print_result(result, args.json, f"volume                 {args.volume}\n" + format_table(result))


def _demo(args: argparse.Namespace) -> None:
    from .data import example_volume_path

    args.volume = example_volume_path()
    _metrics(args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="calbatch", description="calbatch: what calendering does to an electrode's 3-D microstructure.")
    parser.add_argument("--version", action="version", version=f"calbatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("metrics", help="phase fractions, porosity, thickness and contact areas of a volume")
    p.add_argument("volume", help="VOLUME: .npy, .tif/.tiff stack or file.h5:/dataset")
    p.add_argument("--voxel-size", type=float, default=0.4, help="voxel edge in um (default 0.4)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_metrics)

    p = sub.add_parser("demo", help="run the main job on the shipped example electrode")
    p.add_argument("--voxel-size", type=float, default=0.4, help="voxel edge in um (default 0.4)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_demo)

    for name in STAGE_MODULES:
        importlib.import_module(f"calbatch.{name}").add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except CalbatchError as exc:
        sys.stderr.write(f"calbatch {args.command}: error: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"calbatch {args.command}: error: {exc.filename or ''}: {exc.strerror or exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"calbatch {args.command}: interrupted\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
