"""The default DEM dataset: electrodes x CDs over worker processes, resumable, its plan and
settings kept in ``dataset.json``. Entry points: :func:`dataset_plan`, :func:`dataset`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from ..electrode.series import atomic_text, read_series
from ..electrode.volume import DEFAULT_VOXEL_SIZE_UM
from ..errors import CalbatchError
from .calender import calender, revoxelize, summarize, voxel_frames
from .pack import pack
from .runner import liggghts_command
from .settings import DEFAULT_CDS, RANDOM_CD_RANGE

MANIFEST = "dataset.json"


def cd_label(cd: float) -> str:
    """A CD as it appears in file names: 35 -> '35', 27.3 -> '27.3'."""
    return f"{float(cd):g}"


def dataset_plan(n: int = 4, cds=DEFAULT_CDS, n_random: int = 4, random_cds: int = 7, seed: int = 1,
                 cd_range=RANDOM_CD_RANGE, first: int = 1) -> list[dict]:
    """Which electrode gets which seed and CDs: electrodes first..first+n-1 at ``cds`` (the paper's
    grid, so its split applies), then ``n_random`` more at ``random_cds`` CDs each, drawn uniformly in
    ``cd_range`` (0.1 % steps) from a generator seeded by (seed, electrode): the same plan on every
    run. Electrode ``first`` gets ``seed``; ``first`` numbers a further dataset after the default's 8."""
    if n < 0 or n_random < 0 or n + n_random < 1 or random_cds < 1:
        raise CalbatchError(f"--n {n}, --n-random {n_random}, --random-cds {random_cds}: need at least one electrode "
                            "and one CD each")
    if first < 1:
        raise CalbatchError(f"--first {first}: electrode numbers start at 1")
    lo, hi = (float(c) for c in cd_range)
    for cd in (*cds, lo, hi):
        if not 0 < cd < 90:
            raise CalbatchError(f"--cd: must be between 0 and 90 percent, got {cd:g}")
    plan = [{"microstructure_id": ms, "seed": seed + ms - first, "cds": [float(c) for c in cds]}
            for ms in range(first, first + n)]
    for ms in range(first + n, first + n + n_random):
        rng = np.random.default_rng([seed, ms])
        drawn = sorted({round(float(c), 1) for c in rng.uniform(lo, hi, 4 * random_cds)})
        picks = rng.choice(len(drawn), size=min(random_cds, len(drawn)), replace=False)
        plan.append({"microstructure_id": ms, "seed": seed + ms - first, "cds": sorted(drawn[i] for i in picks)})
    return plan


def _dataset_pack(out_dir: str, ms: int, seed: int, settings: dict) -> str:
    path = Path(out_dir) / "packs" / f"ms{ms}.h5"
    if not path.exists():
        pack(path, seed=seed, microstructure_id=ms, **settings)
    return str(path)


def _dataset_series(out_dir: str, pack_path: str, ms: int, cd: float, settings: dict) -> dict:
    out = Path(out_dir)
    name = f"ms{ms}_cd{cd_label(cd)}.h5"
    series_path, particles_path = out / name, out / "particles" / name
    if series_path.exists() and particles_path.exists():
        return summarize(read_series(series_path), str(series_path))
    if particles_path.exists():  # only the voxels are missing: rebuild them without DEM
        revoxelize([particles_path], series_path, settings.get("voxel_size", DEFAULT_VOXEL_SIZE_UM),
                   settings.get("nz", 125))
        return summarize(read_series(series_path), str(series_path))
    return calender(Path(pack_path), cd, series_path, particles_out=particles_path, progress=False, **settings)


def _check_manifest(out_dir: Path, manifest: dict) -> None:
    """Write the dataset's plan and settings, or check that a resumed run asks for the same."""
    path = out_dir / MANIFEST
    manifest = json.loads(json.dumps(manifest))  # tuples as lists, as they come back from the file
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise CalbatchError(f"{path}: not a calbatch dataset manifest (invalid JSON)") from None
        if old != manifest:
            diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            raise CalbatchError(f"{path}: this folder holds a dataset made with other settings ({', '.join(diff)}); "
                                "use another --out or the same options")
        return
    atomic_text(path, json.dumps(manifest, indent=1) + "\n")


