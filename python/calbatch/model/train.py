"""Training of the frame models (:mod:`calbatch.model.networks`) on DEM series: unrolled "pushforward"
training (each window is rolled ``horizon`` steps, the model fed its own hard prediction without
gradient after the first), boundary noise on the inputs, checkpoints with resume, early stopping on
the validation loss, a seed, and a progress bar on stderr.

A run folder holds ``run.json`` (the model kind and hyper-parameters, the data it was trained on,
its grid, voxel size, CD range and press schedule parameters: everything export needs),
``state.json`` (epoch, losses), ``last.weights.h5``, ``best.weights.h5`` and ``optimizer.npz``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..electrode.schedule import WALL_OVERLAP_VOXELS
from ..electrode.series import atomic_text
from ..errors import CalbatchError
from ..surrogate.budget import fit_series_files
from ..surrogate.rules import CODE_TO_CLASS
from .dataset import WindowStream, attach_budget, scan, split
from .networks import CLASS_CODES, build, press_mask


def boundary_noise(inputs: np.ndarray, fraction: float, rng) -> np.ndarray:
    """Replace a random ``fraction`` of the input voxels by their upper or lower neighbour's code:
    the kind of error a rollout makes at particle boundaries."""
    if fraction <= 0:
        return inputs
    flip = rng.random(inputs.shape) < fraction
    shifted = np.where(rng.random(inputs.shape) < 0.5, np.roll(inputs, 1, axis=-3), np.roll(inputs, -1, axis=-3))
    return np.where(flip, shifted, inputs)


def _losses(kind: str, vol_weight: float):
    import tensorflow as tf

    lut = tf.constant(CODE_TO_CLASS.astype(np.int32))
    codes = tf.constant([float(c) for c in CLASS_CODES])
    codes8 = tf.constant(CLASS_CODES, tf.uint8)

    def loss(pred, target, cond):  # target uint8 codes (B, z, y, x); cond (B, 7)
        if kind == "paper":
            return tf.reduce_mean(tf.square(pred - tf.cast(target, tf.float32)))
        cls = tf.gather(lut, tf.cast(target, tf.int32))
        onehot = tf.one_hot(cls, 4)
        logits = tf.math.log(tf.maximum(pred, 1e-30))  # the model outputs scores (see model.Scores)
        # above the press only void: known, so masked as the rollout's decision masks it
        above = press_mask(cond, tf.shape(pred)[1])[:, :, None, None, None]
        logits = logits - 30.0 * above * tf.constant([1.0, 1.0, 1.0, 0.0])
        ce = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(onehot, logits))
        probs = tf.nn.softmax(logits)
        # soft phase volumes (AM, CBD) against the target's: conservation the argmax cannot see
        axes = [1, 2, 3]
        err = tf.abs(tf.reduce_sum(probs[..., 1:3], axes) - tf.reduce_sum(onehot[..., 1:3], axes))
        vol = tf.reduce_mean(err / (tf.reduce_sum(onehot[..., 1:3], axes) + 1.0))
        return ce + vol_weight * vol

    def decide(pred, cond):  # hard codes of a prediction, as the rollout feeds them back
        if kind == "paper":
            return tf.gather(codes8, tf.argmin(tf.abs(pred[..., None] - codes), axis=-1))
        above = press_mask(cond, tf.shape(pred)[1])[:, :, None, None, None]
        return tf.gather(codes8, tf.argmax(pred * (1.0 - above * tf.constant([1.0, 1.0, 1.0, 0.0])), axis=-1))

    return loss, decide


def _to_model(inputs):
    """(B, 3, z, y, x) -> (B, z, y, x, 3) uint8 codes."""
    return np.ascontiguousarray(np.moveaxis(inputs, 1, -1), dtype=np.uint8)


def train(series, out: Path, kind: str = "calbatch", config: dict | None = None, test_split: dict | None = None,
          val_fraction: float = 0.15, epochs: int = 20, batch_size: int = 2, lr: float = 1e-3, horizon: int = 2,
          crop: tuple[int, int] | None = (32, 32), noise: float = 0.01, patience: int = 4, seed: int = 0,
          resume: bool = False, max_windows: int | None = None, max_val_windows: int | None = None,
          vol_weight: float = 0.1, progress: bool | None = None) -> dict:
    """Train a ``kind`` model on the series files ``series`` into the run folder ``out``; returns
    the run summary (also in ``out/state.json``)."""
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    # grappler's remapper logs a harmless 'remapper failed' error on the periodic padding's gradient
    tf.config.optimizer.set_experimental_options({"remapping": False})
    out = Path(out)
    state_path = out / "state.json"
    if state_path.exists() and not resume:
        raise CalbatchError(f"{out}: holds a training run; pass --resume to continue it or choose another --out")
    infos = scan(series)
    parts = split(infos, test_split, val_fraction, seed)
    if not parts["train"]:
        raise CalbatchError("dataset: the split leaves no training series")
    vs = {s.voxel_size for s in parts["train"]}
    if len(vs) > 1:
        raise CalbatchError(f"dataset: series of different voxel sizes {sorted(vs)}")
    grid = parts["train"][0].shape
    if kind == "paper":
        crop = None  # a fixed-grid model: whole frames
    keras.utils.set_random_seed(seed)
    config = dict(config or {})
    if kind == "paper":
        config["grid"] = list(grid)
    model = build(kind, **config)
    vs = vs.pop()
    budget = fit_series_files([s.path for s in parts["train"]], vs)  # the plan the rollout will follow
    attach_budget(infos, budget)
    opt = keras.optimizers.Adam(lr)
    opt.build(model.trainable_variables)
    run = {"kind": kind, "config": config, "voxel_size_um": vs, "grid_zyx": list(grid),
           "cd_range": [min(s.cd for s in parts["train"]), max(s.cd for s in parts["train"])],
           "train": [s.path for s in parts["train"]], "val": [s.path for s in parts["val"]],
           "test": [s.path for s in parts["test"]], "schedule": _schedule_params(parts["train"][0].path),
           "horizon": horizon, "crop": list(crop) if crop else None, "noise": noise, "lr": lr,
           "batch_size": batch_size, "seed": seed, "vol_weight": vol_weight,
           "wall_overlap_voxels": WALL_OVERLAP_VOXELS, "phase_budget": budget}
    state = {"epoch": 0, "best_val": None, "bad_epochs": 0, "history": []}
    if resume and state_path.exists():
        state = json.loads(state_path.read_text())
        model.load_weights(out / "last.weights.h5")
        saved = np.load(out / "optimizer.npz")
        for i, v in enumerate(opt.variables):
            v.assign(saved[f"v{i}"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(run, indent=1))
    loss_fn, decide = _losses(kind, vol_weight)

    def unroll(x, cond, targets, training):
        total = 0.0
        for k in range(targets.shape[1]):
            pred = model([x, cond[:, k]], training=training)
            total += loss_fn(pred, targets[:, k], cond[:, k])
            x = tf.concat([x[..., 1:], tf.stop_gradient(decide(pred, cond[:, k]))[..., None]], axis=-1)
        return total / targets.shape[1]

    @tf.function(reduce_retracing=True)
    def train_step(x, cond, targets):
        with tf.GradientTape() as tape:
            loss = unroll(x, cond, targets, True)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function(reduce_retracing=True)
    def val_step(x, cond, targets):
        return unroll(x, cond, targets, False)

    rng = np.random.default_rng(seed + 1000 * state["epoch"])
    train_stream = WindowStream(parts["train"], horizon, crop, True, seed + state["epoch"], max_windows)
    show = sys.stderr.isatty() if progress is None else progress
    for epoch in range(state["epoch"], epochs):
        losses = []
        bar = tqdm(train_stream.batches(batch_size), total=train_stream.steps(batch_size), file=sys.stderr,
                   desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not show, leave=False)
        for x, c, y in bar:
            losses.append(float(train_step(_to_model(boundary_noise(x, noise, rng)), c, y)))
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        val = _validate(val_step, parts["val"], horizon, crop, batch_size, seed, max_val_windows)
        state["history"].append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": val})
        state["epoch"] = epoch + 1
        score = val if val is not None else float(np.mean(losses))
        model.save_weights(out / "last.weights.h5")
        np.savez(out / "optimizer.npz", **{f"v{i}": v.numpy() for i, v in enumerate(opt.variables)})
        if state["best_val"] is None or score < state["best_val"]:
            state["best_val"], state["bad_epochs"] = score, 0
            model.save_weights(out / "best.weights.h5")
        else:
            state["bad_epochs"] += 1
        atomic_text(state_path, json.dumps(state, indent=1))
        # one line an epoch even without a terminal (a log file then shows the progress)
        tqdm.write(f"epoch {epoch + 1}/{epochs}: train {np.mean(losses):.4f} val {val}", file=sys.stderr)
        if state["bad_epochs"] >= patience:
            break
    return {"out": str(out), "kind": kind, "params": int(model.count_params()), **state,
            "train_series": len(parts["train"]), "val_series": len(parts["val"]), "test_series": len(parts["test"])}


def _validate(step, infos, horizon, crop, batch_size, seed, max_windows) -> float | None:
    """Mean validation loss on fixed (seeded) crops, the same every epoch."""
    if not infos:
        return None
    stream = WindowStream(infos, horizon, crop, True, seed + 7, max_windows)
    losses = [float(step(_to_model(x), c, y)) for x, c, y in stream.batches(batch_size)]
    return float(np.mean(losses))


def _schedule_params(path: str) -> dict:
    from ..electrode.series import read_series

    a = read_series(Path(path), frames=False)["attrs"]
    return {k: float(a[k]) for k in ("press_speed_m_s", "frame_interval_us", "timestep_us") if k in a}


def load_trained(out: Path, which: str = "best"):
    """(model, run) of a run folder, with its ``best`` or ``last`` weights."""
    out = Path(out)
    try:
        run = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        raise CalbatchError(f"{out}: not a training run (no readable run.json)") from None
    weights = out / f"{which}.weights.h5"
    if not weights.exists():
        raise CalbatchError(f"{weights}: no such weights file")
    model = build(run["kind"], **run["config"])
    model.load_weights(weights)
    return model, run
