"""The layers of calbatch's frame models (:mod:`calbatch.model.networks`). Everything that runs on the full
grid is written for ONNX Runtime's CPU kernels as measured (benchmarks/bench_model.py): row gathers
instead of one-hot comparisons, no broadcasting along middle or last axes on the full grid (ONNX
Runtime runs those 4-5x slower than same-shape operations), no full-grid clamps."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from ..electrode.schedule import WALL_OVERLAP_VOXELS
from ..surrogate.contract import CLASS_CODES

EPS = 1e-4  # the floor of a class's warped share: the correction can still create it
N_COND = 7
IDX_CD, IDX_ZCUR, IDX_ZNEXT, IDX_PRESS, IDX_VS = 0, 1, 2, 3, 6


def _axis_shape(n, axis: int):
    return [n if k == axis else 1 for k in range(5)]


def upsample_axis(x, f: int, axis: int, size, linear: bool, periodic: bool):
    """Upsample cell values of (B, z, y, x, C) by ``f`` along ``axis`` to ``size`` voxels, nearest or
    linear (periodic, or extrapolated past the end cells: a linear field stays exact), by gathers
    along the axis: no stacking, tiling or cropping."""
    n = tf.shape(x)[axis]
    fine = tf.range(size)
    if not linear:
        return tf.gather(x, tf.minimum(fine // f, n - 1), axis=axis)
    u = (tf.cast(fine, tf.float32) + 0.5) / f - 0.5
    if periodic:
        lo = tf.floor(u)
        i0 = tf.cast(lo, tf.int32)
        i0, i1 = i0 % n, (i0 + 1) % n
    else:  # needs two cells at least
        i0 = tf.clip_by_value(tf.cast(tf.floor(u), tf.int32), 0, n - 2)
        lo, i1 = tf.cast(i0, tf.float32), i0 + 1
    w = tf.reshape(u - lo, _axis_shape(size, axis))
    x0, x1 = tf.gather(x, i0, axis=axis), tf.gather(x, i1, axis=axis)
    return x0 + w * (x1 - x0)


@keras.saving.register_keras_serializable("calbatch")
class PeriodicPad(layers.Layer):
    """Pad (B, z, y, x, C) by ``p``: periodically in y and x, with zeros in z."""

    def __init__(self, p: int = 1, **kw):
        super().__init__(**kw)
        self.p = p

    def call(self, x):
        p = self.p
        x = tf.concat([x[:, :, -p:], x, x[:, :, :p]], axis=2)
        x = tf.concat([x[:, :, :, -p:], x, x[:, :, :, :p]], axis=3)
        return tf.pad(x, [[0, 0], [p, p], [0, 0], [0, 0], [0, 0]])

    def get_config(self):
        return {**super().get_config(), "p": self.p}


@keras.saving.register_keras_serializable("calbatch")
class Encode(layers.Layer):
    """Phase codes (B, z, y, x, 3) -> the last frame's one-hot (B, z, y, x, 4) over
    :data:`CLASS_CODES`, and in ``f``-voxel cells (B, z/f, y/f, x/f, 8) the last frame's phase
    fractions and the AM and void fractions of the two frames before (their motion); z is padded
    up to a multiple of ``f`` with empty cells after pooling in x and y."""

    def __init__(self, f: int = 4, **kw):
        super().__init__(**kw)
        self.f = f

    def call(self, codes):
        f = self.f
        # one-hot rows by table look-up (code -> row; an ONNX Gather, cheaper there than Equal+Cast);
        # the last frame's rows carry EPS for absent classes, so log(scores) stays finite
        onehot = [[1.0 if CLASS_CODES[k] == c else 0.0 for k in range(4)] for c in range(5)]
        table = tf.constant(onehot) * (1.0 - EPS) + EPS
        # the two earlier frames' AM and void by one look-up of the code pair (5 x c0 + c1)
        past_table = tf.constant([[onehot[a][2], onehot[a][3], onehot[b][2], onehot[b][3]]
                                  for a in range(5) for b in range(5)])
        idx = tf.cast(codes, tf.int32)
        last = tf.gather(table, idx[..., 2])
        past = tf.gather(past_table, idx[..., 0] * 5 + idx[..., 1])
        s = tf.shape(codes)
        pz = (f - s[1] % f) % f

        def pool(x):
            x = tf.reshape(x, tf.stack([s[0] * s[1], s[2] // f, f, s[3] // f, f, 4]))
            x = tf.reshape(tf.reduce_mean(x, axis=[2, 4]), tf.stack([s[0], s[1], s[2] // f, s[3] // f, 4]))
            x = tf.pad(x, tf.stack([[0, 0], [0, pz], [0, 0], [0, 0], [0, 0]]))
            return tf.reduce_mean(tf.reshape(x, tf.stack([s[0], (s[1] + pz) // f, f, s[2] // f, s[3] // f, 4])), axis=2)

        return last, tf.concat([pool(last), pool(past)], axis=-1)

    def get_config(self):
        return {**super().get_config(), "f": self.f}


@keras.saving.register_keras_serializable("calbatch")
class Geometry(layers.Layer):
    """Geometry channels (B, z, 1, 1, 3) of ``stride``-voxel slices: the height over the uncalendered
    top, and the height less the planned top of the current and the target frame (all over h0)."""

    def __init__(self, stride: int = 1, **kw):
        super().__init__(**kw)
        self.stride = stride

    def call(self, ref, cond):
        return self.channels(ref, cond, self.stride)

    @staticmethod
    def channels(ref, cond, stride: int):
        iz = tf.cast(tf.range(tf.shape(ref)[1]), tf.float32)
        zc = (iz + 0.5) * float(stride)  # slice centres in fine-voxel units
        z = zc[None, :, None, None, None] * cond[:, None, None, None, IDX_VS:IDX_VS + 1]
        zcur = cond[:, None, None, None, IDX_ZCUR:IDX_ZCUR + 1]
        znext = cond[:, None, None, None, IDX_ZNEXT:IDX_ZNEXT + 1]
        return tf.concat([z, z - zcur, z - znext], axis=-1)

    def get_config(self):
        return {**super().get_config(), "stride": self.stride}


@keras.saving.register_keras_serializable("calbatch")
class CoarseInput(layers.Layer):
    """The coarse network's input: phase fractions, conditioning and geometry on the coarse grid."""

    def __init__(self, f: int = 4, **kw):
        super().__init__(**kw)
        self.f = f

    def call(self, cells, cond):
        ones = tf.ones_like(cells[..., :1])
        geometry = Geometry.channels(cells, cond, self.f)
        return tf.concat([cells, ones * cond[:, None, None, None, :], ones * geometry], axis=-1)

    def get_config(self):
        return {**super().get_config(), "f": self.f}


