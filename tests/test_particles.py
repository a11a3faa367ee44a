"""The particle state: neighbour pairs against a brute-force search, the sphere decomposition of
spheres the core voxelized, the overlap projection, and bad inputs as one-line errors."""

from dataclasses import replace

import h5py
import numpy as np
import pytest

from calbatch import CalbatchError
from calbatch.electrode.particles import (
    checked,
    decompose,
    fidelity_line,
    neighbours,
    neighbours_batch,
    overlaps,
    particles_of,
    project,
    project_batch,
)
from calbatch.electrode.series import PACK_FORMAT, SERIES_FORMAT

BOX = 10.0


def random_spheres(seed: int, n: int = 40) -> object:
    rng = np.random.default_rng(seed)
    # Some centres just outside the box in x: the pairs must see them wrapped.
    centres = np.column_stack([rng.uniform(-0.5, BOX + 0.5, n), rng.uniform(0, BOX, n), rng.uniform(0, 6, n)])
    return checked(centres, rng.uniform(0.3, 1.4, n), rng.choice([1, 2], n), (BOX, BOX), 0.25, f"seed {seed}")


def brute_force(p, cutoff, by_radii):
    d = p.centres[None, :, :] - p.centres[:, None, :]
    d[..., :2] -= BOX * np.round(d[..., :2] / BOX)
    dist = np.linalg.norm(d, axis=2)
    limit = p.radii[:, None] + p.radii[None, :] + cutoff if by_radii else cutoff
    i, j = np.nonzero(np.triu(dist < limit, 1))
    return np.column_stack([i, j]), d[i, j]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("cutoff,by_radii", [(0.0, True), (0.6, True), (3.5, False)])
def test_neighbours_match_brute_force_periodic(seed, cutoff, by_radii):
    p = random_spheres(seed)
    ij, delta = neighbours(p, cutoff, by_radii)
    want_ij, want_delta = brute_force(p, cutoff, by_radii)
    np.testing.assert_array_equal(ij, want_ij)
    np.testing.assert_allclose(delta, want_delta, atol=1e-12)
    raw = p.centres[ij[:, 1], :2] - p.centres[ij[:, 0], :2]
    assert np.any(np.abs(raw) > BOX / 2), "no pair across the periodic boundary"


def test_batch_equals_cases_one_by_one():
    cases = [random_spheres(s, n) for s, n in ((0, 40), (1, 25), (2, 33))]
    ij, delta, counts = neighbours_batch(cases, 0.4)
    first = np.cumsum([0] + [c.n for c in cases])
    parts = [neighbours(c, 0.4) for c in cases]
    np.testing.assert_array_equal(counts, [len(a) for a, _ in parts])
    np.testing.assert_array_equal(ij, np.concatenate([a + f for (a, _), f in zip(parts, first)]))
    np.testing.assert_array_equal(delta, np.concatenate([d for _, d in parts]))


def test_reach_beyond_half_the_box_is_refused():
    with pytest.raises(CalbatchError, match="half the box"):
        neighbours(random_spheres(0), 6.0, by_radii=False)


def test_decomposition_recovers_voxelized_spheres():
    # AM and CBD spheres, one crossing the x boundary, one the y boundary, voxelized by the core.
    centres = np.array([[3.0, 3.0, 3.2], [9.6, 6.5, 4.0], [6.2, 9.7, 8.1], [6.5, 3.5, 7.6], [2.0, 7.5, 8.6]])
    radii = np.array([2.4, 2.0, 1.6, 1.0, 1.0])
    truth = checked(centres, radii, [2, 2, 2, 1, 1], (BOX, BOX), 0.25, "truth")
    volume = truth.voxelize(48)
    p = decompose(volume, 0.25, "spheres.npy")
    assert p.fidelity["r2"] > 0.99, fidelity_line(p)
    for c, r, ph in zip(truth.centres, truth.radii, truth.phases):
        d = p.centres - c
        d[:, :2] -= BOX * np.round(d[:, :2] / BOX)
        dist = np.where(p.phases == ph, np.linalg.norm(d, axis=1), np.inf)
        k = int(np.argmin(dist))
        assert dist[k] <= 0.25, (c, dist[k])  # the largest ball sits within a voxel of the centre
        assert abs(p.radii[k] - r) <= 0.25 + 1e-9
    line = fidelity_line(p)
    assert line.startswith("spheres.npy: ") and "R2" in line and "\n" not in line


def test_decomposition_of_a_dem_pack_volume_is_faithful():
    pack = particles_of("data/dem/default/packs/ms1.h5")
    p = particles_of("data/dem/default/packs/ms1.h5:/volume")  # the pack's voxels alone
    f = p.fidelity
    assert f["r2"] > 0.99 and abs(f["porosity"] - f["porosity_input"]) < 0.005
    assert all(abs(v) < 10 for v in f["contact_error_percent"].values())
    # About one sphere per DEM particle, per phase (140 AM, 923 CBD).
    for phase in (1, 2):
        assert abs(np.sum(p.phases == phase) / np.sum(pack.phases == phase) - 1) < 0.15


