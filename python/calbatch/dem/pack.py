"""The uncalendered electrode: AM and CBD spheres placed loose, settled by LIGGGHTS onto the
collector, voxelized and written as a pack file. Entry point: :func:`pack`."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from ..electrode.metrics import cbd_distribution, measure
from ..electrode.particles import minimum_image
from ..electrode.series import write_pack
from ..electrode.volume import AM, CBD, DEFAULT_NANOPOROSITY, DEFAULT_VOXEL_SIZE_UM
from ..electrode.voxelize import grid_shape, voxelize_spheres
from ..errors import CalbatchError
from .runner import (
    liggghts_number,
    liggghts_script,
    liggghts_version,
    read_data_file,
    run_liggghts,
    timestep,
    write_data_file,
)
from .settings import (
    AM_COUNTS,
    AM_DENSITY,
    AM_DIAMETERS_UM,
    CBD_DIAMETER_UM,
    CONTACT,
    CONTACT_MODEL,
    DEFAULT_AM_PARTICLES,
    DEFAULT_MASS_RATIO,
    PACK,
    cbd_density,
    cbd_volume_fraction,
)


def initial_placement(seed: int, n_am: int, box_xy: float, size_scale: float = 1.0,
                      cbd_fraction: float | None = None, cbd_diameter: float = CBD_DIAMETER_UM):
    """Seeded loose start for settling: AM spheres placed at random without overlap in a tall box,
    CBD spheres (``cbd_fraction`` of the solid volume) stuck onto AM surfaces (so the binder starts
    on the AM, as after drying)."""
    cbd_fraction = cbd_volume_fraction() if cbd_fraction is None else cbd_fraction
    rng = np.random.default_rng(seed)
    # Largest-remainder apportionment of n_am over the measured size classes.
    share = AM_COUNTS / AM_COUNTS.sum() * n_am
    counts = np.floor(share).astype(int)
    counts[np.argsort(share - counts)[::-1][: n_am - counts.sum()]] += 1
    am_diameters = np.repeat(AM_DIAMETERS_UM, counts) * size_scale
    cbd_diameter = cbd_diameter * size_scale
    am_volume = np.sum(np.pi / 6 * am_diameters**3)
    n_cbd = int(round(am_volume * cbd_fraction / (1 - cbd_fraction) / (np.pi / 6 * cbd_diameter**3)))
    # Box tall enough that the loose start is a dilute gas (solid fraction ~0.15).
    height = PACK["box_height_factor"] * (am_volume / (1 - cbd_fraction)) / (0.5 * box_xy**2) + am_diameters.max()
    centers, radii = np.zeros((0, 3)), np.zeros(0)
    box = np.array([box_xy, box_xy])

    def free(p, r, ignore=-1):
        d = centers - p
        minimum_image(d, box)
        clear = np.einsum("ij,ij->i", d, d) > (radii + r) ** 2
        if ignore >= 0:
            clear[ignore] = True
        return bool(np.all(clear))

    for r in np.sort(am_diameters)[::-1] / 2:  # big first: they are the hardest to fit
        for _ in range(100000):
            p = np.array([*rng.uniform(0, box_xy, 2), rng.uniform(r, height - r)])
            if free(p, r):
                break
        else:
            raise CalbatchError(f"--box {box_xy:g} um: cannot place {n_am} particles without overlap")
        centers, radii = np.vstack([centers, p]), np.append(radii, r)
    area = radii**2 / np.sum(radii**2)
    r = cbd_diameter / 2
    for _ in range(n_cbd):
        for _ in range(1000):
            host = rng.choice(n_am, p=area)
            u = rng.normal(size=3)
            p = centers[host] + u / np.linalg.norm(u) * (radii[host] + 0.98 * r)  # slight overlap: stuck
            p[:2] %= box_xy
            if r < p[2] < height - r and free(p, r, ignore=host):  # inside the box LIGGGHTS reads
                break
        centers, radii = np.vstack([centers, p]), np.append(radii, r)
    phases = np.array([AM] * n_am + [CBD] * n_cbd, dtype=np.uint8)
    return centers, radii, phases, height


def pack(out: Path, seed: int = 1, microstructure_id: int = 1, n_am: int = DEFAULT_AM_PARTICLES,
         box_xy: float = 30.4, size_scale: float = 1.0, voxel_size: float = DEFAULT_VOXEL_SIZE_UM,
         nz: int = 125, dt: float | None = None, nprocs: int = 1, contact: dict | None = None,
         mass_ratio=DEFAULT_MASS_RATIO, nanoporosity: float = DEFAULT_NANOPOROSITY,
         cbd_diameter: float = CBD_DIAMETER_UM) -> dict:
    """Settle an uncalendered electrode of AM:CBD ``mass_ratio`` (by weight; the CBD a domain of
    ``nanoporosity``) in LIGGGHTS and write the pack file ``out``."""

    contact = contact or CONTACT
    if n_am < 1:
        raise CalbatchError(f"--particles: zero particles; need at least 1 AM particle, got {n_am}")
    if not size_scale > 0:
        raise CalbatchError(f"--size-scale: must be positive, got {size_scale}")
    if not box_xy >= AM_DIAMETERS_UM.max() * size_scale:
        raise CalbatchError(f"--box {box_xy:g} um: smaller than the largest particle "
                            f"({AM_DIAMETERS_UM.max() * size_scale:g} um)")
    if not cbd_diameter > 0:
        raise CalbatchError(f"--cbd-diameter: must be positive, got {cbd_diameter}")
    out = Path(out)
    cbd_fraction = cbd_volume_fraction(mass_ratio, nanoporosity)
    densities = {AM: AM_DENSITY, CBD: cbd_density(nanoporosity)}
    centers, radii, phases, height = initial_placement(seed, n_am, box_xy, size_scale, cbd_fraction, cbd_diameter)
    dt = timestep(radii, dt)
    run_dir = out.with_suffix(".liggghts")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_data_file(run_dir / "particles.data", centers, radii, phases, (box_xy, box_xy), height, densities)
    fall, quench, chunk = (int(round(PACK[k] / dt)) for k in ("fall_us", "quench_us", "settle_chunk_us"))
    chunks = int(np.ceil((PACK["max_fall_us"] - PACK["fall_us"]) / PACK["settle_chunk_us"]))
    settling = {**contact, "friction": PACK["friction"], "cohesion_energy_density_kj_m3":
                np.asarray(contact["cohesion_energy_density_kj_m3"]) * PACK["cohesion_factor"]}
    script = liggghts_script("pack", dt, settling, skin=0.25 * 2 * radii.min(), gravity=PACK["gravity_um_us2"],
                     thermo_every=max(1, (fall + quench) // 20), fall_steps=fall, quench_steps=quench,
                     quench_damping=PACK["quench_damping"], settle_speed=liggghts_number(PACK["settle_speed_um_us"]),
                     chunk_steps=chunk, settle_chunks=max(chunks, 1))
    start = time.perf_counter()
    log = run_liggghts(run_dir, script, nprocs)
    wall = time.perf_counter() - start
    settled = re.search(r"calbatch settled: (\d) sank: (\S+)", log.read_text(errors="replace"))
    if not settled or (settled[1] != "0" and not float(settled[2]) < PACK["settle_sink_um"]):
        raise CalbatchError(f"the bed did not settle within {PACK['max_fall_us']:g} us (a particle still moves faster "
                            f"than {PACK['settle_speed_um_us']:g} um/us and the bed's mean height still fell "
                            f"{settled[2] if settled else '?'} um in its last {PACK['settle_chunk_us']:g} us); see {log}")
    positions, radii, phases = read_data_file(run_dir / "packed.data")
    top = float(np.max(positions[:, 2] + radii))
    shape = grid_shape((box_xy, box_xy), voxel_size, nz, top, 2 * radii.max())
    volume = voxelize_spheres(positions, radii, phases, (box_xy, box_xy), shape, voxel_size)
    metrics = measure(volume, voxel_size, nanoporosity)
    attrs = {
        "microstructure_id": microstructure_id, "seed": seed,
        "box_um": [box_xy, box_xy], "size_scale": size_scale, "n_am": int(np.sum(phases == AM)),
        "n_cbd": int(np.sum(phases == CBD)), "top_um": top, "thickness_um": metrics["thickness_um"],
        "porosity": metrics["porosity"], "porosity_all": metrics["porosity_all"],
        "mass_ratio_am_cbd": [float(m) for m in mass_ratio], "cbd_nanoporosity": nanoporosity,
        "cbd_density_g_cm3": densities[CBD], "cbd_volume_fraction": cbd_fraction,
        "cbd_diameter_um": cbd_diameter * size_scale,
        "cbd_share_of_solid_voxels": metrics["cbd_share_of_solid"],
        "am_surface_on_cbd": metrics["am_surface_on_cbd"],
        "voxel_size_um": voxel_size, "timestep_us": dt,
        "contact_model": CONTACT_MODEL, "contact_parameters": json.dumps(contact),
        "pack_parameters": json.dumps(PACK), "liggghts_version": liggghts_version(), "dem_wall_time_s": wall,
    }

    write_pack(out, positions, radii, phases, volume, attrs)
    keys = ("seed", "n_am", "n_cbd", "top_um", "thickness_um", "porosity", "porosity_all", "cbd_volume_fraction",
            "cbd_share_of_solid_voxels", "am_surface_on_cbd")
    return {"out": str(out), **{k: attrs[k] for k in keys}, "cbd_by_height": cbd_distribution(volume),
            "dem_wall_time_s": wall}
