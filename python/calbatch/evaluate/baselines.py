"""The baselines ``calbatch evaluate`` measures a model against, each knowing only what the model
is given (the start frame, the CD and the press schedule):

- persistence: the start frame repeated;
- press-affine squeeze: the start frame squeezed along z so that the electrode's top follows the
  press down (nearest voxel), held at the lowest point reached (no spring-back);
- the same-CD mean porosity of the training set (the final frame's porosity only), read from the
  model's metadata (``training_final_porosity_by_cd``, written by ``calbatch export``).
"""

from __future__ import annotations

import json

import numpy as np

from ..electrode.volume import VOID
from ..surrogate.rules import void_rule


def persistence(start: np.ndarray, n_frames: int) -> np.ndarray:
    """``start`` repeated ``n_frames`` times."""
    return np.repeat(start[None], n_frames, axis=0)


def squeeze(start: np.ndarray, scale: float) -> np.ndarray:
    """``start`` scaled along z by ``scale`` (<= 1; z = 0 is the current collector), nearest voxel:
    output slice k takes the start's slice whose centre maps onto k's centre."""
    nz = start.shape[0]
    src = np.floor((np.arange(nz) + 0.5) / min(1.0, scale)).astype(np.int64)
    out = np.full_like(start, VOID)
    inside = src < nz
    out[inside] = start[src[inside]]
    return void_rule(out)


def press_affine(start: np.ndarray, press_z_um: np.ndarray, h0: float) -> np.ndarray:
    """Frame by frame, ``start`` (its top at ``h0`` um, where the press starts) squeezed so the top
    sits at the lowest press position reached so far."""
    lowest = np.minimum.accumulate(np.asarray(press_z_um, dtype=np.float64))
    return np.stack([squeeze(start, z / h0) for z in lowest])


def training_porosity(meta: dict, cd: float) -> dict | None:
    """The training set's mean final porosity at ``cd`` ({"mean", "n"}), or None when the model's
    metadata has none (a model exported before the baseline existed, or no training series at that CD)."""
    try:
        table = json.loads(meta["training_final_porosity_by_cd"])
    except (KeyError, ValueError):
        return None
    for key, entry in table.items():
        if abs(float(key) - cd) < 1e-6:
            return entry
    return None
