"""Datasets the project makes itself (no download needed), and a data pipeline whose errors
name the file."""
from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import make_shapes_dataset
from .transforms import CheckedCompose, DataError

__all__ = ['CheckedCompose', 'DataError', 'SHAPES_CLASSES', 'make_shapes_dataset']
