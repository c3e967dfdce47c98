"""Datasets the project makes itself (no download needed)."""
from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import make_shapes_dataset

__all__ = ['SHAPES_CLASSES', 'make_shapes_dataset']
