"""Views: export for ParaView and OVITO read back by VTK's reader and calbatch's particle reader,
headless renders, and the one-line refusals of bad input."""

from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, particle_volume, run_cli

pytest.importorskip("vtkmodules", reason="VTK is not installed (pip install 'calbatch[view]')")
pytest.importorskip("pyvista", reason="pyvista is not installed (pip install 'calbatch[view]')")

REPO = Path(__file__).resolve().parents[1]
DEM_PARTICLES = REPO / "data" / "dem" / "default" / "particles" / "ms1_cd20.h5"


@pytest.fixture(scope="module")
def short_rollout(tmp_path_factory) -> Path:
    """A short free rollout of the shipped frame model on a tiny electrode (7 frames of 24 x 16 x 16)."""
    from calbatch.data import frame_model_path
    from calbatch.surrogate.rollout import rollout_file

    folder = tmp_path_factory.mktemp("rollout")
    np.save(folder / "start.npy", particle_volume((24, 16, 16)))
    rollout_file(frame_model_path(), folder / "start.npy", 30.0, folder / "rollout.h5", progress=False)
    return folder / "rollout.h5"


def test_rollout_exports_to_vti_frames_that_vtk_reads_back_identical(short_rollout, tmp_path):
    from calbatch.electrode.series import read_series
    from calbatch.view import read_vti

    proc = run_cli("export-view", short_rollout, "--out", tmp_path / "v", "--json")
    assert proc.returncode == 0, proc.stderr
    series = read_series(short_rollout)
    vti = sorted((tmp_path / "v").glob("*.vti"))
    assert len(vti) == len(series["frames"]) == 7
    for path, frame in zip(vti, series["frames"]):
        codes, spacing = read_vti(path)  # VTK's own XML reader
        assert np.array_equal(codes, frame)
        assert spacing == pytest.approx(series["attrs"]["voxel_size_um"])
    pvd = (tmp_path / "v" / "rollout.pvd").read_text()
    assert pvd.count("<DataSet ") == 7 and f'timestep="{series["time_us"][-1]:.6g}"' in pvd
    assert not list((tmp_path / "v").glob(".*"))  # no temporary left behind


def test_dem_particles_export_to_dumps_that_the_liggghts_reader_reads_back(tmp_path):
    from calbatch.dem.runner import read_dump as read_liggghts_dump
    from calbatch.electrode.series import read_series
    from calbatch.view import read_dump, read_vti

    proc = run_cli("export-view", DEM_PARTICLES, "--out", tmp_path, "--frame", "0", "-1")
    assert proc.returncode == 0, proc.stderr
    s = read_series(DEM_PARTICLES)
    last = len(s["time_us"]) - 1
    for i in (0, last):
        dump = tmp_path / f"ms1_cd20.{i:04d}.dump"
        assert np.array_equal(read_liggghts_dump(dump).astype(np.float32), s["positions"][i])  # bit for bit
        back = read_dump(dump)
        assert np.array_equal(back["phases"], s["phases"])
        assert np.array_equal(back["radii"].astype(np.float32), s["radii"])
        codes, _ = read_vti(tmp_path / f"ms1_cd20_{i:04d}.vti")  # the particle frame voxelized
        assert set(np.unique(codes)) == {0, 1, 2, 4}
    assert len(list(tmp_path.glob("*.dump"))) == 2


def test_render_draws_dem_against_model_in_the_phase_colours(short_rollout, tmp_path):
    from PIL import Image

    from calbatch.view.render import COLORS

    out = tmp_path / "pair.png"
    proc = run_cli("render", short_rollout, short_rollout, "--frame", "-1", "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape[1] > image.shape[0]  # two panels side by side
    pixels = image.reshape(-1, 3).astype(int)
    for code, hex_color in COLORS.items():  # every phase is on the picture (shaded, so nearly its colour)
        rgb = np.array([int(hex_color[k:k + 2], 16) for k in (1, 3, 5)])
        hue = rgb / rgb.sum()
        close = np.abs(pixels / np.maximum(pixels.sum(1, keepdims=True), 1) - hue).max(1) < 0.02
        assert close.sum() > 200, code
    particles = tmp_path / "particles.png"
    proc = run_cli("render", DEM_PARTICLES, "--particles", "--solids", "--frame", "3", "--out", particles)
    assert proc.returncode == 0, proc.stderr
    assert "render:" in proc.stdout and particles.stat().st_size > 10_000


def test_bad_input_is_one_line_and_exit_2(short_rollout, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an electrode\n")
    cases = [(("export-view", short_rollout, "--out", tmp_path / "a", "--frame", "7"), ("frame 7 out of range", "7 frames")),
             (("render", short_rollout, "--frame", "-8", "--out", tmp_path / "a.png"), ("frame -8 out of range",)),
             (("export-view", text, "--out", tmp_path / "b"), ("notes.txt", "neither a calbatch series")),
             (("render", text, "--out", tmp_path / "b.png"), ("neither a calbatch series",)),
             (("export-view", short_rollout, "--out", text / "sub"), ("--out", "cannot write there")),
             (("render", short_rollout, "--out", text / "c.png"), ("--out", "cannot write there")),
             (("render", short_rollout, "--out", tmp_path / "c.jpg"), ("--out", ".png")),
             (("render", DEM_PARTICLES, short_rollout, "--frame", "10", "--out", tmp_path / "d.png"),
              ("rollout.h5", "frame 10 out of range"))]
    for args, fragments in cases:
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob("*.png"))


def test_view_imports_only_common_and_electrode():
    """The view stage sits on the electrode: evaluate, bench, screen, optimize and the CLI may use it, not
    the other way round."""
    import ast

    package = REPO / "python" / "calbatch"
    for path in (package / "view").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                top = (node.module or "").split(".")[0] if node.level == 2 else "view"
                assert top in ("common", "electrode", "errors", "view"), (path.name, node.module)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n and n.startswith("calbatch") for n in names), (path.name, names)
