"""What every plot against CD shows so that it stands alone: the uncalendered value at CD 0, the
model's trained CD range shaded, the cases outside it ringed, hollow markers of different shapes
and sizes so that points on top of each other stay visible, and no lines between separate cases
(a scan of CDs is not a trajectory)."""

from __future__ import annotations

import numpy as np

# (marker, size) per series in turn: hollow, each bigger than the next, so a point under another shows
MARKERS = (("o", 64), ("s", 40), ("^", 30), ("D", 22), ("v", 18), ("P", 14))


def scatter(ax, cds, values, color, label: str, k: int = 0, filled: bool = False) -> None:
    """Separate cases as points, no line; ``k`` picks the marker and size (:data:`MARKERS`)."""
    marker, size = MARKERS[k % len(MARKERS)]
    ax.scatter(cds, values, s=size, marker=marker, facecolors=color if filled else "none", edgecolors=color,
               linewidths=1.4, label=label, zorder=3 + k)


def shade_trained(ax, cd_range) -> None:
    """The model's trained CD range as a grey band (nothing when the range is unknown)."""
    if cd_range:
        lo, hi = (float(c) for c in cd_range)
        ax.axvspan(lo, hi, color="0.9", zorder=0, label=f"trained CD range {lo:g}-{hi:g} %")


def ring_extrapolated(ax, cds, values, extrapolated) -> None:
    """Red rings around the cases whose CD lies outside the trained range."""
    ext = np.asarray(extrapolated, dtype=bool)
    if ext.any():
        ax.scatter(np.asarray(cds)[ext], np.asarray(values, dtype=float)[ext], s=220, facecolors="none",
                   edgecolors="tab:red", linewidths=1.6, zorder=10, label="CD outside the trained range (extrapolated)")


def uncalendered(ax, values, label: str = "uncalendered (CD 0)") -> None:
    """The uncalendered electrode(s) at CD 0, with the CD axis starting there."""
    values = [v for v in np.atleast_1d(np.asarray(values, dtype=float)) if np.isfinite(v)]
    if values:
        ax.scatter(np.zeros(len(values)), values, s=70, marker="*", color="black", zorder=9, label=label)
    ax.set_xlim(left=-2)


def finish(ax, xlabel: str = "compression degree CD (% of the uncalendered thickness)", ylabel: str = "") -> None:
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", framealpha=0.85)
