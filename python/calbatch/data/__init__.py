"""Data shipped with calbatch: the example electrode, the example screen cases and the trained model."""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent


def example_volume_path() -> str:
    """The shipped example electrode, 76 x 76 x 125 voxels of 0.4 um, as a volume spec."""
    return f"{DATA_DIR / 'example_electrode.h5'}:/volume"


def example_cases_path() -> Path:
    """The shipped example cases file of ``calbatch screen`` (``calbatch demo`` runs it)."""
    return DATA_DIR / "example_cases.yaml"


def shipped_model_path() -> Path:
    """Where the shipped trained model lives (the file may be missing: see calbatch.screen.shipped_model)."""
    return DATA_DIR / "model.onnx"
