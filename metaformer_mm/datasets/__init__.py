"""Datasets the project makes itself, and a data pipeline whose errors name the file."""
from .shapes import make_shapes_dataset
from .transforms import CheckedCompose, DataError

__all__ = ['CheckedCompose', 'DataError', 'make_shapes_dataset']
