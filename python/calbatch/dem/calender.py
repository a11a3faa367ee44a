"""Calendering one electrode: the press moves down to the CD, retracts and the electrode relaxes;
every frame is voxelized and the series written (:func:`calender`). :func:`revoxelize` turns the
particle frames of a series back into voxels on any grid without DEM; :func:`summarize` gives a
series' porosity, thickness, spring-back and cost."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ..electrode.schedule import press_schedule
from ..electrode.series import FORMULATION_ATTRS, read_pack, read_series, write_series
from ..electrode.volume import AM, CBD, DEFAULT_VOXEL_SIZE_UM
from ..electrode.voxelize import grid_shape, voxelize_spheres
from ..errors import CalbatchError
from .runner import liggghts_number, liggghts_script, liggghts_version, read_dump, run_liggghts, timestep, write_data_file
from .settings import AM_DENSITY, CONTACT_MODEL, DEFAULT_SPEED


def _press_stl(path: Path, box_xy) -> None:
    """A flat square press at z = 0 covering the periodic box (two facets)."""
    lx, ly = box_xy
    corners = [((0, 0, 0), (lx, 0, 0), (lx, ly, 0)), ((0, 0, 0), (lx, ly, 0), (0, ly, 0))]
    facets = "".join(
        " facet normal 0 0 1\n  outer loop\n" + "".join(f"   vertex {liggghts_number(x)} {liggghts_number(y)} {liggghts_number(z)}\n" for x, y, z in tri)
        + "  endloop\n endfacet\n" for tri in corners)
    path.write_text(f"solid press\n{facets}endsolid press\n")


def calender(pack_file: Path, cd: float, out: Path, speed: float = DEFAULT_SPEED,
             frame_interval_us: float | None = None, dt: float | None = None,
             voxel_size: float = DEFAULT_VOXEL_SIZE_UM, nz: int = 125, nprocs: int = 1,
             particles_out: Path | None = None, progress: bool | None = None) -> dict:
    """Press the electrode of ``pack_file`` to ``cd`` percent of its thickness, release it and let
    it relax; voxelize every frame and write the series file ``out`` (and ``particles_out``).
    ``progress`` None shows the frame bar only on a terminal, so errors stay one line in logs."""
    from tqdm import tqdm

    if not 0 < cd < 90:
        raise CalbatchError(f"--cd: must be between 0 and 90 percent, got {cd:g}")
    if not speed > 0:
        raise CalbatchError(f"--speed: must be positive, got {speed:g}")
    if frame_interval_us is not None and not frame_interval_us > 0:
        raise CalbatchError(f"--frame-interval: must be positive, got {frame_interval_us:g}")
    out = Path(out)
    packed = read_pack(Path(pack_file))
    attrs = packed["attrs"]
    positions, radii, phases = packed["positions"], packed["radii"], packed["phases"]
    box_xy = tuple(float(b) for b in attrs["box_um"])
    contact = json.loads(attrs["contact_parameters"])
    h0 = float(attrs["top_um"])  # the press starts touching the highest particle
    shape = grid_shape(box_xy, voxel_size, nz, h0, 2 * radii.max())
    dt = timestep(radii, dt)
    plan = press_schedule(cd, h0, speed, frame_interval_us, dt)  # the frames a rollout will follow too
    n_frames, frame_steps = plan["n_frames"], plan["frame_steps"]
    press_steps, release_steps = plan["press_steps"], plan["release_steps"]
    total = (n_frames - 1) * frame_steps

    run_dir = out.with_suffix(".liggghts")
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "frames").mkdir(parents=True)
    densities = {AM: AM_DENSITY, CBD: float(attrs["cbd_density_g_cm3"])}
    write_data_file(run_dir / "particles.data", positions, radii, phases, box_xy, h0 + 3 * radii.max(), densities)
    _press_stl(run_dir / "press.stl", box_xy)
    script = liggghts_script("calender", dt, contact, skin=0.25 * 2 * radii.min(), press_start=liggghts_number(h0),
                     frame_steps=frame_steps, speed=liggghts_number(speed), release_speed=liggghts_number(2 * speed),
                     press_steps=press_steps, release_steps=release_steps,
                     release_damping=contact["release_damping"],
                     relax_steps=total - press_steps - release_steps)

    # Wall time per frame: when each frame's dump appears (mtime), less the previous one's.
    bar = tqdm(total=n_frames, desc=f"{out.name} CD {cd:g}", unit="frame", file=sys.stderr,
               disable=not progress, leave=False)

    def poll():
        bar.update(len(list((run_dir / "frames").glob("frame.*.txt"))) - bar.n)

    start = time.time()
    run_liggghts(run_dir, script, nprocs, on_poll=poll)
    bar.close()
    dumps = sorted((run_dir / "frames").glob("frame.*.txt"), key=lambda p: int(p.name.split(".")[1]))
    if len(dumps) != n_frames:
        raise CalbatchError(f"LIGGGHTS wrote {len(dumps)} of {n_frames} frames; see its log {run_dir / 'log.liggghts'}")
    stamps = np.array([start] + [p.stat().st_mtime for p in dumps])
    # float32, as stored: the particle file then rebuilds exactly these voxels
    frames_xyz = np.stack([read_dump(p) for p in dumps]).astype(np.float32)
    radii = radii.astype(np.float32)

    series = {
        "time_us": plan["time_us"], "press_z_um": plan["press_z_um"], "phase": plan["phase"],
        "wall_time_s": np.diff(stamps),
        "positions": frames_xyz, "radii": radii, "phases": phases,
        "attrs": {
            "cd_percent": float(cd),
            "microstructure_id": int(attrs["microstructure_id"]), "seed": int(attrs["seed"]),
            "box_um": list(box_xy), "voxel_size_um": voxel_size, "uncalendered_top_um": h0,
            "press_lowest_um": plan["press_lowest_um"], "press_speed_m_s": speed, "release_speed_m_s": 2 * speed,
            "frame_interval_us": frame_steps * dt, "timestep_us": dt,
            "contact_model": CONTACT_MODEL, "contact_parameters": json.dumps(contact),
            "liggghts_version": liggghts_version(), "dem_wall_time_s": float(stamps[-1] - stamps[0]),
            "pack_porosity": float(attrs["porosity"]), "pack_file": Path(pack_file).name,
            **{k: attrs[k] for k in FORMULATION_ATTRS if k in attrs},
        },
    }
    series["frames"] = np.stack([voxelize_spheres(x, radii, phases, box_xy, shape, voxel_size) for x in frames_xyz])
    write_series(out, series)
    if particles_out is not None:
        write_series(Path(particles_out), series, with_frames=False)
    shutil.rmtree(run_dir / "frames")  # the dumps live on in the series; the log and input stay
    return summarize(series, str(out))


def summarize(series: dict, name: str) -> dict:
    """Porosity and thickness before/after, spring-back and cost of one series."""
    from ..electrode.metrics import measure

    a = series["attrs"]
    vs = float(a["voxel_size_um"])
    first, last = (measure(series["frames"][i], vs, float(a["cbd_nanoporosity"])) for i in (0, -1))
    lowest = float(a["press_lowest_um"])
    top0 = float(a["uncalendered_top_um"])
    final_top = float(np.max(series["positions"][-1][:, 2] + series["radii"]))
    in_press = series["phase"] == "press"
    return {
        "series": name, "cd_percent": float(a["cd_percent"]), "microstructure_id": int(a["microstructure_id"]),
        "frames": int(len(series["time_us"])), "porosity_before": first["porosity"], "porosity_after": last["porosity"],
        "porosity_all_before": first["porosity_all"], "porosity_all_after": last["porosity_all"],
        "cbd_share_of_solid_after": last["cbd_share_of_solid"], "am_surface_on_cbd_after": last["am_surface_on_cbd"],
        "contact_area_after_um2": {k: last["contact_area_um2"][k] for k in ("AM-CBD", "pore-AM", "pore-CBD")},
        "thickness_before_um": first["thickness_um"], "thickness_after_um": last["thickness_um"],
        "press_lowest_um": lowest, "top_after_um": final_top,
        "spring_back_percent": 100 * (final_top - lowest) / top0,
        "press_in_contact_at_end": bool(final_top > series["press_z_um"][-1] - 1e-6),
        "dem_wall_time_s": float(np.sum(series["wall_time_s"])),
        "dem_wall_time_per_press_frame_s": float(np.mean(series["wall_time_s"][in_press][1:])) if in_press.sum() > 1 else float("nan"),
    }


def voxel_frames(series: dict, voxel_size: float | None = None, nz: int = 125) -> tuple[np.ndarray, tuple]:
    """The voxel frames of a series' particle frames on a grid of ``voxel_size`` (default: the
    series' own) with ``nz`` slices; returns (frames, shape_zyx)."""
    voxel_size = float(series["attrs"]["voxel_size_um"]) if voxel_size is None else voxel_size
    box_xy = tuple(float(b) for b in series["attrs"]["box_um"])
    top = float(np.max(series["positions"][:, :, 2] + series["radii"]))
    shape = grid_shape(box_xy, voxel_size, nz, top, 2 * float(series["radii"].max()))
    frames = np.stack([voxelize_spheres(x, series["radii"], series["phases"], box_xy, shape, voxel_size)
                       for x in series["positions"]])
    return frames, shape


def revoxelize(sources: list[Path], out: Path, voxel_size: float = DEFAULT_VOXEL_SIZE_UM, nz: int = 125) -> list[dict]:
    """Voxelize the particle frames of series or particle files again (another grid), no DEM.
    One source goes to the series file ``out`` (.h5); several go into the folder ``out``."""
    from tqdm import tqdm

    out = Path(out)
    many = len(sources) > 1 or out.is_dir()
    if many and out.suffix:
        raise CalbatchError(f"--out {out}: several sources need a folder, not a file name")
    if not many and out.suffix not in (".h5", ".hdf5"):
        raise CalbatchError(f"--out {out}: a series file must end in .h5 (or give an existing folder)")
    series_list = [read_series(Path(src), frames=False) for src in sources]  # all checked before writing
    results = []
    for src, series in tqdm(list(zip(sources, series_list)), desc="revoxelize", unit="series", file=sys.stderr,
                            leave=False):
        series["frames"], shape = voxel_frames(series, voxel_size, nz)
        series["attrs"]["voxel_size_um"] = voxel_size
        target = out / Path(src).name if many else out
        write_series(target, series)
        results.append({"source": str(src), "out": str(target), "shape_zyx": list(shape)})
    return results
