"""Deployment: the reparameterization walker, equivalence checks and ONNX export."""
from ..layers.rep import reparameterize
from .equivalence import assert_equivalent, max_abs_diff, normalized_max_error, remaining_multi_branch

__all__ = ["reparameterize", "assert_equivalent", "max_abs_diff", "normalized_max_error",
           "remaining_multi_branch"]
