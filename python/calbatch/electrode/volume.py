"""Volume I/O: ``.npy``, ``.tif``/``.tiff`` stacks (one z-slice a page) and ``.h5`` datasets.

In memory a volume is a C-ordered uint8 array ``volume[z, y, x]``; z = 0 is the current collector
and z grows towards the press. A TIFF stack's page k is slice z = k. An HDF5 volume is named
``file.h5:/path/to/dataset``; where ``/path/to`` is a 4-D dataset of frames (a DEM series),
``file.h5:/path/to/7`` names its frame 7.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import _core
from ..errors import CalbatchError

PORE, CBD, AM, VOID = 0, 1, 2, 4
PHASES = {PORE: "pore", CBD: "CBD", AM: "AM", VOID: "void"}
CLASS_CODES = np.array([PORE, CBD, AM, VOID], dtype=np.uint8)  # a frame model's class index -> phase code
CODE_TO_CLASS = np.zeros(int(CLASS_CODES.max()) + 1, dtype=np.int64)  # phase code -> class index
CODE_TO_CLASS[CLASS_CODES] = np.arange(len(CLASS_CODES))
DEFAULT_VOXEL_SIZE_UM = 0.4
# The CBD is a nanoporous carbon + binder domain; half of it is pore by default (Franco group).
DEFAULT_NANOPOROSITY = 0.5
# The CBD's diffusivity relative to the electrolyte's: Bruggeman, eps_CBD^1.5 (Chouchane et al. 2019).
DEFAULT_CBD_DIFFUSIVITY = DEFAULT_NANOPOROSITY**1.5

_TIFF = (".tif", ".tiff")
_H5 = (".h5", ".hdf5")


def split_h5_path(spec: str) -> tuple[str, str | None]:
    """``'a.h5:/frames/0'`` -> ``('a.h5', '/frames/0')``; other names -> ``(name, None)``."""
    for ext in _H5:
        marker = ext + ":"
        if marker in spec:
            head, _, inner = spec.partition(marker)
            return head + ext, "/" + inner.lstrip("/")
    return spec, None


def validate(volume: np.ndarray, source: str) -> np.ndarray:
    """Check a volume is 3-D, integer and holds only codes {0, 1, 2, 4}; return it as C uint8."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise CalbatchError(f"{source}: expected a 3-D volume, got {volume.ndim}-D with shape {volume.shape}")
    if not np.issubdtype(volume.dtype, np.integer):  # a bool mask is not a phase volume
        raise CalbatchError(f"{source}: expected integer phase codes, got dtype {volume.dtype}")
    if volume.size == 0:
        raise CalbatchError(f"{source}: volume is empty (shape {volume.shape})")
    if volume.dtype != np.uint8:
        lo, hi = int(volume.min()), int(volume.max())
        if lo < 0 or hi > 255:
            bad = lo if lo < 0 else hi
            raise CalbatchError(f"{source}: unknown phase code {bad} (allowed 0 pore, 1 CBD, 2 AM, 4 void)")
    volume = np.ascontiguousarray(volume, dtype=np.uint8)
    histogram = _core.census(volume, True)[0]
    unknown = [code for code in np.flatnonzero(histogram) if code not in PHASES]
    if unknown:
        raise CalbatchError(
            f"{source}: unknown phase code {unknown[0]} (allowed 0 pore, 1 CBD, 2 AM, 4 void)"
        )
    return volume


def read_volume(spec: str | os.PathLike) -> np.ndarray:
    """Read and validate a volume from ``.npy``, ``.tif``/``.tiff`` or ``file.h5:/dataset``."""
    spec = str(spec)
    path, inner = split_h5_path(spec)
    suffix = Path(path).suffix.lower()
    if not Path(path).is_file():
        raise CalbatchError(f"{path}: no such file")
    try:
        if suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif suffix in _TIFF:
            data = _read_tiff(path)
        elif suffix in _H5:
            data = _read_h5(path, inner)
        else:
            raise CalbatchError(f"{spec}: unknown volume format {suffix!r} (use .npy, .tif, .tiff or .h5:/dataset)")
    except CalbatchError:
        raise
    except Exception as exc:  # corrupt or truncated files surface here from numpy/tifffile/h5py
        raise CalbatchError(f"{spec}: cannot read volume ({type(exc).__name__}: {_first_line(exc)})") from None
    return validate(data, spec)


