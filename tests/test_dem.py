"""The DEM stage on tiny systems, with real LIGGGHTS runs: a 6 x 6 um box of 40 AM particles at 0.3
of the real size (plus their CBD), on a coarse 0.2 um grid."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from calbatch import CalbatchError, dem
from calbatch.electrode.metrics import measure
from conftest import assert_one_line_error, run_cli

pytestmark = pytest.mark.liggghts  # real LIGGGHTS runs throughout

GRID = ["--voxel-size", "0.2", "--nz", "80"]
TINY = ["--box", "6", "--n-am", "40", "--size-scale", "0.3", *GRID]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tiny pack and its CD 30 series, made once through the CLI."""
    root = tmp_path_factory.mktemp("dem")
    pack = root / "pack.h5"
    proc = run_cli("dem", "pack", "--out", pack, "--seed", "3", *TINY, "--json", timeout=900)  # 1M steps: slow on a shared machine
    assert proc.returncode == 0, proc.stderr
    series = root / "series.h5"
    proc = run_cli("dem", "calender", pack, "--cd", "30", "--out", series, *GRID, "--speed", "0.2",
                   "--frame-interval", "2.5", "--particles-out", root / "particles.h5", "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "pack": pack, "series": series, "summary": json.loads(proc.stdout)}


def test_pack_is_a_loose_seeded_electrode(tiny):
    packed = dem.read_pack(tiny["pack"])
    attrs = packed["attrs"]
    assert attrs["n_am"] == 40 and attrs["n_cbd"] > 0
    assert 0.3 < attrs["porosity"] < 0.7
    # settled onto the collector: nothing floats, nothing went through it
    bottoms = packed["positions"][:, 2] - packed["radii"]
    assert bottoms.min() > -0.05 and bottoms.min() < 0.05
    again = dem.initial_placement(3, 40, 6.0, 0.3)
    assert np.array_equal(again[0], dem.initial_placement(3, 40, 6.0, 0.3)[0])


def test_a_bed_still_falling_is_refused_not_packed(tmp_path, monkeypatch):
    """The fall goes on until no particle moves faster than the settle speed; a bed still falling
    when the cap is reached is one clear error, and no pack file is written."""
    from calbatch.dem.settings import PACK

    monkeypatch.setitem(PACK, "fall_us", 1.0)
    monkeypatch.setitem(PACK, "settle_chunk_us", 1.0)
    monkeypatch.setitem(PACK, "max_fall_us", 2.0)
    with pytest.raises(CalbatchError, match="did not settle within 2 us"):
        dem.pack(tmp_path / "pack.h5", seed=3, n_am=12, box_xy=3.2, size_scale=0.3, voxel_size=0.2, nz=48)
    assert not (tmp_path / "pack.h5").exists()


def test_a_bed_that_stopped_with_a_sphere_still_rattling_is_packed(tmp_path, monkeypatch):
    """A bed whose particles never all slow below the settle speed (here: a speed none reaches) is
    settled when its mean height stopped falling; the quench then stills it."""
    from calbatch.dem.settings import PACK

    monkeypatch.setitem(PACK, "settle_speed_um_us", 0.0)
    monkeypatch.setitem(PACK, "max_fall_us", PACK["fall_us"] + 2 * PACK["settle_chunk_us"])
    out = tmp_path / "pack.h5"
    dem.pack(out, seed=3, n_am=12, box_xy=3.2, size_scale=0.3, voxel_size=0.2, nz=48)
    log = (tmp_path / "pack.liggghts" / "log.liggghts").read_text()
    moving, sank = log.split("calbatch settled: ")[-1].split()[0], float(log.split("sank: ")[-1].split()[0])
    assert moving == "1" and abs(sank) < PACK["settle_sink_um"]
    packed = dem.read_pack(out)
    bottoms = packed["positions"][:, 2] - packed["radii"]
    assert -0.05 < bottoms.min() < 0.05


def test_mass_ratio_gives_the_cbd_volume_fraction(tiny):
    attrs = dem.read_pack(tiny["pack"])["attrs"]
    # 96:4 by weight with a CBD of density 1.86 x (1 - 0.5) = 0.93 g/cm3: 17.2 % of the solid volume
    assert attrs["cbd_volume_fraction"] == pytest.approx((4 / 0.93) / (4 / 0.93 + 96 / 4.65))
    assert list(attrs["mass_ratio_am_cbd"]) == [96, 4] and attrs["cbd_nanoporosity"] == 0.5
    packed = dem.read_pack(tiny["pack"])
    spheres = 4 / 3 * np.pi * packed["radii"] ** 3
    share = spheres[packed["phases"] == 1].sum() / spheres.sum()
    assert share == pytest.approx(attrs["cbd_volume_fraction"], rel=0.05)  # whole spheres: rounding only
    # voxelized finely, the CBD share of the solid voxels is the intended one within a few percent
    from calbatch.electrode.voxelize import voxelize_spheres
    box = tuple(attrs["box_um"])
    vol = voxelize_spheres(packed["positions"], packed["radii"], packed["phases"], box, (200, 120, 120), 0.05)
    assert measure(vol, 0.05)["cbd_share_of_solid"] == pytest.approx(attrs["cbd_volume_fraction"], rel=0.08)
    assert dem.cbd_volume_fraction((90, 10), 0.0) == pytest.approx((10 / 1.86) / (10 / 1.86 + 90 / 4.65))


def test_press_reaches_cd_and_electrode_springs_back_partly(tiny):
    s = dem.read_series(tiny["series"])
    a = s["attrs"]
    top0 = a["uncalendered_top_um"]
    assert a["press_lowest_um"] == pytest.approx(0.7 * top0)
    one_frame = a["press_speed_m_s"] * a["frame_interval_us"]
    assert a["press_lowest_um"] - 1e-9 <= s["press_z_um"].min() <= a["press_lowest_um"] + one_frame
    tops = np.max(s["positions"][:, :, 2] + s["radii"], axis=1)
    lowest_frame = np.argmin(s["press_z_um"])
    # the electrode was really pressed, not just the press moved (soft spheres indent the press a bit)
    assert tops[lowest_frame] < (1 - 0.5 * 0.3) * top0
    final = tops[-1]
    assert a["press_lowest_um"] < final < top0  # spring-back and permanent compaction both present
    assert list(dict.fromkeys(s["phase"])) == ["press", "release", "relax"]
    assert np.all(np.diff(s["time_us"]) > 0) and np.all(s["wall_time_s"] > 0)


def test_solid_volume_conserved_in_voxel_frames(tiny):
    s = dem.read_series(tiny["series"])
    solid = np.array([np.isin(f, (1, 2)).sum() for f in s["frames"]]) * 0.2**3
    spheres = np.sum(4 / 3 * np.pi * s["radii"] ** 3)
    # voxelization error ~ surface x half a voxel; overlaps at the lowest point also remove some
    surface = np.sum(4 * np.pi * s["radii"] ** 2) * 0.1
    assert np.all(np.abs(solid - spheres) < surface)
    assert abs(solid[-1] - solid[0]) < 0.05 * spheres


def test_series_file_round_trips_and_revoxelizes(tiny, tmp_path):
    s = dem.read_series(tiny["series"])
    assert s["frames"].shape == (len(s["time_us"]), 80, 30, 30) and s["frames"].dtype == np.uint8
    for key in ("cd_percent", "microstructure_id", "seed", "contact_model", "contact_parameters",
                "voxel_size_um", "liggghts_version"):
        assert key in s["attrs"], key
    copy = tmp_path / "copy.h5"
    dem.write_series(copy, s)
    back = dem.read_series(copy)
    assert np.array_equal(back["frames"], s["frames"]) and np.array_equal(back["phase"], s["phase"])
    # the particle-only file rebuilds the same voxels, and another grid without DEM
    proc = run_cli("dem", "revoxelize", tiny["root"] / "particles.h5", "--out", tmp_path / "re.h5", *GRID)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(dem.read_series(tmp_path / "re.h5")["frames"], s["frames"])
    proc = run_cli("dem", "revoxelize", tiny["series"], "--out", tmp_path / "fine.h5", "--voxel-size", "0.1",
                   "--nz", "160")
    assert proc.returncode == 0, proc.stderr
    fine = dem.read_series(tmp_path / "fine.h5")
    assert fine["frames"].shape[1:] == (160, 60, 60)
    assert measure(fine["frames"][0], 0.1)["porosity"] == pytest.approx(
        measure(s["frames"][0], 0.2)["porosity"], abs=0.03)
    # a volume spec into the series reads one frame
    from calbatch.electrode.volume import read_volume
    assert np.array_equal(read_volume(f"{tiny['series']}:/frames/2"), s["frames"][2])


def test_plots_are_written(tiny, tmp_path):
    proc = run_cli("dem", "plot", tiny["series"], "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(pngs) == 3 and all((tmp_path / p).stat().st_size > 5000 for p in pngs)


def test_dataset_resumes_without_recomputing(tiny, tmp_path):
    out = tmp_path / "ds"
    (out / "packs").mkdir(parents=True)
    (out / "packs" / "ms1.h5").write_bytes(tiny["pack"].read_bytes())
    (out / "particles").mkdir()
    (out / "particles" / "ms1_cd30.h5").write_bytes((tiny["root"] / "particles.h5").read_bytes())
    args = ["dem", "dataset", "--out", out, "--n", "1", "--n-random", "0", "--cd", "30", "--workers", "1", *GRID, "--json"]
    proc = run_cli(*args)  # the voxels come back from the particle file, no LIGGGHTS run
    assert proc.returncode == 0, proc.stderr
    assert not (out / "ms1_cd30.liggghts").exists()
    series = out / "ms1_cd30.h5"
    stamp = series.stat().st_mtime_ns
    proc = run_cli(*args)
    assert proc.returncode == 0 and series.stat().st_mtime_ns == stamp
    assert not (out / "dataset.pgid").exists()
    # the dataset's summary from its particle files alone gives the series' own numbers
    made = json.loads(proc.stdout)["series"][0]
    summary = run_cli("dem", "summary", out, "--json")
    assert summary.returncode == 0, summary.stderr
    row = json.loads(summary.stdout)["series"][0]
    for key in ("porosity_before", "porosity_after", "spring_back_percent", "cbd_share_of_solid_after"):
        assert row[key] == pytest.approx(made[key]), key
    assert "| 30 | 1 |" in run_cli("dem", "summary", out, "--markdown").stdout
    # a resumed dataset must ask for the same plan and settings
    proc = run_cli("dem", "dataset", "--out", out, "--n", "1", "--n-random", "0", "--cd", "35", "--workers", "1", *GRID)
    assert_one_line_error(proc, "dataset.json", "other settings", "plan")
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("args, fragments", [
    (["calender", "PACK", "--cd", "95", "--out", "x.h5"], ["--cd", "95"]),
    (["calender", "PACK", "--cd", "0", "--out", "x.h5"], ["--cd"]),
    (["pack", "--out", "x.h5", "--n-am", "0"], ["--n-am", "at least 1"]),
    (["calender", "PACK", "--cd", "30", "--out", "x.h5", "--voxel-size", "0.2", "--nz", "10"], ["grid too small"]),
    (["pack", "--out", "x.h5", "--box", "2"], ["--box"]),
    (["calender", "missing.h5", "--cd", "30", "--out", "x.h5"], ["missing.h5"]),
])
def test_bad_options_give_one_line(tiny, tmp_path, args, fragments):
    args = [str(tiny["pack"]) if a == "PACK" else a for a in args]
    args = [str(tmp_path / a) if a == "x.h5" else a for a in args]
    assert_one_line_error(run_cli("dem", *args), *fragments)


def test_missing_liggghts_names_the_debian_package(tiny, tmp_path):
    proc = run_cli("dem", "calender", tiny["pack"], "--cd", "30", "--out", tmp_path / "x.h5", *GRID,
                   env={"PATH": str(Path(sys.executable).parent)})
    assert_one_line_error(proc, "liggghts", "Debian package")


def test_liggghts_error_gives_log_path_and_no_series(tiny, tmp_path):
    # a time step 200x too large blows the particles through the collector: LIGGGHTS stops with
    # "Lost atoms"
    out = tmp_path / "bad.h5"
    proc = run_cli("dem", "calender", tiny["pack"], "--cd", "30", "--out", out, *GRID, "--dt", "0.05")
    assert_one_line_error(proc, "LIGGGHTS failed", "log.liggghts")
    log = Path(proc.stderr.split("see its log ")[1].strip())
    assert log.is_file() and "ERROR" in log.read_text(errors="replace")
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_asking_liggghts_its_version_leaves_no_log_behind(tmp_path, monkeypatch):
    from calbatch.dem.runner import liggghts_version

    monkeypatch.chdir(tmp_path)
    assert liggghts_version().startswith("LIGGGHTS")
    assert list(tmp_path.iterdir()) == []


def test_a_further_dataset_numbers_its_electrodes_after_the_default():
    default = dem.dataset_plan()
    assert [e["microstructure_id"] for e in default] == list(range(1, 9))
    assert all(e["seed"] == e["microstructure_id"] for e in default)
    further = dem.dataset_plan(0, n_random=56, random_cds=1, seed=9, first=9)
    assert [e["microstructure_id"] for e in further] == list(range(9, 65))
    assert all(e["seed"] == e["microstructure_id"] and len(e["cds"]) == 1 and 20 <= e["cds"][0] <= 50 for e in further)
    assert further == dem.dataset_plan(0, n_random=56, random_cds=1, seed=9, first=9)  # the same plan every run
    with pytest.raises(CalbatchError, match="--first"):
        dem.dataset_plan(first=0)
