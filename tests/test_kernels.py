"""The C++ kernels against plain numpy and against cases with a known answer."""

import math

import numpy as np
import pytest

from calbatch import _core
from calbatch.electrode import _reference
from calbatch.electrode.metrics import compare, measure
from calbatch.electrode.voxelize import voxelize_spheres
from calbatch.transport import unknown_offsets
from conftest import random_volume


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("periodic", [True, False])
def test_census_matches_numpy(seed, periodic):
    vol = random_volume(shape=(24, 17, 19), seed=seed)
    hist, faces, top = _core.census(vol, periodic)
    ref_hist, ref_faces, ref_top = _reference.census(vol, periodic)
    np.testing.assert_array_equal(hist, ref_hist)
    np.testing.assert_array_equal(faces, ref_faces)
    assert top == ref_top == 19


def test_census_threaded_path_matches_numpy():
    # 2^22 voxels: large enough for the kernels to run on all OpenMP threads.
    vol = random_volume(shape=(64, 256, 256), seed=7)
    for got, want in zip(_core.census(vol, True), _reference.census(vol, True)):
        np.testing.assert_array_equal(got, want)
    other = random_volume(shape=(64, 256, 256), seed=8)
    assert _core.error_sums(vol, other) == _reference.error_sums(vol, other)


def test_cube_in_box_has_600_contact_faces():
    vol = np.zeros((20, 20, 20), dtype=np.uint8)
    vol[5:15, 5:15, 5:15] = 2
    result = measure(vol, voxel_size=0.5)
    assert result["contact_area_voxel2"]["pore-AM"] == 600
    assert result["contact_area_um2"]["pore-AM"] == pytest.approx(150.0)
    assert result["counts"]["AM"] == 1000
    assert result["porosity"] == pytest.approx(1 - 1000 / 8000)
    assert result["thickness_voxels"] == 15


def test_periodic_wrap_counts_faces_across_x_and_y():
    # A slab of AM filling x in [0, 4) of a 10-wide box: periodic, it has two x-faces per row
    # (one at x=4, one across the wrap at x=0|9); without wrap only one.
    vol = np.zeros((3, 6, 10), dtype=np.uint8)
    vol[:, :, 0:4] = 2
    rows = 3 * 6
    assert _core.census(vol, True)[1][0, 2] == 2 * rows
    assert _core.census(vol, False)[1][0, 2] == rows
    # Same along y.
    vol_y = np.ascontiguousarray(vol.transpose(0, 2, 1))
    assert _core.census(vol_y, True)[1][0, 2] == 2 * rows
    # z never wraps: AM in the bottom slice only touches pore above it.
    vol_z = np.zeros((5, 4, 4), dtype=np.uint8)
    vol_z[0] = 2
    assert _core.census(vol_z, True)[1][0, 2] == 16


def test_thickness_and_porosity_ignore_void():
    vol = np.full((10, 4, 4), 4, dtype=np.uint8)
    vol[:6] = 0
    vol[:3] = 2
    vol[5, 0, 0] = 1
    result = measure(vol)
    assert result["thickness_voxels"] == 6
    assert result["thickness_um"] == pytest.approx(2.4)
    assert result["porosity"] == pytest.approx((3 * 16 - 1) / (6 * 16))
    assert result["fractions"]["void"] == pytest.approx(64 / 160)
    assert measure(np.zeros((3, 3, 3), np.uint8))["thickness_voxels"] == 0


def test_error_metrics_match_numpy():
    truth, pred = random_volume(seed=3), random_volume(seed=4)
    n, sse, sae, s1, s2 = _core.error_sums(truth, pred)
    assert (n, sse, sae, s1, s2) == _reference.error_sums(truth, pred)
    g, p = truth.astype(float), pred.astype(float)
    result = compare(truth, pred)
    assert result["mse"] == pytest.approx(np.mean((g - p) ** 2))
    assert result["mae"] == pytest.approx(np.mean(np.abs(g - p)))
    assert result["r2"] == pytest.approx(1 - ((g - p) ** 2).sum() / ((g - g.mean()) ** 2).sum())


def test_r2_of_a_volume_with_itself_is_one():
    vol = random_volume(seed=5)
    assert compare(vol, vol) == {"mse": 0.0, "mae": 0.0, "r2": 1.0}


def _random_spheres(seed, n=40, box=(6.0, 5.2), height=6.0):
    rng = np.random.default_rng(seed)
    radii = rng.uniform(0.3, 1.4, n)
    centers = np.column_stack([rng.uniform(0, box[0], n), rng.uniform(0, box[1], n), rng.uniform(0, height, n)])
    phases = rng.choice(np.array([1, 2], np.uint8), n)
    return centers, radii, phases


@pytest.mark.parametrize("seed", [0, 1])
def test_voxelize_matches_numpy(seed):
    centers, radii, phases = _random_spheres(seed)
    args = (centers, radii, phases, (6.0, 5.2), (20, 13, 15), 0.4)
    np.testing.assert_array_equal(voxelize_spheres(*args), _reference.voxelize_spheres(*args))


