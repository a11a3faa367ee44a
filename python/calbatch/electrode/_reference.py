"""Plain-numpy versions of the C++ kernels: the reference the tests and the kernel benchmark hold
the core to. Not used by calbatch itself (they are 10-100x slower)."""

from __future__ import annotations

import numpy as np

from .volume import CLASS_CODES


def census(volume: np.ndarray, periodic_xy: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """(histogram[256], faces[8, 8] symmetric, top solid slice or -1), like ``_core.census``."""
    histogram = np.bincount(volume.ravel(), minlength=256)
    faces = np.zeros((8, 8), dtype=np.int64)
    for axis in range(3):  # axis 0 = z (never periodic), 1 = y, 2 = x
        if axis == 0 or not periodic_xy:
            a = np.take(volume, np.arange(volume.shape[axis] - 1), axis=axis)
            b = np.take(volume, np.arange(1, volume.shape[axis]), axis=axis)
        else:
            a, b = volume, np.roll(volume, -1, axis=axis)
        differ = a != b
        pair = a[differ].astype(np.int64) * 8 + b[differ]
        faces += np.bincount(pair, minlength=64).reshape(8, 8)
    faces = faces + faces.T
    solid = np.flatnonzero(((volume == 1) | (volume == 2)).any(axis=(1, 2)))
    return histogram, faces, int(solid[-1]) if solid.size else -1


def error_sums(truth: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, int, int]:
    g = truth.astype(np.int64).ravel()
    d = g - pred.astype(np.int64).ravel()
    return g.size, int((d * d).sum()), int(np.abs(d).sum()), int(g.sum()), int((g * g).sum())


def voxelize_spheres(centers, radii, phases, box_xy, shape_zyx, voxel_size, z0=0.0) -> np.ndarray:
    """Brute force over spheres and their 9 periodic images; same rules as ``_core.voxelize_spheres``."""
    nz, ny, nx = shape_zyx
    z = z0 + (np.arange(nz) + 0.5) * voxel_size
    y = (np.arange(ny) + 0.5) * voxel_size
    x = (np.arange(nx) + 0.5) * voxel_size
    out = np.full(shape_zyx, 255, dtype=np.uint8)
    for (cx, cy, cz), r, ph in zip(centers, radii, phases):
        for sx in (-box_xy[0], 0.0, box_xy[0]):
            for sy in (-box_xy[1], 0.0, box_xy[1]):
                d2 = (z[:, None, None] - cz) ** 2 + (y[None, :, None] - cy - sy) ** 2 + (x[None, None, :] - cx - sx) ** 2
                covered = d2 <= r * r
                out[covered] = np.where(out[covered] == 255, ph, np.maximum(out[covered], ph))
    solid = np.flatnonzero(((out == 1) | (out == 2)).any(axis=(1, 2)))
    top = solid[-1] if solid.size else -1
    uncovered = out == 255
    below = (np.arange(nz) <= top)[:, None, None]
    out[uncovered & below] = 0
    out[uncovered & ~below] = 4
    return out


def fick_matrix(phases: np.ndarray, active: np.ndarray, diffusivity: np.ndarray):
    """The whole Fick matrix, face by face with scipy.sparse, and each unknown's Dirichlet
    conductances to the bottom and top faces: what ``_core.fick_rows`` builds slab by slab."""
    from scipy import sparse

    d = np.where(active, diffusivity[phases], 0.0)
    number = np.full(d.shape, -1, dtype=np.int64)
    number[active] = np.arange(np.count_nonzero(active))
    rows, cols, conductances = [], [], []
    for axis in range(3):  # z is not periodic, y and x are
        if axis == 0:
            da, db, na, nb = d[:-1], d[1:], number[:-1], number[1:]
        else:
            da, db = d, np.roll(d, -1, axis)
            na, nb = number, np.roll(number, -1, axis)
        face = (da > 0) & (db > 0)
        g = 2 * da[face] * db[face] / (da[face] + db[face])
        rows += [na[face], nb[face], na[face], nb[face]]
        cols += [nb[face], na[face], na[face], nb[face]]
        conductances += [-g, -g, g, g]
    n = number.max() + 1
    bottom_g, top_g = np.zeros(n), np.zeros(n)
    bottom_g[number[0][active[0]]] = 2 * d[0][active[0]]
    top_g[number[-1][active[-1]]] += 2 * d[-1][active[-1]]
    matrix = sparse.coo_matrix((np.concatenate(conductances), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return (matrix + sparse.diags(bottom_g + top_g)).tocsr(), bottom_g, top_g


# --- the rollout's decision rule (``_core.decide``; ``calbatch.surrogate.rules.decide`` calls the core) ---
# Float arithmetic is written out in the order the core does it, all in float32 and elementwise, so
# the two agree bit for bit: numpy does not promise an order for a reduction such as .sum(axis=1).



def decision_probabilities(below: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p(AM), p(CBD) of voxels' class scores (n, 4) float32: score / max(((s0 + s1) + s2) + s3, 1e-30)."""
    with np.errstate(all="ignore"):  # overflow, 0/0, inf/inf: IEEE results, as in the core
        total = ((below[:, 0] + below[:, 1]) + below[:, 2]) + below[:, 3]
        total = np.maximum(total, np.float32(1e-30))
        return below[:, 2] / total, below[:, 1] / total


def expected_counts(below: np.ndarray) -> tuple[int, int]:
    """The AM and CBD voxel counts the model expects: its probabilities summed (float64), rounded."""
    p_am, p_cbd = decision_probabilities(below)
    with np.errstate(all="ignore"):  # a sum that is not finite fails to round (ValueError, OverflowError)
        sums = float(p_am.sum(dtype=np.float64)), float(p_cbd.sum(dtype=np.float64))
    return int(round(sums[0])), int(round(sums[1]))


def top_k(score: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` highest of ``score`` (flat), ties broken by index."""
    n = score.size
    k = int(min(max(k, 0), n))
    if k == 0:
        return np.zeros(n, dtype=bool)
    thr = np.partition(score, n - k)[n - k]
    out = score > thr
    need = k - int(np.count_nonzero(out))
    if need > 0:
        out[np.flatnonzero(score == thr)[:need]] = True
    return out


def void_rule(codes: np.ndarray) -> np.ndarray:
    """Above the highest slice holding AM or CBD void, elsewhere every non-solid voxel pore."""
    solid = (codes == 2) | (codes == 1)
    rows = np.flatnonzero(solid.any(axis=(1, 2)))
    top = rows[-1] if rows.size else -1
    out = np.where(solid, codes, 0).astype(np.uint8)
    out[top + 1:] = 4
    return out


def decide(scores: np.ndarray, previous: np.ndarray, rule: str, first_void: int) -> np.ndarray:
    """Codes (nz, ny, nx) from class scores (nz, ny, nx, 4) by ``rule``, as ``calbatch.surrogate.rules.decide``
    (which calls ``_core.decide``): ``argmax``; ``conserve`` (``previous``'s AM and CBD counts) or
    ``expected`` (:func:`expected_counts`) given to the voxels most probably AM, then CBD among the
    rest, ties by voxel index; slices from ``first_void`` up void; then the void rule."""
    nz = scores.shape[0]
    fv = int(min(max(first_void, 0), nz))
    below = np.asarray(scores[:fv], dtype=np.float32).reshape(-1, 4)  # the slices solids may take
    codes = np.full(scores.shape[:3], 4, dtype=np.uint8)
    if rule == "argmax":
        codes[:fv] = CLASS_CODES[np.argmax(below, axis=-1)].reshape(fv, *scores.shape[1:3])
        return void_rule(codes)
    if rule == "conserve":
        n_am, n_cbd = int(np.count_nonzero(previous == 2)), int(np.count_nonzero(previous == 1))
    else:
        n_am, n_cbd = expected_counts(below)
    p_am, p_cbd = decision_probabilities(below)
    am = top_k(p_am, n_am)
    p_cbd[am] = -1.0  # AM first, then CBD among the rest
    cbd = top_k(p_cbd, n_cbd)
    flat = np.zeros(below.shape[0], dtype=np.uint8)
    flat[am], flat[cbd] = 2, 1
    codes[:fv] = flat.reshape(fv, *scores.shape[1:3])
    return void_rule(codes)
