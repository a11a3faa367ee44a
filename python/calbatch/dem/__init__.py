"""DEM ground truth: LIGGGHTS packs an uncalendered electrode, presses it to a compression degree
(CD) and releases it; every frame is voxelized onto the calbatch grid and stored as one series file
(:mod:`calbatch.electrode.series`).

One module per concern: ``settings`` (formulation, contact model, schedule), ``runner`` (LIGGGHTS
as a subprocess), ``pack``, ``calender`` (and ``revoxelize``), ``dataset``, ``plots``, and
``reference`` (a DEM run as the reference a model is judged against). The entry points, one per
verb of ``calbatch dem``, are re-exported here.
"""

from ..electrode.series import read_pack, read_series, write_series
from .calender import calender, revoxelize, summarize
from .dataset import cd_label, cd_table, dataset, dataset_plan, format_table, summarize_dataset
from .pack import initial_placement, pack
from .plots import plot
from .settings import cbd_density, cbd_volume_fraction

__all__ = ["calender", "cbd_density", "cbd_volume_fraction", "cd_label", "cd_table", "dataset", "dataset_plan",
           "format_table", "summarize_dataset",
           "initial_placement", "pack", "plot", "read_pack", "read_series", "revoxelize", "summarize",
           "write_series"]
