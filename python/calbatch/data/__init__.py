"""Data shipped with calbatch: the example electrode (and, later, the trained model)."""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent


def example_volume_path() -> str:
    """The shipped example electrode, 76 x 76 x 125 voxels of 0.4 um, as a volume spec."""
    return f"{DATA_DIR / 'example_electrode.h5'}:/volume"
