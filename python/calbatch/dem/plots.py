"""PNG plots of one series: phase volumes and thickness/press against time, x-z slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..electrode.series import read_series
from .calender import voxel_frames

# the phase colours of every calbatch picture: white/blue pore, red CBD, grey AM
PHASE_COLORS = {"pore": "tab:blue", "CBD": "tab:red", "AM": "dimgray"}


def plot(series_path: Path, out_dir: Path, slices: int = 4) -> list[str]:
    """PNG plots of one series: phase volumes and thickness/press against time, x-z slices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..electrode.metrics import measure

    series = read_series(Path(series_path))
    if "frames" not in series:  # a particle file: its voxels on the series' own grid
        series["frames"] = voxel_frames(series)[0]
    a = series["attrs"]
    vs = float(a["voxel_size_um"])
    metrics = [measure(v, vs) for v in series["frames"]]
    t = series["time_us"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(series_path).stem
    title = (f"DEM ({a.get('liggghts_version', 'LIGGGHTS')}) {stem}: electrode {a['microstructure_id']}, "
             f"CD {a['cd_percent']:g} %")
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("pore", "CBD", "AM"):
        ax.plot(t, [m["counts"][name] * vs**3 for m in metrics], marker=".", color=PHASE_COLORS[name], label=name)
    ax.set(xlabel="simulated time (us), 0: the uncalendered electrode", ylabel="phase volume (um$^3$, voxelized)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    paths.append(out_dir / f"{stem}_volumes.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(t, [m["thickness_um"] for m in metrics], marker=".", label="electrode thickness (voxelized)")
    ax.plot(t, series["press_z_um"], "--", label="press position")
    for phase, color in (("release", "tab:orange"), ("relax", "tab:green")):
        sel = series["phase"] == phase
        if sel.any():
            ax.axvspan(t[sel].min(), t[sel].max(), color=color, alpha=0.1, label=phase)
    ax.set(xlabel="simulated time (us), 0: the uncalendered electrode", ylabel="height above the collector (um)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    paths.append(out_dir / f"{stem}_thickness.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    picks = np.unique(np.linspace(0, len(t) - 1, slices).round().astype(int))
    fig, axes = plt.subplots(1, len(picks), figsize=(3 * len(picks), 4))
    colors = matplotlib.colors.ListedColormap(["white", "tab:red", "dimgray", "white", "lightblue"])
    for ax, i in zip(np.atleast_1d(axes), picks):
        frame = series["frames"][i]
        ax.imshow(frame[:, frame.shape[1] // 2, :], origin="lower", cmap=colors, vmin=0, vmax=4,
                  interpolation="nearest", extent=(0, frame.shape[2] * vs, 0, frame.shape[0] * vs))
        ax.set(title=f"{'uncalendered' if i == 0 else series['phase'][i]}, t = {t[i]:.0f} us", xlabel="x (um)")
    np.atleast_1d(axes)[0].set_ylabel("z (um)")
    fig.suptitle(f"{title}\nx-z slice at mid y: white pore, red CBD, grey AM, blue void", fontsize=10, y=1.05)
    paths.append(out_dir / f"{stem}_slices.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [str(p) for p in paths]
