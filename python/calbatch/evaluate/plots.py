"""PNG plots of a ``calbatch evaluate`` report, in the spirit of the paper's Figures 5-7: per
series the phase volumes and R^2 against time, and DEM against predicted x-z slices; over all
series the final porosity and D_eff against CD. A CD outside the model's trained range is marked
("extrapolated") in every plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..view import cdplot, side_by_side, unavailable

# pass -> (label, matplotlib style) in every plot
STYLES = {"free_from_frame0": ("model, free from frame 0", "tab:blue"),
          "free_from_3_frames": ("model, free from 3 frames", "tab:cyan"),
          "teacher_forced": ("model, teacher-forced", "tab:purple"),
          "persistence": ("persistence", "tab:gray"),
          "press_affine": ("press-affine squeeze", "tab:olive"),
          "twin": ("twin DEM (ceiling)", "tab:green")}
PHASE_COLORS = {"pore": "tab:blue", "CBD": "tab:red", "AM": "dimgray"}


def _title(r: dict, report: dict) -> str:
    flag = ", CD EXTRAPOLATED" if r["cd_extrapolated"] else ""
    return (f"model {Path(report['model']).name} against DEM {Path(r['series']).stem}: electrode {r['microstructure_id']}, "
            f"CD {r['cd_percent']:g} %{flag}")


def _frames_figure(plt, report: dict, r: dict, path: Path) -> None:
    t = np.asarray(r["time_us"])
    fig, (ax_v, ax_r) = plt.subplots(1, 2, figsize=(12, 4.2))
    for phase, color in PHASE_COLORS.items():
        ax_v.plot(t, [f["volume_um3"][phase] for f in r["dem"]["frames"]], color=color, lw=2, label=f"{phase}, DEM")
        for name, ls in (("free_from_frame0", "--"), ("twin", ":")):
            if name in r["passes"]:
                ax_v.plot(t, [f["volume_um3"][phase] for f in r["passes"][name]["frames"]], color=color, ls=ls,
                          label=f"{phase}, {STYLES[name][0]}")
    ax_v.set(xlabel="simulated time (us)", ylabel="phase volume (um$^3$)", title="phase volumes")
    ax_v.legend(fontsize=7)
    for name, p in r["passes"].items():
        first = p["first_scored_frame"]
        ax_r.plot(t[first:], [f["r2"] for f in p["frames"][first:]], marker=".", color=STYLES[name][1],
                  label=f"{STYLES[name][0]} (mean {p['r2_mean']:.2f})")
    ax_r.set(xlabel="simulated time (us)", ylabel="R$^2$ (eq. 3, raw codes)", title="R$^2$ per frame")
    ax_r.set_ylim(max(-1.0, ax_r.get_ylim()[0]), 1.0)
    ax_r.legend(fontsize=7)
    fig.suptitle(_title(r, report))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _slices_figure(plt, matplotlib, report: dict, r: dict, sl: dict, path: Path) -> None:
    rows = [k for k in ("dem", "free_from_frame0", "twin") if k in sl]
    picks = sl["frames"]
    fig, axes = plt.subplots(len(rows), len(picks), figsize=(2.6 * len(picks), 2.8 * len(rows)), squeeze=False)
    colors = matplotlib.colors.ListedColormap(["white", "tab:red", "dimgray", "white", "lightblue"])
    for i, row in enumerate(rows):
        for j, k in enumerate(picks):
            ax = axes[i, j]
            ax.imshow(sl[row][j], origin="lower", cmap=colors, vmin=0, vmax=4, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{'uncalendered' if k == 0 else r['stage'][k]}, t = {r['time_us'][k]:.0f} us", fontsize=8)
            if j == 0:
                ax.set_ylabel("DEM" if row == "dem" else STYLES[row][0], fontsize=8)
    fig.suptitle(f"{_title(r, report)}\nx-z slices at mid y: white pore, red CBD, grey AM, blue void", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _cd_figure(plt, report: dict, path: Path) -> None:
    """Final porosity (and D_eff) against CD: every series a separate case, so points and no lines."""
    series = sorted(report["series"], key=lambda r: (r["microstructure_id"], r["cd_percent"]))
    electrodes = sorted({r["microstructure_id"] for r in series})
    cd_range = json.loads(report["cd_range_percent"]) if report.get("cd_range_percent") else None
    metrics = [("porosity", "final porosity")]
    if report["fick"]:
        metrics.append(("d_eff_rel", "final D$_{eff}$ / D$_{bulk}$"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.4 * len(metrics), 4.6), squeeze=False)
    cds = np.array([r["cd_percent"] for r in series])
    ext = np.array([r["cd_extrapolated"] for r in series])
    for ax, (key, label) in zip(axes[0], metrics):
        cdplot.shade_trained(ax, cd_range)
        dem = np.array([r["dem"]["final"][key] for r in series], dtype=float)
        cdplot.scatter(ax, cds, dem, "black", "DEM", 0, filled=True)
        for k, name in enumerate(("free_from_frame0", "twin", "press_affine", "persistence"), start=1):
            have = [r for r in series if name in r["passes"] and key in r["passes"][name]["final"]]
            if have:  # a twin may be given for some series only
                cdplot.scatter(ax, [r["cd_percent"] for r in have], [r["passes"][name]["final"][key]["value"] for r in have],
                               STYLES[name][1], STYLES[name][0], k)
        if key == "porosity" and any(r["training_mean_porosity"] for r in series):
            base = [(r["cd_percent"], r["training_mean_porosity"]["porosity"]["value"]) for r in series
                    if r["training_mean_porosity"]]
            cdplot.scatter(ax, *zip(*base), "tab:orange", "training set, same-CD mean", 5)
        cdplot.ring_extrapolated(ax, cds, dem, ext)
        first = {r["microstructure_id"]: r["dem"]["initial"][key] for r in series if key in r["dem"].get("initial", {})}
        cdplot.uncalendered(ax, list(first.values()), "uncalendered (CD 0), DEM frame 0")
        cdplot.finish(ax, ylabel=label)
    fig.suptitle(f"model {Path(report['model']).name} ({report.get('model_kind') or 'calbatch'}, rule "
                 f"{report['decision_rule']}) against DEM, electrode{'s' if len(electrodes) > 1 else ''} "
                 f"{', '.join(map(str, electrodes))}: the final (relaxed) frame against CD")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_all(report: dict, slices: list[dict], out_dir: Path) -> list[str]:
    """Write every plot of ``report`` into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    stems = [Path(r["series"]).stem for r in report["series"]]
    for i, (r, sl) in enumerate(zip(report["series"], slices)):
        stem = stems[i] if stems.count(stems[i]) == 1 else f"{i:02d}_{stems[i]}"
        paths.append(out_dir / f"{stem}_volumes_r2.png")
        _frames_figure(plt, report, r, paths[-1])
        paths.append(out_dir / f"{stem}_slices.png")
        _slices_figure(plt, matplotlib, report, r, sl, paths[-1])
    paths.append(out_dir / "final_vs_cd.png")
    _cd_figure(plt, report, paths[-1])
    if report["series"] and unavailable() is None:  # else the report says why it has no render
        paths.append(out_dir / f"{stems[0]}_render.png")
        _render_figure(report, report["series"][0], slices[0]["final"], paths[-1])
    return [str(p) for p in paths]


def _render_figure(report: dict, r: dict, final: dict, path: Path) -> None:
    """DEM against the free rollout from frame 0, the final frame of the first series, in 3-D."""
    flag = ", extrapolated" if r["cd_extrapolated"] else ""
    where = f"electrode {r['microstructure_id']}, CD {r['cd_percent']:g} %{flag}, final frame {r['frames'] - 1}"
    side_by_side(path, [(f"DEM ({Path(r['series']).stem})\n{where}", final["dem"]),
                        (f"model {Path(report['model']).name}, free rollout\n{where}", final["model"])],
                 final["voxel_size"])
