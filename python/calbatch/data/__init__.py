"""Data shipped with calbatch: the example electrode (as a volume and as the DEM pack it was
voxelized from), the default DEM dataset's plan, the example screen cases and the trained models.
Everything a command reads by default lives here, so an installed wheel works outside a clone."""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent


def example_volume_path() -> str:
    """The shipped example electrode, 76 x 76 x 125 voxels of 0.4 um, as a volume spec."""
    return f"{DATA_DIR / 'example_electrode.h5'}:/volume"


def example_pack_path() -> Path:
    """The DEM pack of the example electrode (electrode 1 of the repository's default dataset,
    data/dem/default/packs/ms1.h5): its particles, voxels and top, the start of a DEM reference run."""
    return DATA_DIR / "example_pack.h5"


def default_dataset_path() -> Path:
    """The default DEM dataset's plan (data/dem/default/dataset.json): its calender settings made
    the training data, so DEM reference runs use them by default."""
    return DATA_DIR / "default_dataset.json"


def example_cases_path() -> Path:
    """The shipped example cases file of ``calbatch screen`` (``calbatch demo`` runs it)."""
    return DATA_DIR / "example_cases.yaml"


def shipped_model_path() -> Path:
    """Where the shipped default model lives: the learned particle step, which won on the validation
    series by the functional metrics (the file may be missing: see calbatch.screen.shipped_model)."""
    return DATA_DIR / "model.onnx"


def frame_model_path() -> Path:
    """The frame model (voxel frames, the phase budget's rules): selectable with --model, and the
    fallback where a particle model cannot run (a GPU backend)."""
    return DATA_DIR / "frame_model.onnx"
