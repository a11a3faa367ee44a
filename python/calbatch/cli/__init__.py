"""The ``calbatch`` command. Every subcommand has the same shape: bad input, a missing optional
dependency or a failed external run is one line on stderr naming the file, field, value or the
command that installs what is missing, and exit status 2; results go to stdout as a table or, with
``--json``, as strict JSON and nothing else. Under mpirun one rank prints. An internal bug still
shows its traceback.

One module per command group (``volume``: metrics; ``dem``; ``transport``; ``model``; ``screen``: screen
and demo; ...), each with an ``add_cli(subparsers)``; stages never import the command line. Heavy dependencies (PETSc,
TensorFlow, ...) are imported inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import warnings

from .. import __version__
from ..common.mpi import is_root
from ..errors import CalbatchError

# Command-group modules, in the order --help lists them.
COMMAND_MODULES: tuple[str, ...] = ("volume", "dem", "transport", "model", "screen", "bench", "optimize", "view")

# Optional dependencies: the one line that says how to get each.
_SETUP = "run `bash tools/setup.sh` from the calbatch repository"
INSTALL_HINTS = {
    "mpi4py": f"mpi4py is not installed: {_SETUP} (builds it against Debian's Open MPI)",
    "petsc4py": f"petsc4py is not installed: {_SETUP} (builds it against Debian's PETSc 3.18)",
    **{name: f"{name} is not installed: training needs the train extra, pip install 'calbatch[train]' (or {_SETUP})"
       for name in ("tensorflow", "keras", "tf2onnx", "onnx", "optuna")},
    "onnxruntime": "ONNX Runtime is not installed: pip install onnxruntime (or " + _SETUP + ")",
    "optuna": "Optuna is not installed: pip install optuna (or " + _SETUP + ")",
    "h5py": "h5py is not installed: pip install h5py",
    "matplotlib": "matplotlib is not installed: pip install matplotlib",
    "tqdm": "tqdm is not installed: pip install tqdm",
    "yaml": "PyYAML is not installed: pip install pyyaml",
    "pydantic": "pydantic is not installed: pip install pydantic",
    "vtkmodules": "VTK is not installed: pip install 'calbatch[view]' (or " + _SETUP + ")",
    "pyvista": "pyvista is not installed: pip install 'calbatch[view]' (or " + _SETUP + ")",
}


# Library errors name parameters; where a parameter's flag is named otherwise, its destination.
_DESTS = {"rule": "decision", "kind": "model"}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (printed by one rank) instead of usage + error; it records
    its flags by destination (``flags``, a default of the parsed command) for :func:`flag_names`."""

    def __init__(self, *a, **kw):
        self.flags: dict[str, str] = {}
        super().__init__(*a, **kw)
        self.set_defaults(flags=self.flags)

    def add_argument(self, *names, **kw):
        action = super().add_argument(*names, **kw)
        if action.option_strings:
            self.flags[action.dest] = action.option_strings[0]
        return action

    def error(self, message: str) -> None:  # type: ignore[override]
        if is_root():
            sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="calbatch", description="calbatch: what calendering does to an electrode's 3-D microstructure.")
    parser.add_argument("--version", action="version", version=f"calbatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"calbatch.cli.{name}").add_cli(sub)
    return parser


def flag_names(message: str, flags: dict) -> str:
    """``message`` with its leading parameter name (``rule: ...``, ``backend 'x': ...``) turned into
    the command's flag for it, where the command has one."""
    m = re.match(r"(\w+)(?=[: ])", message)
    flag = flags.get(_DESTS.get(m.group(1), m.group(1))) if m else None
    return flag + message[m.end():] if flag else message


def _fail(command: str, message: str, code: int = 2) -> int:
    if is_root():
        sys.stderr.write(f"calbatch {command}: error: {message}\n")
    return code


def _warning_line(command: str):
    """Warnings as one line on stderr (one rank), as errors are."""

    def show(message, *_):
        if is_root():
            sys.stderr.write(f"calbatch {command}: warning: {message}\n")

    return show


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `calbatch`: its help, not an error
        parser.print_help()
        return 0
    warnings.showwarning = _warning_line(args.command)
    try:
        args.run(args)
    except CalbatchError as exc:
        return _fail(args.command, flag_names(str(exc), getattr(args, "flags", {})), exc.exit_code)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in INSTALL_HINTS:
            return _fail(args.command, INSTALL_HINTS[exc.name.split(".")[0]])
        raise
    except BrokenPipeError:  # `calbatch ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        return _fail(args.command, f"{exc.filename or ''}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        if is_root():
            sys.stderr.write(f"calbatch {args.command}: interrupted\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
