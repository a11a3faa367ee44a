"""The screen's outputs from its case records: one flat row per case (fixed columns, so every run
of a cases file has the same header), results.csv / results.json, the summary table and the plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from ..electrode.metrics import CONTACT_PAIRS
from ..electrode.series import atomic_text

_CONTACTS = [f"contact_{name}_um2" for name in CONTACT_PAIRS]
COLUMNS = (["case_id", "index", "electrode", "electrode_file", "cd_percent", "status", "error", "flags",
            "cd_extrapolated", "porosity_before", "thickness_before_um",
            "porosity", "porosity_all", "thickness_um", "fraction_pore", "fraction_CBD", "fraction_AM", "fraction_void",
            "cbd_share_of_solid", "am_surface_on_cbd", *_CONTACTS,
            "d_eff_rel", "tau", "fick_porosity", "fick_converged", "fick_percolating", "fick_iterations",
            "fick_flux_mismatch", "fick_ranks", "frames", "seconds_per_step",
            "time_read_s", "time_rollout_s", "time_metrics_s", "time_fick_s", "time_total_s", "rank",
            "final_volume", "series_file"])
# columns that differ between runs of the same cases (when, where and how fast they ran)
RUN_COLUMNS = ("seconds_per_step", "time_read_s", "time_rollout_s", "time_metrics_s", "time_fick_s", "time_total_s",
               "rank")


def flat_metrics(prefix_before: bool, m: dict) -> dict:
    """The CSV columns of :func:`calbatch.electrode.metrics.measure`'s result."""
    if prefix_before:
        return {"porosity_before": m["porosity"], "thickness_before_um": m["thickness_um"]}
    row = {k: m[k] for k in ("porosity", "porosity_all", "thickness_um", "cbd_share_of_solid", "am_surface_on_cbd")}
    row.update({f"fraction_{k}": v for k, v in m["fractions"].items()})
    row.update({f"contact_{k}_um2": v for k, v in m["contact_area_um2"].items()})
    return row


def flat_fick(f: dict) -> dict:
    return {"d_eff_rel": f["d_eff_rel"], "tau": f["tau"], "fick_porosity": f["porosity"],
            "fick_converged": f["converged"], "fick_percolating": f["percolating"], "fick_iterations": f["iterations"],
            "fick_flux_mismatch": f["flux_mismatch"], "fick_ranks": f["ranks"]}


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):  # NaN (a 0/0 metric) is an empty cell, as it is null in the JSON
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "")
    return str(value)


def _strict(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_tables(rows: list[dict], out: Path) -> dict:
    """results.csv (one row per case, :data:`COLUMNS`) and results.json (the same, strict JSON)."""
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in COLUMNS])
    atomic_text(out / "results.csv", buf.getvalue())
    atomic_text(out / "results.json", json.dumps([{c: _strict(r.get(c)) for c in COLUMNS} for r in rows], indent=1,
                                                   allow_nan=False) + "\n")
    return {"csv": str(out / "results.csv"), "json": str(out / "results.json")}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _num(v, fmt: str) -> str:
    if v is None or v == "":
        return "-"
    return format(v, fmt) if math.isfinite(v) else str(v)


def table(rows: list[dict], limit: int = 40) -> str:
    """The summary table: one line per case (the first ``limit``), then the counts."""
    head = f"{'case':<28} {'CD %':>6} {'porosity':>9} {'D_eff/D':>9} {'tau':>8}  flags / error"
    lines = [head, "-" * len(head)]
    for r in rows[:limit]:
        note = r.get("error") if r["status"] == "failed" else (r.get("flags") or "")
        lines.append(f"{r['case_id']:<28} {r['cd_percent']:>6g} {_num(r.get('porosity'), '9.4f'):>9} "
                     f"{_num(r.get('d_eff_rel'), '9.4f'):>9} {_num(r.get('tau'), '8.3f'):>8}  {note}")
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more cases in results.csv")
    return "\n".join(lines)


def trained_range(model) -> tuple[float, float] | None:
    """The model's trained CD range from its metadata (None when it has none)."""
    import onnxruntime

    meta = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_modelmeta()
    value = meta.custom_metadata_map.get("cd_range_percent")
    return tuple(json.loads(value)) if value else None


def plots(rows: list[dict], out: Path, model=None) -> list[str]:
    """PNG plots against CD, one marker per electrode: porosity, and D_eff and tau where solved;
    titled with ``model`` (its trained CD range shaded), the uncalendered porosity at CD 0,
    extrapolated cases ringed (:mod:`calbatch.view.cdplot`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..view import cdplot

    ok = [r for r in rows if r["status"] == "ok"]
    by_electrode: dict[str, list[dict]] = {}
    for r in ok:
        by_electrode.setdefault(r["electrode"], []).append(r)
    cd_range = trained_range(model) if model is not None else None
    names = list(by_electrode)
    what = names[0] if len(names) == 1 else f"{len(names)} electrodes"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key, label in (("porosity", "porosity (pore / electrode)"), ("d_eff_rel", "D_eff / D_bulk"),
                       ("tau", "tortuosity factor tau")):
        if not any(_finite(r.get(key)) for r in ok):
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        cdplot.shade_trained(ax, cd_range)
        colors = plt.get_cmap("tab10")
        for k, (name, rs) in enumerate(by_electrode.items()):
            pts = sorted((r["cd_percent"], r[key], bool(r.get("cd_extrapolated"))) for r in rs if _finite(r.get(key)))
            if pts:
                cds, values, _ = zip(*pts)
                cdplot.scatter(ax, cds, values, colors(k % 10), name if len(names) <= 12 else None, k)
        shown = [r for r in ok if _finite(r.get(key))]
        extrapolated = [bool(r.get("cd_extrapolated")) for r in shown]
        cdplot.ring_extrapolated(ax, [r["cd_percent"] for r in shown], [r[key] for r in shown], extrapolated)
        if key == "porosity":  # the uncalendered electrodes (the screen solves no Fick before calendering)
            cdplot.uncalendered(ax, sorted({r["porosity_before"] for r in ok if _finite(r.get("porosity_before"))}))
        else:
            cdplot.uncalendered(ax, [])
            ax.text(0, 0.5, "uncalendered: not solved by the screen", rotation=90, transform=ax.get_xaxis_transform(),
                    ha="center", va="center", fontsize=7, color="0.4")
        ax.set_title(f"calbatch screen: {what}\nmodel {Path(str(model)).name if model else '(not named)'}, final "
                     f"(relaxed) structure; {sum(extrapolated)} case(s) extrapolated", fontsize=9)
        cdplot.finish(ax, ylabel=label)
        fig.tight_layout()
        path = out / f"{key}_vs_cd.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def _finite(v) -> bool:
    return isinstance(v, float) and math.isfinite(v)
