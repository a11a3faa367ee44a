"""Export for the tools researchers open electrodes in: voxel frames as VTK image data (``.vti``,
phase codes as cell data, the file's voxel spacing, written by VTK itself) with a ParaView
collection (``.pvd``) that opens all frames as one time series; particle frames as LAMMPS dumps
(one file a frame, as LIGGGHTS writes them; OVITO opens ``name.*.dump`` as one trajectory).

Every file is written under a hidden temporary name and renamed into place, the ``.pvd`` index last,
so a folder never holds half a file."""

from __future__ import annotations

import os
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from ..errors import CalbatchError
from .source import Source

# The dump's columns; ``type`` is the phase code (1 CBD, 2 AM), so OVITO colours by phase.
DUMP_COLUMNS = "id type radius x y z"


def writable_folder(out: Path) -> Path:
    """``out`` created if need be and checked writable now, before any work, in one line if not."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".calbatch-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CalbatchError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    return out


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def image_data(volume: np.ndarray, voxel_size: float):
    """A ``vtkImageData`` of ``volume[z, y, x]``: one cell a voxel, the codes as cell data ``phase``
    (VTK's x-fastest order is the C order of [z, y, x])."""
    from vtkmodules.util.numpy_support import numpy_to_vtk
    from vtkmodules.vtkCommonDataModel import vtkImageData

    nz, ny, nx = volume.shape
    image = vtkImageData()
    image.SetDimensions(nx + 1, ny + 1, nz + 1)
    image.SetSpacing(voxel_size, voxel_size, voxel_size)
    codes = numpy_to_vtk(np.ascontiguousarray(volume, dtype=np.uint8).ravel(), deep=True)
    codes.SetName("phase")
    image.GetCellData().SetScalars(codes)
    return image


def write_vti(path: Path, volume: np.ndarray, voxel_size: float) -> None:
    """One voxel frame as a compressed ``.vti`` (VTK's XML image data writer)."""
    from vtkmodules.vtkIOXML import vtkXMLImageDataWriter

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = vtkXMLImageDataWriter()
    writer.SetFileName(str(tmp))
    writer.SetInputData(image_data(volume, voxel_size))
    writer.SetCompressorTypeToZLib()
    if writer.Write() != 1 or not tmp.is_file():
        raise CalbatchError(f"{path}: VTK could not write the file")
    _replace(tmp, path)


def read_vti(path: Path) -> tuple[np.ndarray, float]:
    """A ``.vti`` written by :func:`write_vti` read back by VTK's reader: (volume[z, y, x], spacing)."""
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOXML import vtkXMLImageDataReader

    reader = vtkXMLImageDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    nx, ny, nz = (d - 1 for d in image.GetDimensions())
    codes = vtk_to_numpy(image.GetCellData().GetArray("phase"))
    return codes.reshape(nz, ny, nx), float(image.GetSpacing()[0])


def write_pvd(path: Path, files: list[str], times: list[float]) -> None:
    """ParaView's collection file: the ``.vti`` frames as one time series (time in us)."""
    rows = "".join(f'    <DataSet timestep="{t:.6g}" part="0" file={quoteattr(f)}/>\n' for f, t in zip(files, times))
    text = ('<?xml version="1.0"?>\n<VTKFile type="Collection" version="0.1">\n  <Collection>\n'
            f"{rows}  </Collection>\n</VTKFile>\n")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    _replace(tmp, path)


def write_dump(path: Path, positions: np.ndarray, radii: np.ndarray, phases: np.ndarray, box_xy, step: int) -> None:
    """One particle frame as a LAMMPS dump (periodic x and y, the box's z from the particles)."""
    z_lo = float(np.min(positions[:, 2] - radii))
    z_hi = float(np.max(positions[:, 2] + radii))
    head = (f"ITEM: TIMESTEP\n{step}\nITEM: NUMBER OF ATOMS\n{len(radii)}\nITEM: BOX BOUNDS pp pp ff\n"
            f"0 {box_xy[0]:.9g}\n0 {box_xy[1]:.9g}\n{min(z_lo, 0.0):.9g} {z_hi:.9g}\nITEM: ATOMS {DUMP_COLUMNS}\n")
    ids = np.arange(1, len(radii) + 1)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(head)
        # %.9g holds a float32 exactly, so the positions read back bit for bit
        np.savetxt(f, np.column_stack([ids, phases, radii, positions]), fmt=["%d", "%d", "%.9g", "%.9g", "%.9g", "%.9g"])
    _replace(tmp, path)


def read_dump(path: Path) -> dict:
    """A dump written by :func:`write_dump`: positions (n, 3), radii, phases, in id order."""
    rows = np.loadtxt(path, skiprows=9, ndmin=2)
    rows = rows[np.argsort(rows[:, 0])]
    return {"positions": rows[:, 3:6], "radii": rows[:, 2], "phases": rows[:, 1].astype(np.uint8)}


def export(source: Source, out: Path, frames: list[int] | None = None, voxels: bool = True,
           particles: bool = True, progress=None) -> dict:
    """Write ``frames`` (indices; default all) of ``source`` into the folder ``out``: voxel frames
    as ``STEM_NNNN.vti`` + ``STEM.pvd``, particle frames as ``STEM.NNNN.dump``. Returns the paths."""
    picks = list(range(source.frames)) if frames is None else [source.frame_index(f) for f in frames]
    voxels = voxels and (source.voxels is not None or source.has_particles)
    particles = particles and source.has_particles
    if not (voxels or particles):
        raise CalbatchError(f"{source.name}: nothing to export (no {'particle' if not voxels else 'voxel'} frames)")
    if particles and source.box_xy is None:
        raise CalbatchError(f"{source.name}: particle frames without a box (attribute box_um)")
    out = writable_folder(out)
    stem = Path(source.name.split(":")[0]).stem
    times = source.times_us if source.times_us is not None else np.arange(source.frames, dtype=float)
    written: dict = {"folder": str(out), "frames": picks}
    if voxels:
        import vtkmodules  # noqa: F401 (missing: one line naming the install, before any file)

        names = []
        for i in picks:
            names.append(f"{stem}_{i:04d}.vti")
            write_vti(out / names[-1], source.voxel_frame(i), source.voxel_size)
            if progress:
                progress()
        write_pvd(out / f"{stem}.pvd", names, [float(times[i]) for i in picks])
        written.update(vti=[str(out / n) for n in names], pvd=str(out / f"{stem}.pvd"))
    if particles:
        written["dump"] = []
        for i in picks:
            written["dump"].append(str(out / f"{stem}.{i:04d}.dump"))
            write_dump(Path(written["dump"][-1]), source.positions[i], source.radii, source.phases, source.box_xy, i)
    return written
