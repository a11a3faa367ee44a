"""The frame models, in Keras (TensorFlow backend). Both take the same inputs, so training, export
and rollout treat them alike:

- ``frames`` uint8 (B, nz, ny, nx, 3): the phase codes (0 pore, 1 CBD, 2 AM, 4 void) of the
  three past frames, oldest first;
- ``cond`` float32 (B, 7): the step's conditioning, :data:`calbatch.model.dataset.COND_NAMES`.

``calbatch`` (:func:`build_calbatch`) outputs per-voxel class scores (unnormalised probabilities)
over (pore, CBD, AM, void);
``paper`` (:func:`build_paper`) regresses the codes themselves, as the paper did.
"""

from __future__ import annotations

import keras
from keras import layers

from .layers import (
    CLASS_CODES,
    EPS,
    IDX_CD,
    N_COND,
    CoarseInput,
    Encode,
    Geometry,
    PeriodicPad,
    PressWarp,
    Scores,
    ToFloat,
    Upsample,
    WarpSource,
    press_mask,
    warp_padding,
)

__all__ = ["CLASS_CODES", "EPS", "N_COND", "build", "build_calbatch", "build_paper", "press_mask"]

def build_calbatch(channels: int, layers_coarse: int, factor: int, hidden: int, max_residual: float,
                   max_affine: float) -> keras.Model:
    """calbatch's frame model (outputs class scores over :data:`CLASS_CODES`, unnormalised
    probabilities: log(scores) are the logits, :class:`Scores`): a small periodic 3-D CNN
    on cells of ``factor``^3 voxels sees the three frames' phase fractions, the conditioning and the
    geometry and predicts (a) the motion along z: the share of the affine motion between the
    planned tops (:mod:`calbatch.surrogate.budget`) the material follows after the press lifts (spring-back;
    1 while pressing) and a residual displacement (at most ``max_residual`` voxels), interpolated linearly to the voxels, which move
    the last frame (:class:`PressWarp`); (b) a correction (a gain) of the warped phases: per cell (``hidden``
    0, the default) or by a per-voxel layer of ``hidden`` units over the warped phases and the cell's
    features. Full-resolution work is gathers and a few elementwise ops (plus two tiny matrix
    products with ``hidden``). Any grid whose x and y are multiples of ``factor``."""
    frames = keras.Input((None, None, None, 3), dtype="uint8", name="frames")
    cond = keras.Input((N_COND,), name="cond")
    last, cells = Encode(factor, name="encode")(frames)
    h = CoarseInput(factor)(cells, cond)
    for i in range(layers_coarse):
        h = layers.Conv3D(channels, 3, activation="relu", name=f"coarse{i}")(PeriodicPad(1)(h))
    residual = layers.Conv3D(1, 1, activation="tanh", kernel_initializer="zeros", name="residual")(h)
    follow = layers.Conv3D(1, 1, activation="sigmoid", kernel_initializer="zeros",
                           bias_initializer=keras.initializers.Constant(2.0), name="follow")(h)
    motion = layers.Concatenate()([layers.Rescaling(max_residual)(residual), follow])
    pad = warp_padding(max_affine, max_residual)
    src = Upsample(factor, True)(WarpSource(factor, max_affine, pad, name="source")(motion, cond), last)
    warped = PressWarp(pad, name="warp")(last, src)
    if hidden:
        geometry = Geometry(1)(last, cond)
        hid = layers.Add()([layers.Dense(hidden, name="fine_warped")(warped),
                            Upsample(factor, False)(layers.Dense(hidden, name="fine_coarse")(h), last),
                            layers.Dense(hidden, use_bias=False, name="fine_geometry")(geometry)])
        gain = layers.Dense(4, kernel_initializer="zeros", activation="exponential", name="fine_out")(layers.ReLU()(hid))
    else:
        gain = layers.Conv3D(4, 1, kernel_initializer="zeros", activation="exponential", name="cell_correction")(h)
        gain = Upsample(factor, False)(gain, last)
    scores = Scores(name="scores")(warped, gain)
    return keras.Model([frames, cond], scores, name="calbatch")


def build_paper(grid: tuple[int, int, int], filters: int, dense: int, dropout: float) -> keras.Model:
    """The paper's Model D on a fixed ``grid`` (nz, ny, nx): the three frames as a length-3 sequence
    whose channels are the voxels; 3 x [Conv1D(filters, 3, same) + batch norm + ReLU + max-pool(1)],
    dropout 0.2 on the third, flatten, Dense(dense, ReLU) and a linear Dense over every voxel; MSE on
    the raw codes, Adam. Deviations, for this machine and our data:

    - ``filters`` 16 instead of 256 (the first convolution alone has 3 x voxels x filters weights:
      554 M at 256 on 76x76x125, about 6.6 GB with Adam's state; 16 gives 35 M);
    - the CD enters by concatenation to the flattened features (its placement is not stated);
    - inputs and outputs use the same (B, nz, ny, nx, 3) / (B, nz, ny, nx) layout as calbatch's model;
      the other conditioning (press positions, stage) is ignored, as the paper had none;
    - ReLU after each batch norm (the paper names ReLU without its position).
    """
    nz, ny, nx = (int(n) for n in grid)
    nvox = nz * ny * nx
    frames = keras.Input((nz, ny, nx, 3), dtype="uint8", name="frames")
    cond = keras.Input((N_COND,), name="cond")
    x = layers.Permute((2, 1))(layers.Reshape((nvox, 3))(ToFloat()(frames)))  # (B, 3, voxels)
    for i in range(3):
        x = layers.Conv1D(filters, 3, padding="same", name=f"conv{i}")(x)
        x = layers.ReLU()(layers.BatchNormalization(name=f"bn{i}")(x))
        x = layers.MaxPooling1D(1)(x)
        if i == 2:
            x = layers.Dropout(dropout)(x)
    x = layers.Concatenate()([layers.Flatten()(x), cond[:, IDX_CD:IDX_CD + 1]])
    x = layers.Dense(dense, activation="relu", name="dense0")(x)
    x = layers.Dense(nvox, name="dense1")(x)
    codes = layers.Reshape((nz, ny, nx), name="codes")(x)
    return keras.Model([frames, cond], codes, name="paper")


def build(kind: str, **config) -> keras.Model:
    """A model by kind (``calbatch`` or ``paper``) and its hyper-parameters (the fields of the
    kind's :data:`calbatch.model.options.NETWORKS` entry; missing ones take their defaults)."""
    from dataclasses import asdict

    from ..surrogate.contract import Kind
    from .options import NETWORKS

    kind = Kind.of(kind)
    network = asdict(NETWORKS[kind.value](**config))
    return (build_calbatch if kind is Kind.CALBATCH else build_paper)(**network)