def test_voxelize_am_wins_over_cbd_and_wraps_periodically():
    # Two overlapping spheres at the x boundary: the AM one must win, and both reach across x = 0.
    centers = np.array([[0.1, 2.0, 2.1], [0.5, 2.0, 2.1]])
    vol = voxelize_spheres(centers, [1.0, 1.0], [2, 1], (4.0, 4.0), (10, 10, 10), 0.4)
    assert vol[5, 5, 0] == 2  # both cover this voxel; AM wins
    assert vol[5, 5, 9] == 2  # the AM sphere's image across the periodic x boundary
    assert vol[5, 5, 3] == 1  # only the CBD sphere reaches here
    # The top solid slice is z = 7 (centre 3.0 um <= 2.1 + 1.0): void above it, none at or below.
    assert (vol[8:] == 4).all() and (vol[:8] != 4).all()


def test_sphere_voxel_volume_converges():
    r, errors = 2.0, []
    for v in (0.4, 0.2, 0.1):
        n = int(round(6.0 / v))
        vol = voxelize_spheres([[3.0, 3.0, 3.0]], [r], [2], (6.0, 6.0), (n, n, n), v)
        errors.append(abs((vol == 2).sum() * v**3 / (4 / 3 * math.pi * r**3) - 1))
    assert errors[-1] < 0.005
    assert errors[0] > errors[-1]


@pytest.mark.parametrize("shape", [(9, 7, 6), (8, 2, 5), (6, 1, 1), (7, 3, 2)], ids=["odd", "ny2", "column", "nx2"])
@pytest.mark.parametrize("slabs", [1, 3])
def test_fick_rows_match_the_face_by_face_matrix(shape, slabs):
    rng = np.random.default_rng(sum(shape) + slabs)
    phases = rng.choice(np.array([0, 1, 2, 4], np.uint8), size=shape, p=[0.45, 0.15, 0.3, 0.1])
    diffusivity = np.zeros(256)
    diffusivity[[0, 4]], diffusivity[1] = 1.0, 0.3
    active = (diffusivity[phases] > 0) & (rng.random(shape) < 0.9)  # some conducting voxels dropped
    matrix, bottom_g, top_g = _reference.fick_matrix(phases, active, diffusivity)
    offsets = unknown_offsets(active)
    cuts = np.linspace(0, shape[0], slabs + 1).astype(int)
    for z0, z1, index64 in zip(cuts[:-1], cuts[1:], [False, True, False]):
        own, other, bottom, top = _core.fick_rows(phases, active.view(np.uint8), diffusivity, offsets, z0, z1, index64)
        first, rows = offsets[z0], slice(offsets[z0], offsets[z1])
        got = np.zeros((rows.stop - rows.start, matrix.shape[1]))
        for (indptr, columns, values), shift in ((own, first), (other, 0)):  # own columns count from `first`
            assert columns.dtype == (np.int64 if index64 else np.int32)
            assert all(np.all(np.diff(columns[a:b]) > 0) for a, b in zip(indptr[:-1], indptr[1:]))  # sorted, no repeats
            np.add.at(got, (np.repeat(np.arange(len(indptr) - 1), np.diff(indptr)), columns + shift), values)
        assert np.all((other[1] < offsets[z0]) | (other[1] >= offsets[z1]))  # other ranks' columns only
        np.testing.assert_allclose(got, matrix[rows].toarray(), rtol=1e-14, atol=1e-14)
        np.testing.assert_array_equal(bottom, bottom_g[rows])
        np.testing.assert_array_equal(top, top_g[rows])


# --- the rollout's decision rule: _core.decide (through rollout.decide) against _reference.decide ---

RULES = ("argmax", "conserve", "expected")