def volume_attrs(spec: str | os.PathLike) -> dict:
    """What a volume file states about itself: ``voxel_size_um`` and, for an uncalendered pack,
    ``top_um`` (the HDF5 dataset's attributes, else its file's; .npy and .tif state nothing)."""
    path, inner = split_h5_path(str(spec))
    if Path(path).suffix.lower() not in _H5:
        return {}
    import h5py

    found: dict = {}
    try:
        with h5py.File(path, "r") as f:
            sources = [f.attrs]
            if inner is not None and inner in f:
                sources.insert(0, f[inner].attrs)
            for key in ("voxel_size_um", "top_um"):
                for attrs in sources:
                    if key in attrs and key not in found:
                        found[key] = float(attrs[key])
    except OSError:
        raise CalbatchError(f"{path}: cannot read HDF5") from None
    return found


def voxel_size_of(spec: str | os.PathLike, given: float | None, model: float | None = None,
                  option: str = "--voxel-size") -> float:
    """The voxel size of a volume file: the one it states, which ``given`` (``option``) and the
    model's must match; else ``given``, else the model's, else the default. A mismatch is one line."""
    stated = volume_attrs(spec).get("voxel_size_um")
    for value, name in ((given, option), (model, "the model")):
        if stated is not None and value is not None and abs(value - stated) > 1e-6 * stated:
            raise CalbatchError(f"{spec}: its voxels are {stated:g} um; {name} says {value:g} um")
    for value in (stated, given, model):
        if value is not None:
            return float(value)
    return DEFAULT_VOXEL_SIZE_UM


def _read_tiff(path: str) -> np.ndarray:
    import logging

    import tifffile

    # tifffile logs (rather than raises) on a truncated page chain and returns fewer slices:
    # treat any such complaint as a corrupt file instead of silently losing slices.
    complaints: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            complaints.append(record.getMessage())

    logger = logging.getLogger("tifffile")
    handler, propagate = _Collect(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        data = tifffile.imread(path)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    if complaints:
        raise CalbatchError(f"{path}: cannot read volume (truncated or corrupt TIFF: {complaints[0]})")
    return data[np.newaxis] if data.ndim == 2 else data  # a single page is a one-slice stack


def _read_h5(path: str, inner: str | None) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        if inner is None:
            datasets = [k for k, v in f.items() if isinstance(v, h5py.Dataset)]
            if len(datasets) != 1:
                raise CalbatchError(f"{path}: name the dataset as {path}:/path (found {sorted(f.keys())})")
            inner = "/" + datasets[0]
        if inner in f and isinstance(f[inner], h5py.Dataset):
            return f[inner][()]
        parent, _, last = inner.rpartition("/")
        if last.isdigit() and parent in f and isinstance(f[parent], h5py.Dataset) and f[parent].ndim == 4:
            frames = f[parent]
            if int(last) >= frames.shape[0]:
                raise CalbatchError(f"{path}:{inner}: frame {last} out of range ({frames.shape[0]} frames)")
            return frames[int(last)]
        raise CalbatchError(f"{path}: no dataset {inner}")


def write_volume(spec: str | os.PathLike, volume: np.ndarray) -> None:
    """Validate and write a volume atomically (a temporary file renamed into place)."""
    spec = str(spec)
    volume = validate(volume, spec)
    path, inner = split_h5_path(spec)
    suffix = Path(path).suffix.lower()
    if suffix not in (".npy", *_TIFF, *_H5):
        raise CalbatchError(f"{spec}: unknown volume format {suffix!r} (use .npy, .tif, .tiff or .h5:/dataset)")
    if suffix in _H5:
        import h5py

        # HDF5 files may hold other datasets: write in place, replacing only the named one.
        with h5py.File(path, "a") as f:
            name = inner or "/volume"
            if name in f:
                del f[name]
            f.create_dataset(name, data=volume, compression="gzip", compression_opts=4, chunks=True)
        return
    tmp = f"{path}.tmp{os.getpid()}{suffix}"
    try:
        if suffix == ".npy":
            np.save(tmp, volume)
        else:
            import tifffile

            tifffile.imwrite(tmp, volume, photometric="minisblack")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else "unreadable"
