"""``calbatch metrics VOLUME``: the electrode metrics of one volume."""

from __future__ import annotations

from ..electrode.volume import DEFAULT_NANOPOROSITY, DEFAULT_VOXEL_SIZE_UM
from .output import finite, print_result


def _metrics(args) -> None:
    from ..electrode.metrics import format_table, measure
    from ..electrode.volume import read_volume, voxel_size_of

    volume = read_volume(args.volume)
    voxel_size = voxel_size_of(args.volume, args.voxel_size)  # what the file states; a different --voxel-size is refused
    result = {"volume": args.volume, **measure(volume, voxel_size, args.nanoporosity)}
    print_result(result, args.json, f"volume                 {args.volume}\n" + format_table(result))


def _common(p) -> None:
    p.add_argument("--voxel-size", type=finite(), default=None,
                   help=f"voxel edge in um (default: what the file states, else {DEFAULT_VOXEL_SIZE_UM:g})")
    p.add_argument("--nanoporosity", type=finite("fraction"), default=DEFAULT_NANOPOROSITY,
                   help="nanopore fraction of the CBD, for porosity_all (default 0.5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("metrics", help="phase fractions, porosity, thickness and contact areas of a volume")
    p.add_argument("volume", help="VOLUME: .npy, .tif/.tiff stack or file.h5:/dataset")
    _common(p)
    p.set_defaults(run=_metrics)
