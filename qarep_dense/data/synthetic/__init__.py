"""Deterministic synthetic datasets in the real datasets' on-disk layouts (demo and test data)."""
from .shapes import SHAPES, draw_shape, textured_background

__all__ = ["SHAPES", "draw_shape", "textured_background"]