def _scores(kind: str, shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = rng.random((*shape, 4), dtype=np.float32)
    if kind == "quantised":  # a few values: many exact ties in the scores and the probabilities
        s = np.round(s * 3).astype(np.float32) / np.float32(3)
    elif kind == "two-values":
        s = rng.integers(0, 2, s.shape).astype(np.float32)
    elif kind == "wide":  # magnitudes over many octaves, zero totals, negatives and -0
        s = (rng.standard_normal(s.shape) * 10.0 ** rng.integers(-30, 30, s.shape)).astype(np.float32)
        s[rng.random(s.shape) < 0.1] = 0.0
        s[rng.random(s.shape) < 0.05] = -0.0
    return s


def _previous(shape, seed: int, p=(0.4, 0.1, 0.5)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([0, 1, 2], np.uint8), size=shape, p=p)


def _assert_rule_matches(scores, previous, rule, first_void):
    from calbatch.surrogate.rules import decide

    fv = scores.shape[0] if first_void is None else first_void
    try:
        want = _reference.decide(scores, previous, rule, fv)
    except (ValueError, OverflowError) as e:  # `expected` cannot round a sum that is not finite
        with pytest.raises(type(e)):
            decide(scores, previous, rule, first_void)
        return None
    got = decide(scores, previous, rule, first_void)
    assert got.dtype == np.uint8 and got.shape == scores.shape[:3]
    np.testing.assert_array_equal(got, want)
    return got


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("kind", ["random", "quantised", "two-values", "wide"])
@pytest.mark.parametrize("seed", [0, 1])
def test_decide_matches_numpy(rule, kind, seed):
    shape = (13, 9, 11)
    scores, previous = _scores(kind, shape, seed), _previous(shape, seed + 10)
    for first_void in (0, 1, 6, 12, 13, None, -3, 20):
        got = _assert_rule_matches(scores, previous, rule, first_void)
        if got is None:
            assert kind == "wide" and rule == "expected"
            continue
        fv = min(max(13 if first_void is None else first_void, 0), 13)
        assert (got[fv:] == 4).all()
        solid = np.flatnonzero(((got == 1) | (got == 2)).any(axis=(1, 2)))
        top = solid[-1] if solid.size else -1
        assert (got[top + 1:] == 4).all() and not (got[:top + 1] == 4).any()  # the void rule
        if rule == "conserve" and fv == 13:
            assert np.count_nonzero(got == 2) == np.count_nonzero(previous == 2)
            assert np.count_nonzero(got == 1) == np.count_nonzero(previous == 1)


@pytest.mark.parametrize("rule", ["conserve", "expected"])
def test_decide_ties_take_the_lowest_index(rule):
    scores = np.zeros((2, 3, 4, 4), np.float32)
    scores[..., 2] = scores[..., 1] = scores[..., 0] = 1.0  # every voxel p(AM) = p(CBD) = 1/3
    previous = np.zeros((2, 3, 4), np.uint8)
    previous.flat[:8], previous.flat[8:12] = 2, 1  # 8 AM (1/3 of 24 as the model expects), 4 CBD
    got = _assert_rule_matches(scores, previous, rule, None).ravel()
    assert (got[:8] == 2).all()
    assert (got[8:12] == 1).all() if rule == "conserve" else (got[8:16] == 1).all()


@pytest.mark.parametrize("kind", ["random", "quantised"])
@pytest.mark.parametrize("counts", ["none", "no-cbd", "too-many-am", "too-many-cbd", "too-many-both"])
def test_decide_counts_zero_or_beyond_the_allowed_voxels(kind, counts):
    shape = (10, 6, 7)
    p = {"none": (1.0, 0, 0), "no-cbd": (0.5, 0, 0.5), "too-many-am": (0, 0, 1.0), "too-many-cbd": (0.1, 0.8, 0.1),
         "too-many-both": (0, 0.5, 0.5)}[counts]
    scores, previous = _scores(kind, shape, 5), _previous(shape, 6, p)
    for first_void in (0, 3, 5, 10):  # fewer allowed voxels (first_void x 42) than previous holds solids
        got = _assert_rule_matches(scores, previous, "conserve", first_void)
        if counts == "none":
            assert not ((got == 1) | (got == 2)).any()


def test_decide_nan_and_inf_scores_as_numpy():
    shape = (12, 8, 9)
    scores, previous = _scores("random", shape, 7), _previous(shape, 8, (0.8, 0.05, 0.15))
    rng = np.random.default_rng(9)
    scores[rng.random(scores.shape) < 0.05] = np.inf
    scores[rng.random(scores.shape) < 0.3] = np.nan  # more NaN voxels than AM to place: a NaN threshold
    for rule in ("argmax", "conserve"):  # `expected` cannot round a NaN sum, in numpy or here
        for first_void in (0, 7, 12):
            _assert_rule_matches(scores, previous, rule, first_void)


def test_decide_threaded_path_matches_numpy():
    # 2^22 voxels: the per-voxel passes run on all OpenMP threads.
    shape = (64, 256, 256)
    scores, previous = _scores("quantised", shape, 11), _previous(shape, 12)
    for rule in ("argmax", "conserve"):
        _assert_rule_matches(scores, previous, rule, 50)


def test_decide_in_place_and_bad_arguments():
    from calbatch.errors import CalbatchError
    from calbatch.surrogate.rules import decide

    scores = _scores("random", (6, 5, 4), 13)
    previous = np.zeros((6, 5, 4), np.uint8)
    previous.flat[:30], previous.flat[30:40] = 2, 1
    out = np.full((6, 5, 4), 9, np.uint8)
    assert _core.decide(scores, 4, (30, 10), out) is out  # written in place
    np.testing.assert_array_equal(out, _reference.decide(scores, previous, "conserve", 4))
    np.testing.assert_array_equal(out, _core.decide(scores, 4, (30, 10)))
    for bad in (np.zeros((6, 5, 4), np.int8), np.zeros((6, 5, 5), np.uint8), np.zeros((6, 4, 5), np.uint8).transpose(0, 2, 1),
                np.zeros(120, np.uint8), [[0]]):
        with pytest.raises(ValueError, match="out must be"):
            _core.decide(scores, 4, None, bad)
    with pytest.raises(ValueError, match="scores must have shape"):
        _core.decide(scores[..., :3].copy(), 4, None)
    with pytest.raises(ValueError, match="counts must be"):
        _core.decide(scores, 4, (1, 2, 3))
    with pytest.raises(CalbatchError, match="unknown rule 'median'"):
        decide(scores, previous, "median")
    with pytest.raises(CalbatchError, match="expected shape"):
        decide(scores[0], previous)
