"""The numbers of ``calbatch evaluate`` for one predicted series against its DEM series: per frame
MSE, MAE and R^2 (the paper's eq. 3 on the raw codes, :func:`calbatch.electrode.metrics.compare`), IoU of
pore, CBD and AM, phase volumes and thickness; on the final (relaxed) frame porosity, the three
contact areas inside the electrode, D_eff and tau (the Fick solve), each as the prediction's value,
the DEM's and the relative error. For a particle model, the particle view: how far every particle
lies from its DEM position, frame by frame (:func:`particle_drift`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..electrode.metrics import compare, measure
from ..electrode.particles import minimum_image
from ..electrode.volume import AM, CBD, PHASES, PORE

SOLID_PHASES = (PORE, CBD, AM)  # the phases scored by IoU and volume
CONTACTS = ("pore-CBD", "pore-AM", "AM-CBD")  # the contact areas inside the electrode


def frame_state(frame: np.ndarray, voxel_size: float) -> dict:
    """Phase volumes (um^3) and thickness (voxels) of one frame (the C++ census)."""
    m = measure(frame, voxel_size)
    return {"volume_um3": {PHASES[p]: m["counts"][PHASES[p]] * voxel_size**3 for p in SOLID_PHASES},
            "thickness_voxels": m["thickness_voxels"]}


def iou(truth: np.ndarray, pred: np.ndarray) -> dict:
    """Intersection over union of pore, CBD and AM (1 when a phase is in neither volume)."""
    joint = np.bincount(truth.ravel().astype(np.intp) * 5 + pred.ravel(), minlength=25).reshape(5, 5)
    out = {}
    for p in SOLID_PHASES:
        union = joint[p].sum() + joint[:, p].sum() - joint[p, p]
        out[PHASES[p]] = float(joint[p, p] / union) if union else 1.0
    return out


def relative(value, reference):
    """(value - reference) / reference; None where either is missing or the reference is 0 or not finite."""
    if value is None or reference is None or not np.isfinite(reference) or reference == 0 or not np.isfinite(value):
        return None
    return float((value - reference) / reference)


def triple(value, reference) -> dict:
    """A final-frame metric as the prediction's value, the DEM's and the relative error."""
    return {"value": value, "dem": reference, "rel_error": relative(value, reference)}


def per_frame(truth: np.ndarray, pred: np.ndarray, truth_states: list[dict], voxel_size: float, first: int) -> dict:
    """Per frame (all frames; the statistics over frames ``first`` on, the frames not given to the
    predictor): MSE, MAE, R^2, IoU per phase, phase volumes, their relative errors and thickness."""
    rows = []
    for t in range(len(truth)):
        c = compare(truth[t], pred[t])
        s = frame_state(pred[t], voxel_size)
        dem = truth_states[t]
        rows.append({"mse": c["mse"], "mae": c["mae"], "r2": c["r2"], "iou": iou(truth[t], pred[t]),
                     "volume_um3": s["volume_um3"],
                     "volume_rel_error": {k: relative(v, dem["volume_um3"][k]) for k, v in s["volume_um3"].items()},
                     "thickness_voxels": s["thickness_voxels"],
                     "thickness_error_voxels": s["thickness_voxels"] - dem["thickness_voxels"]})
    scored = rows[first:]
    r2 = [r["r2"] for r in scored]
    am_err = [abs(r["volume_rel_error"]["AM"]) for r in scored if r["volume_rel_error"]["AM"] is not None]
    return {"first_scored_frame": first, "frames": rows,
            "r2_mean": float(np.mean(r2)), "r2_worst": float(np.min(r2)),
            "mse_mean": float(np.mean([r["mse"] for r in scored])), "mae_mean": float(np.mean([r["mae"] for r in scored])),
            "iou_mean": {PHASES[p]: float(np.mean([r["iou"][PHASES[p]] for r in scored])) for p in SOLID_PHASES},
            "am_volume_error_max": float(np.max(am_err)) if am_err else None,
            "thickness_error_max_voxels": int(max(abs(r["thickness_error_voxels"]) for r in scored))}


PORES_ALONE = "_pores"  # the suffix of the transport with the CBD blocking


def final_state(frame: np.ndarray, voxel_size: float, fick: bool, cbd_diffusivity: float | None = None,
                pores_alone: bool = True) -> dict:
    """Porosity, thickness, the three contact areas (um^2) and, with ``fick``, D_eff / D_bulk and
    tau (with the solve's converged / percolating flags) of one frame, both ways: with the CBD
    conducting (``cbd_diffusivity``, default calbatch's) and through the pores alone (``_pores``:
    the CBD blocking, the most sensitive test of where the pores and the CBD sit; ``pores_alone``)."""
    m = measure(frame, voxel_size)
    out = {"porosity": m["porosity"], "thickness_voxels": m["thickness_voxels"],
           "contact_area_um2": {k: m["contact_area_um2"][k] for k in CONTACTS}}
    if fick:
        from ..transport import DEFAULT_CBD_DIFFUSIVITY, FickSolver

        d = DEFAULT_CBD_DIFFUSIVITY if cbd_diffusivity is None else cbd_diffusivity
        ways = [("", d)] + ([(PORES_ALONE, 0.0)] if pores_alone else [])
        for suffix, dc in ways:
            r = FickSolver(frame, cbd_diffusivity=dc, source="final frame").solve()
            out.update({f"d_eff_rel{suffix}": r.d_eff_rel, f"tau{suffix}": r.tau, f"fick_converged{suffix}": r.converged,
                        f"fick_percolating{suffix}": r.percolating})
    return out


def final_scores(state: dict, dem: dict) -> dict:
    """Each final-frame metric of ``state`` as value / DEM / relative error (thickness: the
    difference in voxels)."""
    out = {"porosity": triple(state["porosity"], dem["porosity"]),
           "thickness_voxels": {"value": state["thickness_voxels"], "dem": dem["thickness_voxels"],
                                "error": state["thickness_voxels"] - dem["thickness_voxels"]},
           "contact_area_um2": {k: triple(state["contact_area_um2"][k], dem["contact_area_um2"][k]) for k in CONTACTS}}
    for suffix in ("", PORES_ALONE):
        if f"d_eff_rel{suffix}" in state and f"d_eff_rel{suffix}" in dem:
            out[f"d_eff_rel{suffix}"] = triple(state[f"d_eff_rel{suffix}"], dem[f"d_eff_rel{suffix}"])
            out[f"tau{suffix}"] = triple(state[f"tau{suffix}"], dem[f"tau{suffix}"])
            out[f"fick_converged{suffix}"] = bool(state[f"fick_converged{suffix}"])
    return out


def particle_drift(pred: np.ndarray, truth: np.ndarray, box, particles=None, frames: np.ndarray | None = None) -> dict:
    """Per frame the median and 90th percentile (um) of every particle's distance from its DEM
    position (``pred``, ``truth`` (frames, n, 3) in the same particle order; minimum image in x
    and y, periodic with ``box`` (x, y) um), and the final frame's; then the same with the bed's
    rigid slide taken out (``aligned_*``: every particle's offset less the mean offset in x and
    y, whose length is ``slide_um``). The periodic box has no origin: a bed slid as a whole is the
    same electrode, and the DEM's beds slide by up to 4 um in a frame when the press lets go.
    With ``particles`` (their radii and phases) and the DEM's ``frames``, also ``aligned_r2``: R2
    per frame (from frame 1) of the frames rendered from ``pred`` moved back by its slide."""
    pred = np.asarray(pred, dtype=np.float64)
    d = minimum_image(pred - np.asarray(truth, dtype=np.float64), box)
    slide = d[..., :2].mean(axis=-2)
    aligned = d.copy()
    aligned[..., :2] -= slide[..., None, :]
    out = {}
    for prefix, offset in (("", d), ("aligned_", minimum_image(aligned, box))):
        dist = np.linalg.norm(offset, axis=-1)
        median, p90 = np.median(dist, axis=1), np.percentile(dist, 90, axis=1)
        out.update({f"{prefix}median_um": median.tolist(), f"{prefix}p90_um": p90.tolist(),
                    f"final_{prefix}median_um": float(median[-1]), f"final_{prefix}p90_um": float(p90[-1])})
    length = np.linalg.norm(slide, axis=-1)
    out.update({"slide_um": length.tolist(), "final_slide_um": float(length[-1])})
    if particles is not None and frames is not None:
        back = pred.copy()
        back[..., :2] -= slide[:, None, :]
        r2 = [compare(frames[t], replace(particles, centres=back[t]).voxelize(frames.shape[1]))["r2"]
              for t in range(1, len(frames))]
        out.update({"aligned_r2": r2, "aligned_r2_mean": float(np.mean(r2)), "aligned_r2_worst": float(np.min(r2))})
    return out