@keras.saving.register_keras_serializable("calbatch")
class Upsample(layers.Layer):
    """Coarse (B, z/f, y/f, x/f, C) -> the fine grid of ``ref``: ``linear`` (periodic in x and y,
    clamped in z) or nearest."""

    def __init__(self, f: int = 4, linear: bool = True, **kw):
        super().__init__(**kw)
        self.f, self.linear = f, linear

    def call(self, x, ref):
        s = tf.shape(ref)
        for axis in (3, 2, 1):
            x = upsample_axis(x, self.f, axis, s[axis], self.linear, axis != 1)
        return x

    def get_config(self):
        return {**super().get_config(), "f": self.f, "linear": self.linear}


def warp_padding(max_affine: float, max_residual: float) -> int:
    """Slices of padding below and above the grid that every warp source index stays within: the
    largest shift, plus the linear extrapolation over the end half-cells (x 1.75), plus 2."""
    return int(np.ceil(1.75 * (max_affine + max_residual))) + 2


@keras.saving.register_keras_serializable("calbatch")
class WarpSource(layers.Layer):
    """Per coarse cell, the z index (in the padded grid) each voxel's material comes from: the
    affine motion that keeps the collector fixed and moves the top from its planned height to the
    next (:mod:`calbatch.surrogate.budget`; squeeze while pressing, spring-back after; at most
    ``max_affine`` voxels a step) times a gate -- 1 while pressing, a learned share otherwise --
    plus the learned residual.
    Linear in z except for the learned parts, so upsampling it linearly keeps the squeeze exact, and
    the fine grid needs no per-slice (broadcast) arithmetic, which ONNX Runtime runs slowly."""

    def __init__(self, f: int = 4, max_affine: float = 6.0, padding: int = 0, **kw):
        super().__init__(**kw)
        self.f, self.max_affine, self.padding = f, max_affine, padding

    def call(self, motion, cond):
        residual, follow = motion[..., 0:1], motion[..., 1:2]
        ic = (tf.cast(tf.range(tf.shape(motion)[1]), tf.float32) + 0.5) * self.f - 0.5  # cell centres, fine index
        ic = ic[None, :, None, None, None]
        ratio = (cond[:, IDX_ZCUR] / cond[:, IDX_ZNEXT])[:, None, None, None, None]
        affine = tf.clip_by_value((ic + 0.5) * (1.0 - ratio), -self.max_affine, self.max_affine)
        press = cond[:, None, None, None, IDX_PRESS:IDX_PRESS + 1]
        d = affine * (press + (1.0 - press) * follow) + residual
        return ic + float(self.padding) - d  # out(z) = in(z - d)

    def get_config(self):
        return {**super().get_config(), "f": self.f, "max_affine": self.max_affine, "padding": self.padding}


