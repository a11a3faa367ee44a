"""The series and pack file formats: version 1 files still read, with their formulation stated."""

from pathlib import Path

import numpy as np
import pytest

from calbatch.dem.calender import voxel_frames
from calbatch.electrode.series import read_pack, read_series, write_series

V1 = Path(__file__).resolve().parents[1] / "data/dem/v1"


def test_version_1_files_still_read(tmp_path):
    s = read_series(V1 / "particles/ms1_cd35.h5", frames=False)
    assert s["attrs"]["format"] == "calbatch-dem-series/1"
    # the formulation version 1 used, stated for readers: CBD 4 % of the solid at 0.93 g/cm3
    assert s["attrs"]["cbd_volume_fraction"] == 0.04 and s["attrs"]["cbd_density_g_cm3"] == 0.93
    assert s["positions"].shape == (len(s["time_us"]), len(s["radii"]), 3)
    pack = read_pack(V1 / "packs/ms1.h5")
    assert pack["attrs"]["format"] == "calbatch-dem-pack/1" and pack["positions"].shape[1] == 3
    # written again it says the current version and keeps the stated formulation
    s["frames"] = voxel_frames(s)[0]
    write_series(tmp_path / "again.h5", s)
    again = read_series(tmp_path / "again.h5")
    assert again["attrs"]["format"] == "calbatch-dem-series/2" and again["attrs"]["cbd_volume_fraction"] == 0.04
    assert np.array_equal(again["frames"], s["frames"])


def test_every_shipped_v2_pack_has_the_papers_formulation():
    """The 8 electrodes (seeds 1-8) of the default dataset: CBD 14-20 % of the solid voxels and
    porosity 38-50 % (nanopores excluded), as the 96:4-by-weight formulation and the literature say."""
    packs = sorted((V1.parent / "default/packs").glob("ms*.h5"))
    assert len(packs) == 8
    for path in packs:
        attrs = read_pack(path)["attrs"]
        assert attrs["format"] == "calbatch-dem-pack/2"
        assert 0.14 <= attrs["cbd_share_of_solid_voxels"] <= 0.20, path.name
        assert 0.38 <= attrs["porosity"] <= 0.50, path.name
        assert attrs["porosity_all"] == pytest.approx(attrs["porosity"] + 0.5 * (1 - attrs["porosity"]) *
                                                      attrs["cbd_share_of_solid_voxels"], rel=1e-9)