def dataset(out_dir: Path, plan: list[dict] | None = None, workers: int = 2,
            pack_settings: dict | None = None, calender_settings: dict | None = None) -> dict:
    """Pack every electrode of ``plan`` (:func:`dataset_plan`, by default the paper's 4 x 7 grid plus
    4 electrodes at random CDs) and calender it at its CDs, over ``workers`` processes. Resumable:
    finished files are skipped, every file is written through a temporary name, and the plan and
    settings are kept in ``dataset.json`` so a resumed run cannot mix settings."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from tqdm import tqdm

    plan = dataset_plan() if plan is None else plan
    if workers < 1:
        raise CalbatchError(f"--workers {workers}: must be at least 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    liggghts_command()  # fail before forking when LIGGGHTS is missing
    _check_manifest(out_dir, {"format": "calbatch-dem-dataset/1", "plan": plan,
                              "pack_settings": pack_settings or {}, "calender_settings": calender_settings or {}})
    pgid_file = out_dir / "dataset.pgid"
    pgid_file.write_text(f"{os.getpgrp()}\n")  # lets a benchmark pause us with kill -STOP -PGID
    total = sum(len(e["cds"]) for e in plan)
    cds_of = {e["microstructure_id"]: e["cds"] for e in plan}
    results, failures = [], []
    try:
        with ProcessPoolExecutor(max_workers=workers) as pool, \
                tqdm(total=total, desc="dem dataset", unit="series", file=sys.stderr) as bar:
            # packs go in one at a time behind the last pack's series, so electrodes finish one by one
            todo = iter(plan)

            def next_pack():
                e = next(todo, None)
                if e is not None:
                    pending[pool.submit(_dataset_pack, str(out_dir), e["microstructure_id"], e["seed"],
                                        pack_settings or {})] = ("pack", e["microstructure_id"])

            pending = {}
            for _ in range(workers):
                next_pack()
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    kind, key = pending.pop(fut)
                    try:
                        value = fut.result()
                    except CalbatchError as exc:
                        failures.append(f"{kind} {key}: {exc}")
                        bar.update(len(cds_of[key]) if kind == "pack" else 1)
                        if kind == "pack":
                            next_pack()
                        continue
                    if kind == "pack":  # longest series first keeps both workers busy to the end
                        for cd in sorted(cds_of[key], reverse=True):
                            pending[pool.submit(_dataset_series, str(out_dir), value, key, cd,
                                                calender_settings or {})] = ("series", (key, cd))
                        next_pack()
                    else:
                        results.append(value)
                        bar.update(1)
    finally:
        if pgid_file.exists() and pgid_file.read_text().strip() == str(os.getpgrp()):
            pgid_file.unlink()
    results.sort(key=lambda r: (r["microstructure_id"], r["cd_percent"]))
    if failures:
        raise CalbatchError(f"{len(failures)} of {total} runs failed (rerun to resume); first: {failures[0]}")
    return {"out": str(out_dir), "series": results}


def format_table(rows: list[dict]) -> str:
    head = f"{'series':<28} {'CD':>4} {'frames':>6} {'eps0':>6} {'eps':>6} {'spring%':>7} {'s/frame':>7}"
    lines = [head] + [
        f"{Path(r['series']).name:<28} {r['cd_percent']:>4g} {r['frames']:>6} {r['porosity_before']:>6.3f} "
        f"{r['porosity_after']:>6.3f} {r['spring_back_percent']:>7.2f} {r['dem_wall_time_per_press_frame_s']:>7.2f}"
        for r in rows]
    return "\n".join(lines)


def summarize_dataset(out_dir: Path) -> list[dict]:
    """:func:`summarize` for every finished series of a dataset folder, from its particle files
    (only the first and last frames are voxelized), ordered by electrode and CD."""
    files = sorted((Path(out_dir) / "particles").glob("*.h5"))
    if not files:
        raise CalbatchError(f"{out_dir}: no particle files in {Path(out_dir) / 'particles'}")
    rows = []
    for path in files:
        series = read_series(path, frames=False)
        ends = {**series, "positions": series["positions"][[0, -1]]}
        series["frames"] = voxel_frames(ends)[0]
        rows.append(summarize(series, str(path)))
    return sorted(rows, key=lambda r: (r["microstructure_id"], r["cd_percent"]))


def cd_table(rows: list[dict]) -> str:
    """A markdown table of a dataset's results, one row per CD: means over the electrodes that ran
    it (range of porosity after in brackets); contact areas of the final frame in um^2."""
    lines = ["| CD % | series | porosity before -> after | porosity_all before -> after | spring-back % | "
             "thickness after (um) | CBD share of solid | AM-CBD | pore-AM | pore-CBD | DEM s a press frame |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for cd in sorted({r["cd_percent"] for r in rows}):
        group = [r for r in rows if r["cd_percent"] == cd]

        def mean(key, sub=None, group=group):
            return float(np.mean([r[key][sub] if sub else r[key] for r in group]))

        after = [r["porosity_after"] for r in group]
        spread = f" ({min(after):.3f}-{max(after):.3f})" if len(group) > 1 else ""
        lines.append(
            f"| {cd:g} | {len(group)} | {mean('porosity_before'):.3f} -> {mean('porosity_after'):.3f}{spread} | "
            f"{mean('porosity_all_before'):.3f} -> {mean('porosity_all_after'):.3f} | {mean('spring_back_percent'):.1f} | "
            f"{mean('thickness_after_um'):.1f} | {mean('cbd_share_of_solid_after'):.3f} | "
            f"{mean('contact_area_after_um2', 'AM-CBD'):.0f} | {mean('contact_area_after_um2', 'pore-AM'):.0f} | "
            f"{mean('contact_area_after_um2', 'pore-CBD'):.0f} | {mean('dem_wall_time_per_press_frame_s'):.1f} |")
    return "\n".join(lines)
