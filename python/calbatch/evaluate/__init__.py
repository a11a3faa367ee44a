"""Judging a model: against held-out DEM series (scores, plots, baselines) and the DEM itself (bench)."""
