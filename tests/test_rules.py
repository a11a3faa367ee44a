"""The planned decision rules (``particles``, ``budget``) on hand-made frames: particles move whole
and keep their shape, the planned counts and top hold, the release lift opens gaps between particles
instead of stretching them."""

from __future__ import annotations

import numpy as np
import pytest

from calbatch.errors import CalbatchError
from calbatch.surrogate.rules import CLASS_CODES, decide, lift_particles, move_particles, solid_top, void_rule

NZ, NY, NX = 30, 12, 12


def spheres(centres, radius=2.5, code=2, frame=None, top=None) -> np.ndarray:
    """A frame of pore (void from ``top`` up) with balls of ``code`` at ``centres`` (z, y, x)."""
    f = np.zeros((NZ, NY, NX), np.uint8) if frame is None else frame.copy()
    z, y, x = np.meshgrid(np.arange(NZ), np.arange(NY), np.arange(NX), indexing="ij")
    for cz, cy, cx in centres:
        f[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= radius ** 2] = code
    if top is not None:
        f[top:] = 4
    return f


def scores_of(frame: np.ndarray) -> np.ndarray:
    """Class scores that say ``frame`` (one-hot, a floor on every class)."""
    return ((frame[..., None] == np.array(CLASS_CODES)).astype(np.float32) + np.float32(1e-3))


def counts_of(frame):
    return int(np.count_nonzero(frame == 2)), int(np.count_nonzero(frame == 1))


def test_particles_move_whole_by_the_shift_the_scores_favour():
    before = spheres([(8, 4, 4), (16, 8, 8)], code=2, frame=spheres([(12, 3, 9)], code=1), top=24)
    # the network says: the lower AM ball fell by 2 slices, the upper one by 3, the CBD ball by 1
    after = void_rule(spheres([(6, 4, 4), (13, 8, 8)], code=2, frame=spheres([(11, 3, 9)], code=1)))
    out = move_particles(scores_of(after), before, 24, counts_of(before))
    np.testing.assert_array_equal(out, after)
    # through the rule, with the planned top where the moved particles end (else the lift runs: below)
    top = solid_top(after)
    np.testing.assert_array_equal(decide(scores_of(after), before, "particles", top, counts_of(before)), after)


def test_particles_take_the_planned_counts_and_stay_below_the_planned_top():
    rng = np.random.default_rng(0)
    before = spheres([(z, y, x) for z, y, x in rng.integers([3, 0, 0], [20, NY, NX], size=(12, 3))], top=24)
    noisy = scores_of(before) * rng.uniform(0.5, 1.5, size=(*before.shape, 4)).astype(np.float32)
    am, cbd = counts_of(before)
    for counts, first_void in (((am - 40, 7), 20), ((am, 0), 24), ((am + 25, 3), 22)):
        for rule in ("particles", "budget"):
            out = decide(noisy, before, rule, first_void, counts)
            assert counts_of(out) == counts, (rule, counts)
            assert solid_top(out) <= first_void and set(np.unique(out)) <= {0, 1, 2, 4}
            assert (out[solid_top(out):] == 4).all() and not (out[:solid_top(out)] == 4).any()
    with pytest.raises(CalbatchError, match="particles: no \\(AM, CBD\\) counts"):
        decide(noisy, before, "particles", 24)


def test_release_lift_moves_particles_apart_without_stretching_them():
    before = spheres([(3, 6, 6), (9, 6, 6), (15, 6, 6)], radius=2.9, top=18)
    top = solid_top(before)
    lifted = lift_particles(before, top, 24)
    assert solid_top(lifted) in (23, 24)  # the top ball's centroid moved with the stretch
    assert counts_of(lifted) == counts_of(before)
    profile = lambda f: np.flatnonzero((f == 2).any(axis=(1, 2)))  # noqa: E731
    assert len(profile(lifted)) == len(profile(before))  # each ball as tall as before: gaps opened
    # the planned rules run the lift when the decided frame stops short of the planned top
    out = decide(scores_of(before), before, "particles", 24, counts_of(before))
    assert solid_top(out) == solid_top(lifted) and counts_of(out) == counts_of(before)


def test_touching_spheres_part_into_particles_and_thin_ones_stay_whole():
    from calbatch.surrogate.rules import particle_labels

    mask = spheres([(10, 6, 3), (10, 6, 9)], radius=3.1) == 2  # two balls sharing a neck
    mask |= spheres([(22, 3, 9)], radius=1.0) == 2  # a ball too thin to survive the erosion
    labels, n = particle_labels(mask, 2)
    sizes = sorted(np.bincount(labels[mask])[1:][np.bincount(labels[mask])[1:] > 0].tolist())
    assert len(sizes) == 3 and sizes[0] == int((spheres([(22, 3, 9)], radius=1.0) == 2).sum())
    assert min(sizes[1:]) > 0.45 * sum(sizes[1:])  # the two balls, split at their neck, one each
    whole, n_whole = particle_labels(mask)
    assert n_whole == 2 and (labels > 0).sum() == (whole > 0).sum() == mask.sum()