def test_dem_files_give_their_particles_exactly():
    pack = particles_of("data/dem/default/packs/ms1.h5")
    with h5py.File("data/dem/default/packs/ms1.h5") as f:
        np.testing.assert_array_equal(pack.centres, f["particles/positions"][()])
        np.testing.assert_array_equal(pack.voxelize(125), f["volume"][()])
    last = particles_of("data/dem/default/particles/ms1_cd20.h5", frame=-1)
    with h5py.File("data/dem/default/particles/ms1_cd20.h5") as f:
        np.testing.assert_array_equal(last.centres, f["particles/positions"][-1])
        assert last.box == tuple(f.attrs["box_um"]) and last.n == 1063
    assert fidelity_line(last).endswith("as the DEM holds them")


def test_projection_removes_overlaps_and_respects_walls():
    p = random_spheres(3, 30)
    press = 5.0
    before = overlaps(p)
    assert max(before.values()) > 0.5
    q, excess = project(p, press, 0.0, iterations=200)
    assert excess < 1e-3
    z = q.centres[:, 2]
    assert np.all(z >= q.radii - 1e-12) and np.all(z <= press - q.radii + 1e-12)
    assert np.all((q.centres[:, :2] >= 0) & (q.centres[:, :2] < BOX))
    again, _ = project(p, press, 0.0, iterations=200)
    np.testing.assert_array_equal(q.centres, again.centres)  # deterministic


def test_projection_keeps_overlaps_within_tolerance():
    # Two AM spheres overlapping by 0.3 um, CBD pair by 0.3 um: only the CBD pair exceeds its tolerance.
    p = checked([[2, 2, 3], [3.7, 2, 3], [6, 6, 3], [7.7, 6, 3]], [1, 1, 1, 1], [2, 2, 1, 1], (BOX, BOX), 0.25)
    q, excess = project(p, None, {"AM-AM": 0.5, "CBD-CBD": 0.1}, iterations=1)
    np.testing.assert_array_equal(q.centres[:2], p.centres[:2])
    gap = np.linalg.norm(q.centres[3] - q.centres[2])
    assert gap == pytest.approx(2 - 0.1) and excess == pytest.approx(0)


def write_dem(path, positions, radii, phases, series=True):
    with h5py.File(path, "w") as f:
        f.attrs["format"] = SERIES_FORMAT if series else PACK_FORMAT
        f.attrs["box_um"] = [BOX, BOX]
        f.attrs["voxel_size_um"] = 0.25
        g = f.create_group("particles")
        g["positions"], g["radii"], g["phases"] = positions, radii, phases
        if series:
            for k in ("time_us", "press_z_um", "wall_time_s"):
                f[k] = np.zeros(len(positions))
            f["phase"] = np.array([b"press"] * len(positions))


@pytest.mark.parametrize("edit,field", [
    (lambda x, r, ph: (x, r[:-1], ph), "/particles/radii"),
    (lambda x, r, ph: (np.where(np.arange(3)[None, :, None] == 1, np.nan, x), r, ph), "/particles/positions"),
    (lambda x, r, ph: (x, np.r_[r[:-1], 0.0], ph), "/particles/radii"),
    (lambda x, r, ph: (x, r, np.r_[ph[:-1], 3]), "/particles/phases"),
])
def test_bad_particle_files_are_one_line_errors(tmp_path, edit, field):
    x = np.random.default_rng(0).uniform(1, 5, (2, 3, 3))
    path = tmp_path / "bad.h5"
    write_dem(path, *edit(x, np.ones(3), np.array([1, 2, 2], np.uint8)))
    with pytest.raises(CalbatchError) as err:
        particles_of(path)
    message = str(err.value)
    assert str(path) in message and field in message and "\n" not in message


def test_bad_frame_and_bad_volume_are_one_line_errors(tmp_path):
    with pytest.raises(CalbatchError, match="frame 15 out of range"):
        particles_of("data/dem/default/particles/ms1_cd20.h5", frame=15)
    np.save(tmp_path / "v.npy", np.full((4, 5, 5), 3, np.uint8))
    with pytest.raises(CalbatchError, match="unknown phase code 3"):
        particles_of(tmp_path / "v.npy")
    with pytest.raises(CalbatchError, match="press height"):
        project(random_spheres(0), -1.0)


def test_projection_batch_equals_cases_one_by_one():
    cases = [random_spheres(s, n) for s, n in ((4, 30), (5, 22))]
    batch, excess = project_batch(cases, [5.0, None], 0.05, iterations=6)
    for case, press, got, e in zip(cases, [5.0, None], batch, excess):
        alone, e1 = project(case, press, 0.05, iterations=6)
        np.testing.assert_array_equal(got.centres, alone.centres)
        assert e == e1


def test_core_refuses_nan_and_bad_radii_from_any_caller():
    p = random_spheres(0)
    bad = replace(p, centres=np.where(np.arange(p.n)[:, None] == 7, np.nan, p.centres))
    with pytest.raises(CalbatchError, match="particle 7 has a non-finite position"):
        neighbours(bad)
    with pytest.raises(CalbatchError, match="particle 2 has radius"):
        project(replace(p, radii=np.where(np.arange(p.n) == 2, -1.0, p.radii)), 5.0)
