"""Electrode optimisation: the CD that meets a porosity or tau target, through the model."""

from .search import Target, load_electrode, optimize

__all__ = ["Target", "load_electrode", "optimize"]
