"""Keras -> ONNX (tf2onnx, opset 17+) with calbatch's metadata in the file, checked against Keras on
random input; and the reading side (:func:`load_onnx`) that refuses foreign or corrupt files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..electrode.checks import DEFAULT_CD_MARGIN
from ..electrode.volume import PHASES
from ..errors import CalbatchError
from ..surrogate.contract import CLASS_CODES, COND_NAMES, MODEL_FORMAT, Kind, conditioning, load_onnx

DEFAULT_OPSET = 17


def training_porosity(run: dict) -> dict:
    """The final (relaxed) frame's porosity of each training series of ``run``, averaged per CD:
    ``{"20": {"mean": 0.41, "n": 2}, ...}`` -- the same-CD baseline of ``calbatch evaluate``.
    Series that are no longer readable are left out (the baseline is then absent for their CD)."""
    import h5py

    from ..electrode.metrics import measure

    by_cd: dict[str, list[float]] = {}
    for path in run.get("train", []):
        try:
            with h5py.File(path, "r") as f:
                last, cd = f["frames"][-1], float(f.attrs["cd_percent"])
        except (OSError, KeyError):
            continue
        by_cd.setdefault(f"{cd:g}", []).append(measure(last, float(run["voxel_size_um"]))["porosity"])
    return {cd: {"mean": float(np.mean(v)), "n": len(v)} for cd, v in sorted(by_cd.items(), key=lambda kv: float(kv[0]))}


def metadata(run: dict, porosity: dict | None = None) -> dict:
    """The ONNX metadata of a trained run (string values; JSON where structured), its phase budget
    (:mod:`calbatch.surrogate.budget`) included; ``porosity``: :func:`training_porosity` (left out when None)."""
    from .. import __version__

    kind = Kind.of(run["kind"], "run.json: kind")
    factor = 1 if kind.fixed_grid else int(run["config"].get("factor", 4))
    return {
        "format": MODEL_FORMAT, "calbatch_version": __version__, "kind": kind.value,
        "grid_zyx": json.dumps(run["grid_zyx"]), "fixed_grid": json.dumps(kind.fixed_grid),
        "grid_multiple_xy": str(factor), "voxel_size_um": repr(float(run["voxel_size_um"])),
        "cd_range_percent": json.dumps(run["cd_range"]),
        "cd_margin_percent": repr(DEFAULT_CD_MARGIN),  # how far past the range its CDs are still taken
        "phase_codes": json.dumps({str(k): v for k, v in PHASES.items()}), "class_codes": json.dumps(CLASS_CODES.tolist()),
        "inputs": json.dumps({"frames": "uint8 (B, nz, ny, nx, 3) phase codes of the 3 past frames, oldest first",
                              "cond": f"float32 (B, {len(COND_NAMES)})"}),
        "conditioning": json.dumps(list(COND_NAMES)),
        "output": kind.output,
        "schedule": json.dumps(run.get("schedule", {})), "config": json.dumps(run["config"]),
        "wall_overlap_voxels": str(run.get("wall_overlap_voxels", 0)),  # material allowed above the press
        **({"training_final_porosity_by_cd": json.dumps(porosity)} if porosity is not None else {}),
        "phase_budget": json.dumps(run["phase_budget"]),
    }


def export(model, run: dict, out: Path, opset: int = DEFAULT_OPSET, check_grid=None, seed: int = 0) -> dict:
    """Write ``model`` (Keras) as ONNX to ``out`` with :func:`metadata`; run both on one random
    input of ``check_grid`` (default: the training grid) and return the max abs difference (of the
    class probabilities for calbatch's model, of the codes for the paper's) and the max difference
    of the raw outputs relative to their largest value."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    if opset < 17:
        raise CalbatchError(f"opset: must be 17 or newer, got {opset}")
    kind = Kind.of(run["kind"], "run.json: kind")
    grid = tuple(run["grid_zyx"]) if kind.fixed_grid else (None, None, None)
    sig = (tf.TensorSpec((None, *grid, 3), tf.uint8, name="frames"),
           tf.TensorSpec((None, len(COND_NAMES)), tf.float32, name="cond"))

    @tf.function(input_signature=sig)
    def forward(frames, cond):
        return {"output": model([frames, cond], training=False)}

    if "phase_budget" not in run:
        raise CalbatchError("run.json: no phase budget (a run trained before calbatch planned the top); train it again")
    porosity = training_porosity(run)
    proto, _ = tf2onnx.convert.from_function(forward, input_signature=sig, opset=opset)
    for k, v in metadata(run, porosity).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    frames, cond = random_input(tuple(check_grid or run["grid_zyx"]), float(run["voxel_size_um"]), seed)
    keras_out = model([frames, cond], training=False).numpy()
    onnx_out = load_onnx(out)[0].run(None, {"frames": frames, "cond": cond})[0]
    raw = float(np.max(np.abs(keras_out - onnx_out))) / max(float(np.max(np.abs(keras_out))), 1e-30)
    if kind.scores:  # scores are unnormalised: compare the probabilities they give
        keras_out = keras_out / keras_out.sum(axis=-1, keepdims=True)
        onnx_out = onnx_out / onnx_out.sum(axis=-1, keepdims=True)
    return {"out": str(out), "opset": opset, "max_abs_diff": float(np.max(np.abs(keras_out - onnx_out))),
            "max_rel_diff": raw,
            "check_grid_zyx": list(check_grid or run["grid_zyx"]), "bytes": out.stat().st_size,
            "training_final_porosity_by_cd": porosity}


def random_input(grid, voxel_size: float, seed: int = 0):
    """A random but plausible model input: an electrode of random phases under void, mid-press."""
    nz, ny, nx = grid
    rng = np.random.default_rng(seed)
    frames = rng.choice(np.array([0, 1, 2], dtype=np.uint8), size=(1, nz, ny, nx, 3), p=[0.4, 0.1, 0.5])
    top = int(0.8 * nz)
    frames[:, top:] = 4
    h0 = top * voxel_size
    cond = conditioning(30, h0, voxel_size, 0.95 * h0, 0.93 * h0, "press")[None]
    return frames, cond
