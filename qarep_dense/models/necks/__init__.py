"""Detection necks: feature tuples in, feature tuples out."""
from .rep_pan import RepPANNeck

__all__ = ["RepPANNeck"]
