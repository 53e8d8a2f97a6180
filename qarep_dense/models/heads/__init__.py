"""Detection heads: feature tuples in, raw per-anchor tensors out."""
from .effidehead import EffiDeHead

__all__ = ["EffiDeHead"]
