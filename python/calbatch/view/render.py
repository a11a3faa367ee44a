"""3-D pictures of electrode frames, headless: VTK (through pyvista) renders off screen on a
software OpenGL (Mesa's llvmpipe through EGL, or OSMesa), so no display or GPU is needed.

A voxel frame is drawn as the electrode block with every voxel face coloured by its phase (void
left out); a particle frame as its spheres. Several panels side by side share one camera, so DEM
and model are seen from the same place at the same scale."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..electrode.volume import AM, CBD, PORE
from ..errors import CalbatchError

# Phase colours: the grey AM and red CBD of calbatch's slice plots; pore light blue.
COLORS = {PORE: "#9ecae1", CBD: "#d62728", AM: "#8c8c8c"}
NAMES = {PORE: "pore", CBD: "CBD", AM: "AM"}
PANEL_PX = (640, 720)


@dataclass
class Panel:
    """One picture: a voxel frame (``volume``, ``voxel_size``) or a particle frame (``positions``,
    ``radii``, ``phases``), with its title."""
    title: str
    volume: np.ndarray | None = None
    voxel_size: float = 0.4
    positions: np.ndarray | None = None
    radii: np.ndarray | None = None
    phases: np.ndarray | None = None


def unavailable() -> str | None:
    """Why renders cannot be made here (VTK or pyvista missing), or None: reports skip their render then."""
    import importlib.util

    missing = [m for m in ("vtkmodules", "pyvista") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not installed (pip install 'calbatch[view]')" if missing else None


def side_by_side(out: Path, frames: list[tuple[str, np.ndarray]], voxel_size: float, pore: bool = True) -> str:
    """Voxel frames (title, volume) side by side in one PNG: DEM against model in the reports."""
    return render([Panel(title, volume=v, voxel_size=voxel_size) for title, v in frames], out, pore=pore)


def _pyvista():
    if not os.environ.get("DISPLAY"):  # headless: straight to EGL (VTK falls back to OSMesa itself)
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import pyvista

    pyvista.OFF_SCREEN = True
    return pyvista


def _voxel_mesh(pv, panel: Panel, pore: bool):
    from .export import image_data

    grid = pv.wrap(image_data(panel.volume, panel.voxel_size))
    shown = grid.threshold((PORE if pore else CBD, AM), scalars="phase")  # the void (code 4) left out
    return shown.extract_surface(algorithm=None)


def _particle_mesh(pv, panel: Panel):
    cloud = pv.PolyData(np.asarray(panel.positions, dtype=float))
    cloud["radius"] = np.asarray(panel.radii, dtype=float)
    cloud["phase"] = np.asarray(panel.phases, dtype=np.uint8)
    return cloud.glyph(scale="radius", orient=False, geom=pv.Sphere(radius=1.0, theta_resolution=18, phi_resolution=12))


def render(panels: list[Panel], out: Path, pore: bool = True, size: tuple[int, int] = PANEL_PX) -> str:
    """The panels side by side in one PNG at ``out`` (written atomically); ``pore``: draw the pore
    voxels (else the solid phases only). Returns the path."""
    from PIL import Image

    from .export import writable_folder

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise CalbatchError(f"--out {out}: expected a file name ending in .png")
    writable_folder(out.parent)  # refused now, not after the rendering
    pv = _pyvista()
    plotter = pv.Plotter(shape=(1, len(panels)), off_screen=True, window_size=(size[0] * len(panels), size[1]),
                         border=False)
    codes = (PORE, CBD, AM)
    cmap = [COLORS[c] for c in codes]
    for j, panel in enumerate(panels):
        plotter.subplot(0, j)
        mesh = _voxel_mesh(pv, panel, pore) if panel.volume is not None else _particle_mesh(pv, panel)
        plotter.add_mesh(mesh, scalars="phase", cmap=cmap, clim=(-0.5, 2.5), n_colors=3, show_scalar_bar=False,
                         ambient=0.35, diffuse=0.75, smooth_shading=panel.volume is None)
        plotter.add_text(panel.title, font_size=10, color="black", position="upper_edge")
        plotter.set_background("white")
        plotter.view_isometric()
    shown = [c for c in codes if pore or c != PORE]
    plotter.subplot(0, len(panels) - 1)
    plotter.add_legend([[NAMES[c], COLORS[c]] for c in shown], bcolor="white", face="rectangle", size=(0.16, 0.12),
                       loc="lower right")
    plotter.link_views()
    plotter.view_isometric()
    image = plotter.screenshot(return_img=True)
    plotter.close()
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, out)
    except OSError as exc:
        raise CalbatchError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return str(out)


def frame_panel(source, frame: int, particles: bool = False, title: str | None = None) -> Panel:
    """The :class:`Panel` of one frame of a :class:`calbatch.view.source.Source` (its particles or its voxels)."""
    i = source.frame_index(frame)
    label = title or source.label
    t = "" if source.times_us is None else f", t = {float(source.times_us[i]):.0f} us"
    if particles:
        if not source.has_particles:
            raise CalbatchError(f"{source.name}: no particle frames (a rollout or a volume holds voxels only)")
        return Panel(f"{label}, frame {i}\n{len(source.radii)} particles{t}", positions=source.positions[i],
                     radii=source.radii, phases=source.phases)
    volume = source.voxel_frame(i)
    solid = np.flatnonzero(((volume == AM) | (volume == CBD)).any(axis=(1, 2)))
    top = f", top {(solid[-1] + 1) * source.voxel_size:.1f} um" if solid.size else ""
    return Panel(f"{label}, frame {i}\nvoxels{t}{top}", volume=volume, voxel_size=source.voxel_size)
