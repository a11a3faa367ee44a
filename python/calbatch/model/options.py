"""Training and tuning options, typed: one dataclass per set, one default per field. Each field's
metadata (help, lowest value, flag name) is what ``calbatch train`` and ``calbatch tune`` generate
their flags from, so a default is written here and nowhere else. No TensorFlow here: the CLI reads
these to build its parsers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

from ..surrogate.contract import Kind

KINDS = tuple(kind.value for kind in Kind if kind.frames)  # the particle step trains apart


def option(default, help: str, *, min: int | None = None, flag: str | None = None, metavar: str | None = None,
           choices: tuple | None = None):
    """A field that is also a command-line flag (``--name-with-dashes`` unless ``flag``). ``min``:
    the lowest value of an integer (None: any); a float is positive, or nonnegative with ``min=0``."""
    return field(default=default, metadata={"help": help, "min": min, "flag": flag, "metavar": metavar,
                                            "choices": choices})


def flagged(cls) -> list:
    """The fields of an options dataclass that are command-line flags, in order."""
    return [f for f in fields(cls) if "help" in f.metadata]


def flag_name(f) -> str:
    """The command-line flag of an option field."""
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


# --- the networks' hyper-parameters (calbatch.model.networks builds them) --------------------------

@dataclass(frozen=True)
class CalbatchNetwork:
    """calbatch's frame model (:func:`calbatch.model.networks.build_calbatch`)."""
    kind: ClassVar[str] = "calbatch"
    channels: int = option(24, "calbatch: coarse channels", min=1)
    layers_coarse: int = option(4, "calbatch: coarse 3x3x3 layers", min=1, flag="--layers")
    factor: int = option(4, "calbatch: coarse cell size in voxels", min=2)
    hidden: int = option(0, "calbatch: per-voxel correction units (0: one correction per cell)", min=0)
    max_residual: float = option(4.0, "calbatch: largest learned z shift per step, voxels")
    max_affine: float = 6.0  # the largest affine z shift per step, voxels (WarpSource clips to it)


@dataclass(frozen=True)
class PaperNetwork:
    """The paper's Model D (:func:`calbatch.model.networks.build_paper`) on the training grid."""
    kind: ClassVar[str] = "paper"
    filters: int = option(16, "paper: Conv1D filters (the paper's 256 does not fit this machine)", min=1)
    dense: int = option(150, "paper: bottleneck width", min=1)
    dropout: float = 0.2
    grid: tuple[int, int, int] | None = None  # a fixed-grid model: the training series' grid


NETWORKS = {n.kind: n for n in (CalbatchNetwork, PaperNetwork)}


# --- training and tuning ---------------------------------------------------------------------------

@dataclass(frozen=True)
class DataOptions:
    """What training and tuning share: the model kind, the data split and how windows are batched."""
    kind: str = option("calbatch", "model kind", flag="--model", choices=KINDS)
    test_split: str | None = option(None, "held-out series, never trained on: whole electrodes and electrode:CD,CD "
                                          "(default the paper's '4;1:45;2:35;3:25,45')", metavar="SPEC")
    val_fraction: float = option(0.15, "share of the remaining series for validation", min=0)
    batch_size: int = option(2, "windows per batch", min=1)
    crop: tuple[int, int] | None = option((32, 32), "random periodic x/y crop of the windows, or 'none'; "
                                                    "the paper model takes whole frames", metavar="CY,CX")
    seed: int = option(0, "random seed")


@dataclass(frozen=True)
class TrainOptions(DataOptions):
    """``calbatch train``: the network's hyper-parameters (``network``, a dict of the kind's
    :data:`NETWORKS` fields; missing ones take their defaults) and the optimisation."""
    network: dict = field(default_factory=dict)
    epochs: int = option(20, "epochs at most", min=1)
    lr: float = option(1e-3, "Adam learning rate")
    horizon: int = option(2, "steps unrolled per window; >1 = pushforward", min=1)
    noise: float = option(0.01, "fraction of input voxels replaced by a z-neighbour's code", min=0)
    vol_weight: float = option(0.1, "weight of the phase-volume loss", min=0)
    patience: int = option(4, "epochs without validation gain before stopping", min=1)
    max_windows: int | None = option(None, "training windows per epoch at most (default all)", min=1)
    max_val_windows: int | None = option(None, "validation windows at most (default all)", min=1)


@dataclass(frozen=True)
class TuneOptions(DataOptions):
    """``calbatch tune``: the study's size and the short training run of each trial."""
    trials: int = option(8, "trials in all, counting resumed ones", min=1)
    epochs: int = option(2, "epochs per trial", min=1)
    max_windows: int | None = option(32, "training windows per epoch", min=1)
    max_val_windows: int | None = option(16, "validation windows", min=1)
    score_horizon: int = option(2, "steps unrolled when scoring every trial on validation", min=1)


def train_flag(name: str) -> str:
    """The ``calbatch train`` flag that sets the training or network option ``name``."""
    for cls in (TrainOptions, *NETWORKS.values()):
        for f in flagged(cls):
            if f.name == name:
                return flag_name(f)
    raise KeyError(name)
