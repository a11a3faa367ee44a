"""The series and pack file formats: version 1 files still read, with their formulation stated."""

from pathlib import Path

import numpy as np

from calbatch.dem.calender import voxel_frames
from calbatch.series import read_pack, read_series, write_series

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
