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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..electrode.schedule import WALL_OVERLAP_VOXELS
from ..electrode.series import atomic_text
from ..errors import CalbatchError
from ..surrogate.budget import fit_series_files
from ..surrogate.contract import Kind, schedule_params
from .dataset import WindowStream, attach_budget, parse_split, scan, split
from .networks import build
from .objective import to_model, unrolled_loss, validation_loss
from .options import TrainOptions


def boundary_noise(inputs: np.ndarray, fraction: float, rng) -> np.ndarray:
    """Replace a random ``fraction`` of the input voxels by their upper or lower neighbour's code:
    the kind of error a rollout makes at particle boundaries."""
    if fraction <= 0:
        return inputs
    flip = rng.random(inputs.shape) < fraction
    shifted = np.where(rng.random(inputs.shape) < 0.5, np.roll(inputs, 1, axis=-3), np.roll(inputs, -1, axis=-3))
    return np.where(flip, shifted, inputs)


@dataclass
class TrainingRun:
    """A training run set up: its folder, options, data split, network, optimizer and the contents
    of its run.json."""
    out: Path
    options: TrainOptions
    parts: dict
    model: object
    optimizer: object
    run: dict


def train(series, out: Path, options: TrainOptions | None = None, resume: bool = False,
          progress: bool | None = None) -> dict:
    """Train a model (``options.kind``, default :class:`TrainOptions`) on the series files ``series``
    into the run folder ``out`` (``resume``: continue the run there); returns the run summary (also
    in ``out/state.json``)."""
    import tensorflow as tf

    # grappler's remapper logs a harmless 'remapper failed' error on the periodic padding's gradient
    tf.config.optimizer.set_experimental_options({"remapping": False})
    training = set_up(series, Path(out), options or TrainOptions(), resume)
    state = restore(training) if resume and (training.out / "state.json").exists() else \
        {"epoch": 0, "best_val": None, "bad_epochs": 0, "history": []}
    training.out.mkdir(parents=True, exist_ok=True)
    (training.out / "run.json").write_text(json.dumps(training.run, indent=1))
    return run_epochs(training, state, progress)


def set_up(series, out: Path, options: TrainOptions, resume: bool) -> TrainingRun:
    """Check the run folder, split the data, fit the phase budget on the training series and build
    the network and its optimizer (seeded)."""
    import keras

    if (out / "state.json").exists() and not resume:
        raise CalbatchError(f"{out}: holds a training run; pass --resume to continue it or choose another --out")
    infos = scan(series)
    parts = split(infos, parse_split(options.test_split) if options.test_split else None, options.val_fraction,
                  options.seed)
    if not parts["train"]:
        raise CalbatchError("dataset: the split leaves no training series")
    vs = {s.voxel_size for s in parts["train"]}
    if len(vs) > 1:
        raise CalbatchError(f"dataset: series of different voxel sizes {sorted(vs)}")
    vs = vs.pop()
    grid = parts["train"][0].shape
    config = dict(options.network)
    if Kind.of(options.kind).fixed_grid:  # whole frames
        options, config["grid"] = replace(options, crop=None), list(grid)
    keras.utils.set_random_seed(options.seed)
    model = build(options.kind, **config)
    budget = fit_series_files([s.path for s in parts["train"]], vs)  # the plan the rollout will follow
    attach_budget(infos, budget)
    optimizer = keras.optimizers.Adam(options.lr)
    optimizer.build(model.trainable_variables)
    o = options
    run = {"kind": o.kind, "config": config, "voxel_size_um": vs, "grid_zyx": list(grid),
           "cd_range": [min(s.cd for s in parts["train"]), max(s.cd for s in parts["train"])],
           "train": [s.path for s in parts["train"]], "val": [s.path for s in parts["val"]],
           "test": [s.path for s in parts["test"]], "schedule": _schedule_params(parts["train"][0].path),
           "horizon": o.horizon, "crop": list(o.crop) if o.crop else None, "noise": o.noise, "lr": o.lr,
           "batch_size": o.batch_size, "seed": o.seed, "vol_weight": o.vol_weight,
           "wall_overlap_voxels": WALL_OVERLAP_VOXELS, "phase_budget": budget}
    return TrainingRun(out, options, parts, model, optimizer, run)


def restore(training: TrainingRun) -> dict:
    """The state of an interrupted run, with its last weights and optimizer state loaded."""
    state = json.loads((training.out / "state.json").read_text())
    training.model.load_weights(training.out / "last.weights.h5")
    saved = np.load(training.out / "optimizer.npz")
    for i, v in enumerate(training.optimizer.variables):
        v.assign(saved[f"v{i}"])
    return state


def run_epochs(training: TrainingRun, state: dict, progress: bool | None = None) -> dict:
    """The epochs from ``state`` on: train, validate, checkpoint (last, best, optimizer, state),
    stop early after ``patience`` epochs without gain."""
    import tensorflow as tf
    from tqdm import tqdm

    o, out, model, opt, parts = training.options, training.out, training.model, training.optimizer, training.parts
    unroll = unrolled_loss(model, o.kind, o.vol_weight)

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

    rng = np.random.default_rng(o.seed + 1000 * state["epoch"])
    train_stream = WindowStream(parts["train"], o.horizon, o.crop, True, o.seed + state["epoch"], o.max_windows)
    show = sys.stderr.isatty() if progress is None else progress
    for epoch in range(state["epoch"], o.epochs):
        losses = []
        bar = tqdm(train_stream.batches(o.batch_size), total=train_stream.steps(o.batch_size), file=sys.stderr,
                   desc=f"epoch {epoch + 1}/{o.epochs}", unit="batch", disable=not show, leave=False)
        for x, c, y in bar:
            losses.append(float(train_step(to_model(boundary_noise(x, o.noise, rng)), c, y)))
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        val = validation_loss(val_step, parts["val"], o.horizon, o.crop, o.batch_size, o.seed, o.max_val_windows)
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
        atomic_text(out / "state.json", json.dumps(state, indent=1))
        # one line an epoch even without a terminal (a log file then shows the progress)
        tqdm.write(f"epoch {epoch + 1}/{o.epochs}: train {np.mean(losses):.4f} val {val}", file=sys.stderr)
        if state["bad_epochs"] >= o.patience:
            break
    return {"out": str(out), "kind": o.kind, "params": int(model.count_params()), **state,
            "train_series": len(parts["train"]), "val_series": len(parts["val"]), "test_series": len(parts["test"])}


def _schedule_params(path: str) -> dict:
    from ..electrode.series import read_series

    return schedule_params(read_series(Path(path), frames=False)["attrs"])


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
