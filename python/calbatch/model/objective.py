"""What training minimises, shared by ``calbatch train`` and the trials' score of ``calbatch tune``:
a kind's loss, the hard decision a rollout feeds back, the loss unrolled over a window's steps, and
its mean over fixed (seeded) validation windows.
"""

from __future__ import annotations

import numpy as np

from ..surrogate.contract import Kind
from ..surrogate.rules import CODE_TO_CLASS
from .dataset import WindowStream
from .networks import CLASS_CODES, press_mask

VALIDATION_SEED_OFFSET = 7  # validation windows are drawn with seed + this, apart from the training windows'


def losses(kind: str, vol_weight: float):
    """(loss, decide) of a model kind: ``loss(pred, target, cond)`` and ``decide(pred, cond)``, the
    hard codes of a prediction as the rollout feeds them back."""
    import tensorflow as tf

    lut = tf.constant(CODE_TO_CLASS.astype(np.int32))
    codes = tf.constant([float(c) for c in CLASS_CODES])
    codes8 = tf.constant(CLASS_CODES, tf.uint8)

    def loss(pred, target, cond):  # target uint8 codes (B, z, y, x); cond (B, 7)
        if not Kind.of(kind).scores:  # regressed codes
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

    def decide(pred, cond):
        if not Kind.of(kind).scores:
            return tf.gather(codes8, tf.argmin(tf.abs(pred[..., None] - codes), axis=-1))
        above = press_mask(cond, tf.shape(pred)[1])[:, :, None, None, None]
        return tf.gather(codes8, tf.argmax(pred * (1.0 - above * tf.constant([1.0, 1.0, 1.0, 0.0])), axis=-1))

    return loss, decide


def unrolled_loss(model, kind: str, vol_weight: float):
    """``f(x, cond, targets, training)``: the mean loss of ``model`` rolled over a window's steps,
    fed its own hard prediction (no gradient through it) after the first."""
    import tensorflow as tf

    loss_fn, decide = losses(kind, vol_weight)

    def unroll(x, cond, targets, training):
        total = 0.0
        for k in range(targets.shape[1]):
            pred = model([x, cond[:, k]], training=training)
            total += loss_fn(pred, targets[:, k], cond[:, k])
            x = tf.concat([x[..., 1:], tf.stop_gradient(decide(pred, cond[:, k]))[..., None]], axis=-1)
        return total / targets.shape[1]

    return unroll


def to_model(inputs: np.ndarray) -> np.ndarray:
    """Windows (B, 3, z, y, x) -> the network's input (B, z, y, x, 3), uint8 codes."""
    return np.ascontiguousarray(np.moveaxis(inputs, 1, -1), dtype=np.uint8)


def validation_loss(step, infos, horizon: int, crop, batch_size: int, seed: int, max_windows: int | None) -> float | None:
    """The mean of ``step(x, cond, targets)`` over the validation windows of ``infos``: the same
    seeded windows every epoch and every trial (None without validation series)."""
    if not infos:
        return None
    stream = WindowStream(infos, horizon, crop, True, seed + VALIDATION_SEED_OFFSET, max_windows)
    return float(np.mean([float(step(to_model(x), c, y)) for x, c, y in stream.batches(batch_size)]))
