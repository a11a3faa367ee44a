"""``calbatch export-view`` and ``calbatch render``: an electrode's frames for ParaView and OVITO,
and 3-D pictures of them (one file, or several side by side at the same frame)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .output import finite, print_result

_SOURCE_HELP = "a series file (DEM or rollout), particle file, pack or volume (.npy, .tif, file.h5:/dataset)"


def _export(args) -> None:
    from ..view import export, open_source

    source = open_source(args.source, args.voxel_size)
    done = [0]

    def progress():
        done[0] += 1
        if sys.stderr.isatty():
            sys.stderr.write(f"\rexport-view: frame {done[0]}")

    t0 = time.perf_counter()
    r = export(source, Path(args.out), args.frame, voxels=not args.particles_only, particles=not args.voxels_only,
               progress=progress)
    r.update(source=args.source, seconds=time.perf_counter() - t0)
    if sys.stderr.isatty() and done[0]:
        sys.stderr.write("\n")
    lines = [f"{args.source}: {len(r['frames'])} frame(s) into {r['folder']} in {r['seconds']:.1f} s"]
    if "pvd" in r:
        lines.append(f"voxels: {len(r['vti'])} .vti (phase codes as cell data); ParaView: open {r['pvd']}")
    if "dump" in r:
        lines.append(f"particles: {len(r['dump'])} LAMMPS dump(s) (type = phase code, radius); OVITO: open "
                     f"{Path(r['dump'][0]).parent / (Path(r['dump'][0]).name.split('.')[0] + '.*.dump')}")
    print_result(r, args.json, "\n".join(lines))


def _render(args) -> None:
    from ..view import frame_panel, open_source, render

    if Path(args.out).suffix.lower() != ".png":
        from ..errors import CalbatchError

        raise CalbatchError(f"--out {args.out}: expected a file name ending in .png")
    sources = [open_source(s, args.voxel_size) for s in args.sources]
    panels = [frame_panel(s, args.frame, particles=args.particles and s.has_particles) for s in sources]
    t0 = time.perf_counter()
    out = render(panels, Path(args.out), pore=not args.solids)
    r = {"out": out, "sources": args.sources, "frame": args.frame, "seconds": time.perf_counter() - t0}
    print_result(r, args.json, f"render: {out} ({len(panels)} panel(s), {r['seconds']:.1f} s)")


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("export-view", help="frames as VTK image data (ParaView) and LAMMPS dumps (OVITO)")
    p.add_argument("source", help=_SOURCE_HELP)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the files (made if missing)")
    p.add_argument("--frame", type=int, nargs="+", default=None, metavar="N",
                   help="frame(s) to export, from 0 (-1: the last); default all")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--voxels-only", action="store_true", help="only the voxel frames (.vti + .pvd)")
    only.add_argument("--particles-only", action="store_true", help="only the particle frames (.dump)")
    p.add_argument("--voxel-size", type=finite(), default=None, help="voxel edge in um of a bare volume (default 0.4)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=_export)

    q = subparsers.add_parser("render", help="a 3-D picture of a frame; several files side by side (DEM against model)")
    q.add_argument("sources", nargs="+", metavar="SOURCE", help=_SOURCE_HELP + "; several: side by side")
    q.add_argument("--out", required=True, metavar="FILE.png", help="the picture")
    q.add_argument("--frame", type=int, default=-1, help="the frame, from 0 (default -1: the last)")
    q.add_argument("--particles", action="store_true", help="draw particle frames where a file has them")
    q.add_argument("--solids", action="store_true", help="AM and CBD only (the pore voxels left out)")
    q.add_argument("--voxel-size", type=finite(), default=None, help="voxel edge in um of a bare volume (default 0.4)")
    q.add_argument("--json", action="store_true", help="print JSON instead of text")
    q.set_defaults(run=_render)
