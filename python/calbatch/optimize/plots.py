"""The plot of a ``calbatch optimize`` search: it stands alone (target, answer, DEM check, the
uncalendered electrode and the model's trained CD range)."""

from __future__ import annotations

import math
from pathlib import Path


def plot_curve(result: dict, path: Path) -> str:
    """The searched points against CD (porosity, and tau where it was solved), the target, the
    answer and the DEM check, the uncalendered electrode at CD 0 and the trained CD range, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..view import cdplot

    pts, a, dem = result["curve"], result["answer"], result.get("dem_check", {})
    keys = [k for k in ("porosity", "tau") if k in a]
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.4), squeeze=False)
    labels = {"porosity": "porosity (pore / electrode)", "tau": "tortuosity factor tau"}
    for ax, key in zip(axes[0], keys):
        cdplot.shade_trained(ax, result.get("trained_cd_range"))
        shown = [p for p in pts if math.isfinite(p[key])]
        cdplot.scatter(ax, [p["cd_percent"] for p in shown], [p[key] for p in shown], "tab:blue",
                       f"model, one rollout each ({len(pts)})", 1)
        cdplot.uncalendered(ax, [result["uncalendered"][key]] if key in result.get("uncalendered", {}) else [])
        if key == ("porosity" if result["target_kind"] == "min_tau" else result["target_kind"]):
            what = "porosity cap" if result["target_kind"] == "min_tau" else "target"
            ax.axhline(result["target_value"], color="tab:green", ls="--", label=f"{what} {result['target_value']:g}")
        ax.scatter([a["cd_percent"]], [a[key]], s=260, marker="*", color="tab:red", zorder=11,
                   label=f"answer: CD {a['cd_percent']:.2f} %, {key} {a[key]:.4g}")
        if f"dem_{key}" in dem:
            ax.scatter([a["cd_percent"]], [dem[f"dem_{key}"]], s=90, marker="s", facecolors="none", edgecolors="black",
                       linewidths=1.8, zorder=12, label=f"DEM check at that CD: {dem[f'dem_{key}']:.4g}")
        cdplot.finish(ax, ylabel=labels[key])
    fig.suptitle(f"calbatch optimize: {result['target']}\nelectrode {Path(str(result['electrode'])).name}, "
                 f"model {Path(result['model']).name}")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
