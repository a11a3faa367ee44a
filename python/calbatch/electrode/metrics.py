"""Electrode metrics of a voxel volume: phase fractions, porosity, thickness, contact areas, and
the data metrics (MSE, MAE, R^2 of the paper's eq. 3) between a prediction and its ground truth.

Entry point: :func:`measure`. All kernels run in the C++ core in one pass over the volume.
"""

from __future__ import annotations

import numpy as np

from .. import _core
from .volume import AM, CBD, DEFAULT_NANOPOROSITY, DEFAULT_VOXEL_SIZE_UM, PHASES, PORE, VOID, validate

# The phase pairs reported as contact areas, by name.
CONTACT_PAIRS = {
    "pore-CBD": (PORE, CBD),
    "pore-AM": (PORE, AM),
    "AM-CBD": (AM, CBD),
    "void-pore": (VOID, PORE),
    "void-CBD": (VOID, CBD),
    "void-AM": (VOID, AM),
}


def measure(volume: np.ndarray, voxel_size: float = DEFAULT_VOXEL_SIZE_UM, nanoporosity: float = DEFAULT_NANOPOROSITY,
            periodic_xy: bool = True) -> dict:
    """Phase counts and fractions, porosity, thickness and contact areas of one volume.

    - ``fractions``: pore, CBD and AM as fractions of the electrode (the voxels that are not void),
      void as a fraction of the whole grid.
    - ``porosity``: pore voxels / voxels that are not void (phase 4), the CBD's nanopores excluded
      (the paper's definition); ``porosity_all`` counts them: pore + ``nanoporosity`` x CBD.
    - ``cbd_share_of_solid``: CBD / (CBD + AM) voxels; ``am_surface_on_cbd``: the fraction of the AM
      surface (its faces with pore, CBD or void) that touches CBD.
    - ``thickness_um``: (highest z-slice holding CBD or AM + 1) * voxel_size; 0 without solid.
    - ``contact_area_voxel2`` / ``contact_area_um2``: voxel faces shared by each phase pair, periodic
      in x and y (the wrap faces count), not in z.
    - ``undefined``: the ratios that are 0/0 here (no electrode, no solid, no AM surface); they are NaN.

    Lengths and areas are rounded to 12 significant digits: 76 x 0.4 is 30.4, not 30.400000000000002.
    """
    histogram, faces, top = _core.census(np.ascontiguousarray(volume, dtype=np.uint8), periodic_xy)
    counts = {name: int(histogram[code]) for code, name in PHASES.items()}
    electrode = sum(counts[PHASES[c]] for c in (PORE, CBD, AM))
    total = int(volume.size)
    nan = float("nan")
    fractions = {PHASES[c]: (counts[PHASES[c]] / electrode if electrode else nan) for c in (PORE, CBD, AM)}
    fractions["void"] = counts["void"] / total
    area_voxel2 = {name: int(faces[a, b]) for name, (a, b) in CONTACT_PAIRS.items()}
    solid = counts["CBD"] + counts["AM"]
    am_surface = area_voxel2["AM-CBD"] + area_voxel2["pore-AM"] + area_voxel2["void-AM"]
    undefined = [name for name, whole in (("porosity", electrode), ("cbd_share_of_solid", solid),
                                          ("am_surface_on_cbd", am_surface)) if not whole]
    return {
        "shape_zyx": list(volume.shape),
        "voxel_size_um": voxel_size,
        "counts": counts,
        "fractions": fractions,
        "porosity": fractions["pore"],
        "porosity_all": fractions["pore"] + nanoporosity * fractions["CBD"],
        "nanoporosity": nanoporosity,
        "cbd_share_of_solid": counts["CBD"] / solid if solid else nan,
        "am_surface_on_cbd": area_voxel2["AM-CBD"] / am_surface if am_surface else nan,
        "thickness_voxels": int(top) + 1,
        "thickness_um": _clean((int(top) + 1) * voxel_size),
        "contact_area_voxel2": area_voxel2,
        "contact_area_um2": {name: _clean(n * voxel_size**2) for name, n in area_voxel2.items()},
        "undefined": undefined,
    }


def _clean(x: float) -> float:
    """``x`` without the binary noise of a product of decimals."""
    return float(f"{x:.12g}")


def cbd_distribution(volume: np.ndarray, bands: int = 5) -> dict:
    """Where the CBD sits over the electrode's height: for ``bands`` equal slabs of the thickness
    from the collector up, each slab's share of all CBD voxels and its CBD / solid voxel ratio."""
    volume = np.asarray(volume)
    top = _core.census(np.ascontiguousarray(volume, dtype=np.uint8), True)[2]
    edges = np.linspace(0, int(top) + 1, bands + 1).round().astype(int)
    cbd = np.array([np.count_nonzero(volume[a:b] == CBD) for a, b in zip(edges[:-1], edges[1:])])
    am = np.array([np.count_nonzero(volume[a:b] == AM) for a, b in zip(edges[:-1], edges[1:])])
    return {
        "share_of_cbd": (cbd / max(cbd.sum(), 1)).round(4).tolist(),
        "cbd_share_of_solid": (cbd / np.maximum(cbd + am, 1)).round(4).tolist(),
    }


def compare(truth: np.ndarray, prediction: np.ndarray) -> dict:
    """MSE, MAE and R^2 = 1 - SSE / sum((truth - mean(truth))^2) over the raw voxel codes (eq. 3)."""
    truth = validate(truth, "truth")
    prediction = validate(prediction, "prediction")
    if truth.shape != prediction.shape:
        raise ValueError(f"shapes differ: truth {truth.shape}, prediction {prediction.shape}")
    n, sse, sae, s1, s2 = _core.error_sums(truth, prediction)
    # Exact integer sums: the total sum of squares is s2 - s1^2 / n, computed without cancellation.
    sst = (n * s2 - s1 * s1) / n
    return {
        "mse": sse / n,
        "mae": sae / n,
        "r2": 1.0 - sse / sst if sst > 0 else (1.0 if sse == 0 else float("-inf")),
    }


def format_table(result: dict) -> str:
    """A human-readable table of :func:`measure`'s result."""
    z, y, x = result["shape_zyx"]
    lines = [
        f"grid (z, y, x)         {z} x {y} x {x} voxels of {result['voxel_size_um']:g} um",
        f"thickness              {result['thickness_um']:.2f} um ({result['thickness_voxels']} slices)",
        f"porosity               {result['porosity']:.4f} (CBD nanopores excluded)",
        f"porosity_all           {result['porosity_all']:.4f} (with CBD nanoporosity {result['nanoporosity']:g})",
        f"CBD share of solid     {result['cbd_share_of_solid']:.4f}",
        f"AM surface on CBD      {result['am_surface_on_cbd']:.4f}",
    ]
    for name, frac in result["fractions"].items():
        basis = "of grid" if name == "void" else "of electrode"
        lines.append(f"fraction {name:<14}{frac:.4f} {basis}")
    if result.get("undefined"):
        lines.append(f"undefined (0/0)        {', '.join(result['undefined'])}")
    lines.append("contact area           voxel^2      um^2")
    for name, n in result["contact_area_voxel2"].items():
        lines.append(f"  {name:<20} {n:>8d}  {result['contact_area_um2'][name]:>8.1f}")
    return "\n".join(lines)
