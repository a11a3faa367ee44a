"""What every command shares about its output and arguments: strict JSON or a table on stdout (one
rank prints), checked numeric options, PETSc/ library chatter kept off stdout."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys

import numpy as np

from ..common.mpi import is_root


def strict(value, path: str = "", replaced: list | None = None):
    """``value`` with numpy scalars and arrays as plain Python and every NaN or infinity as None;
    the JSON paths of the replaced numbers are appended to ``replaced``."""
    if isinstance(value, dict):
        return {k: strict(v, f"{path}.{k}" if path else str(k), replaced) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [strict(v, f"{path}[{i}]", replaced) for i, v in enumerate(list(value))]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        if replaced is not None:
            replaced.append(path)
        return None
    return value


def to_json(result: dict) -> str:
    """Strict JSON (no NaN/Infinity literals): a non-finite number becomes null and its path is
    listed under ``non_finite``."""
    replaced: list[str] = []
    clean = strict(result, replaced=replaced)
    if replaced:
        clean["non_finite"] = replaced
    return json.dumps(clean, indent=2, allow_nan=False, default=str)


def print_result(result: dict, as_json: bool, table: str | None = None) -> None:
    """Print a command's result as strict JSON or as its human table, on one rank only."""
    if not is_root():
        return
    print(to_json(result) if as_json or table is None else table)
    sys.stdout.flush()


@contextlib.contextmanager
def stdout_to_stderr():
    """Send what libraries write to file descriptor 1 (PETSc monitors, LIGGGHTS) to stderr while
    the block runs, so stdout holds only the command's result."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def finite(kind: str = "positive"):
    """An argparse type for a finite float that is ``positive``, ``nonnegative``, a ``fraction``
    in [0, 1) or ``any``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if kind == "positive" and not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        if kind == "nonnegative" and value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
        if kind == "fraction" and not 0 <= value < 1:
            raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
        return value

    parse.__name__ = f"{kind} number"
    return parse


def count(minimum: int = 1):
    """An argparse type for an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def add_flags(parser, options_class, parsers: dict | None = None) -> None:
    """A flag per option field of ``options_class`` (see :func:`calbatch.model.options.option`): its
    name, help, default and check come from the field; ``parsers`` maps a field name to its own
    argparse type (for fields that are neither numbers nor strings)."""
    from ..model.options import flag_name, flagged

    for f in flagged(options_class):
        m, base = f.metadata, f.type.split("|")[0].strip()
        if f.name in (parsers or {}):
            kind = parsers[f.name]
        elif base == "int":
            kind = int if m["min"] is None else count(m["min"])
        elif base == "float":
            kind = finite("nonnegative" if m["min"] == 0 else "positive")
        else:
            kind = str
        shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        help_text = m["help"] if f.default is None else f"{m['help']} (default {shown})"
        parser.add_argument(flag_name(f), dest=f.name, type=kind, default=f.default, choices=m["choices"],
                            metavar=m["metavar"] or (None if m["choices"] else flag_name(f)[2:].upper()), help=help_text)


def options_from(args, options_class, **extra):
    """The options dataclass ``options_class`` from the parsed flags of :func:`add_flags`."""
    from ..model.options import flagged

    return options_class(**{f.name: getattr(args, f.name) for f in flagged(options_class)}, **extra)
