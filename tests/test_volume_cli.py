"""Volume I/O round trips, the calbatch command, and one-line errors for bad input."""

import json

import h5py
import numpy as np
import pytest
import tifffile

import calbatch
from calbatch import CalbatchError, read_volume, write_volume
from calbatch.data import example_volume_path
from calbatch.electrode.metrics import measure
from conftest import assert_one_line_error, random_volume, run_cli


@pytest.mark.parametrize("name", ["v.npy", "v.tif", "v.tiff", "v.h5:/group/volume"])
def test_round_trip(tmp_path, volume, name):
    spec = str(tmp_path / name)
    write_volume(spec, volume)
    back = read_volume(spec)
    assert back.dtype == np.uint8 and back.flags.c_contiguous
    np.testing.assert_array_equal(back, volume)


def test_tiff_pages_are_z_slices(tmp_path, volume):
    write_volume(tmp_path / "v.tif", volume)
    with tifffile.TiffFile(tmp_path / "v.tif") as tif:
        assert len(tif.pages) == volume.shape[0]
        np.testing.assert_array_equal(tif.pages[3].asarray(), volume[3])


def test_h5_frame_of_a_series(tmp_path):
    frames = np.stack([random_volume(seed=s) for s in range(3)])
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["frames"] = frames
    np.testing.assert_array_equal(read_volume(f"{tmp_path}/s.h5:/frames/2"), frames[2])


def test_other_integer_types_are_accepted(tmp_path, volume):
    np.save(tmp_path / "v16.npy", volume.astype(np.int16))
    np.testing.assert_array_equal(read_volume(tmp_path / "v16.npy"), volume)


def test_write_refuses_bad_codes_and_leaves_nothing(tmp_path, volume):
    volume[0, 0, 0] = 3
    with pytest.raises(CalbatchError, match="unknown phase code 3"):
        write_volume(tmp_path / "bad.npy", volume)
    assert list(tmp_path.iterdir()) == []


def test_metrics_cli_table_and_json(tmp_path, volume):
    np.save(tmp_path / "v.npy", volume)
    table = run_cli("metrics", tmp_path / "v.npy")
    assert table.returncode == 0, table.stderr
    assert "porosity" in table.stdout and "pore-AM" in table.stdout
    proc = run_cli("metrics", tmp_path / "v.npy", "--json", "--voxel-size", "0.5")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    expected = measure(volume, 0.5)
    assert result["porosity"] == pytest.approx(expected["porosity"])
    assert result["contact_area_um2"] == pytest.approx(expected["contact_area_um2"])
    assert result["thickness_um"] == pytest.approx(20 * 0.5)


def test_help_and_version():
    assert run_cli("--version").stdout.strip() == f"calbatch {calbatch.__version__}"
    assert "metrics" in run_cli("--help").stdout


def _bad_inputs(tmp):
    """(command-line args, fragments the one-line error must name), one per kind of bad input."""
    np.save(tmp / "flat.npy", np.zeros((4, 4), np.uint8))
    np.save(tmp / "four.npy", np.zeros((2, 4, 4, 4), np.uint8))
    np.save(tmp / "float.npy", np.zeros((4, 4, 4), np.float32))
    np.save(tmp / "code3.npy", np.full((4, 4, 4), 3, np.uint8))
    np.save(tmp / "negative.npy", np.full((4, 4, 4), -1, np.int16))
    np.save(tmp / "empty.npy", np.zeros((0, 4, 4), np.uint8))
    (tmp / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    tifffile.imwrite(tmp / "whole.tif", random_volume())
    data = (tmp / "whole.tif").read_bytes()
    (tmp / "truncated.tif").write_bytes(data[: len(data) // 3])
    with h5py.File(tmp / "v.h5", "w") as f:
        f["frames"] = np.zeros((2, 4, 4, 4), np.uint8)
        f["other"] = np.zeros((4, 4, 4), np.uint8)
    (tmp / "fake.h5").write_bytes(b"not hdf5")
    (tmp / "v.txt").write_text("0 1 2")
    good = tmp / "good.npy"
    np.save(good, random_volume())
    return [
        (["metrics", tmp / "missing.npy"], ["missing.npy", "no such file"]),
        (["metrics", tmp / "flat.npy"], ["flat.npy", "3-D", "2-D"]),
        (["metrics", tmp / "four.npy"], ["four.npy", "4-D"]),
        (["metrics", tmp / "float.npy"], ["float.npy", "float32"]),
        (["metrics", tmp / "code3.npy"], ["code3.npy", "unknown phase code 3"]),
        (["metrics", tmp / "negative.npy"], ["negative.npy", "-1"]),
        (["metrics", tmp / "empty.npy"], ["empty.npy", "empty"]),
        (["metrics", tmp / "garbage.npy"], ["garbage.npy", "cannot read"]),
        (["metrics", tmp / "truncated.tif"], ["truncated.tif", "cannot read"]),
        (["metrics", f"{tmp}/v.h5:/nothing"], ["v.h5", "/nothing"]),
        (["metrics", f"{tmp}/v.h5:/frames/5"], ["v.h5", "frame 5", "2 frames"]),
        (["metrics", f"{tmp}/v.h5"], ["v.h5", "name the dataset"]),
        (["metrics", tmp / "fake.h5"], ["fake.h5", "cannot read"]),
        (["metrics", tmp / "v.txt"], ["v.txt", ".txt"]),
        (["metrics", good, "--voxel-size", "-1"], ["--voxel-size", "-1"]),
        (["metrics", good, "--voxel-size", "abc"], ["--voxel-size", "abc"]),
        (["metrics"], ["volume"]),
        (["frobnicate"], ["frobnicate"]),
    ]


def test_bad_input_gives_one_line_errors(tmp_path):
    cases = _bad_inputs(tmp_path)
    assert len(cases) >= 10
    for args, fragments in cases:
        assert_one_line_error(run_cli(*args), *fragments)


def test_porosity_both_ways_and_cbd_measures(volume):
    m = measure(volume, 0.4, nanoporosity=0.3)
    electrode = np.isin(volume, (0, 1, 2)).sum()
    pore, cbd, am = ((volume == c).sum() for c in (0, 1, 2))
    assert m["porosity"] == pytest.approx(pore / electrode)
    assert m["porosity_all"] == pytest.approx((pore + 0.3 * cbd) / electrode)  # the nanopores counted
    assert m["cbd_share_of_solid"] == pytest.approx(cbd / (cbd + am))
    faces = m["contact_area_voxel2"]
    assert m["am_surface_on_cbd"] == pytest.approx(faces["AM-CBD"] / (faces["AM-CBD"] + faces["pore-AM"] + faces["void-AM"]))
    proc = run_cli("metrics", example_volume_path(), "--nanoporosity", "0.3", "--json")
    assert json.loads(proc.stdout)["porosity_all"] == pytest.approx(
        measure(read_volume(example_volume_path()), 0.4, 0.3)["porosity_all"])


def test_cbd_distribution_over_height():
    from calbatch.electrode.metrics import cbd_distribution

    vol = np.zeros((10, 4, 4), np.uint8)
    vol[:5] = 2
    vol[0, :, :2] = 1  # all CBD in the bottom fifth (one slice of five), on half its area
    d = cbd_distribution(vol, bands=5)
    assert d["share_of_cbd"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert d["cbd_share_of_solid"][0] == 0.5 and d["cbd_share_of_solid"][1] == 0.0
