"""Looking at electrodes: export of voxel and particle frames for ParaView and OVITO (VTK image
data with a time-series collection; LAMMPS dumps) and headless 3-D renders, one frame or several
side by side (DEM against model). ``source`` reads any series, pack or volume file into one shape;
``export`` writes the files; ``render`` draws the pictures. VTK and pyvista are the ``view`` extra."""

from .export import export, read_dump, read_vti, write_dump, write_pvd, write_vti
from .render import Panel, frame_panel, render, side_by_side, unavailable
from .source import Source, open_source

__all__ = ["Panel", "Source", "export", "frame_panel", "open_source", "read_dump", "read_vti", "render", "side_by_side",
           "unavailable", "write_dump", "write_pvd", "write_vti"]