@keras.saving.register_keras_serializable("calbatch")
class PressWarp(layers.Layer):
    """Move the last frame's one-hot (B, z, y, x, 4) along z: each voxel takes the linear
    interpolation of the two slices around its source index ``src`` (B, z, y, x, 1), an index into
    the grid padded by ``padding`` slices -- below by the bottom slice (the collector holds), above
    by void. Two row gathers; no clamping is needed (:func:`warp_padding`)."""

    def __init__(self, padding: int = 0, **kw):
        super().__init__(**kw)
        self.padding = padding

    def call(self, onehot, src):
        p = self.padding
        s = tf.shape(onehot)
        nz, ny, nx = s[1] + 2 * p, s[2], s[3]
        void = tf.ones_like(onehot[:, :1]) * tf.constant([EPS, EPS, EPS, 1.0 - 3 * EPS])
        padded = tf.concat([tf.repeat(onehot[:, :1], p, axis=1), onehot, tf.repeat(void, p, axis=1)], axis=1)
        z0 = tf.floor(src)
        w = src - z0
        z0 = tf.cast(z0[..., 0], tf.int32)
        flat = tf.reshape(padded, [-1, 4])
        b = tf.range(s[0])[:, None, None, None] * (nz * ny * nx)
        yx = tf.reshape(tf.range(ny * nx), tf.stack([1, 1, ny, nx]))
        i0 = b + z0 * (ny * nx) + yx
        g0 = tf.gather(flat, i0)
        g1 = tf.gather(flat, i0 + ny * nx)
        # w to 4 channels by a K=1 matrix product: ONNX Runtime broadcasts along the last axis 4x slower
        return g0 + tf.matmul(w, tf.ones([1, 4])) * (g1 - g0)

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}


@keras.saving.register_keras_serializable("calbatch")
class Scores(layers.Layer):
    """Class scores (unnormalised probabilities; their log are the logits) = warped x gain. The
    void above the press is known and not the model's to predict: training masks it in the loss
    (:func:`press_mask`), the rollout in its decision rule."""

    def call(self, warped, gain):
        return warped * gain


def press_mask(cond, nz):
    """(B, nz) 1.0 for the known-void slices of the target frame, else 0.0: those from
    :data:`calbatch.electrode.schedule.WALL_OVERLAP_VOXELS` slices past the first slice whose centre lies
    above the target's planned top (as :func:`calbatch.surrogate.rollout.void_from` past a height)."""
    vs = cond[:, IDX_VS:IDX_VS + 1]
    iz = tf.cast(tf.range(nz), tf.float32)[None, :]
    first_above = tf.floor(cond[:, IDX_ZNEXT:IDX_ZNEXT + 1] / vs - 0.5) + 1.0
    return tf.cast(iz >= first_above + WALL_OVERLAP_VOXELS, tf.float32)


@keras.saving.register_keras_serializable("calbatch")
class ToFloat(layers.Layer):
    """uint8 phase codes -> float32 (the paper-style model regresses the codes themselves)."""

    def call(self, x):
        return tf.cast(x, tf.float32)
