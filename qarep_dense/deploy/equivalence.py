"""Checks that a deploy model computes what its training form computes."""
from __future__ import annotations

import torch
from torch import nn

from ..layers.rep_blocks import LinearAddBlock, RepVGGBlock


def remaining_multi_branch(model: nn.Module) -> list[str]:
    """Names of multi-branch blocks still present (should be empty after reparameterization)."""
    return [name for name, m in model.named_modules() if isinstance(m, (RepVGGBlock, LinearAddBlock))]


@torch.no_grad()
def max_abs_diff(a: nn.Module, b: nn.Module, inputs: torch.Tensor) -> float:
    """Largest absolute output difference of two eval-mode models on ``inputs`` (tensors or tuples of them)."""
    out_a, out_b = a.eval()(inputs), b.eval()(inputs)
    flat_a = out_a if isinstance(out_a, (list, tuple)) else [out_a]
    flat_b = out_b if isinstance(out_b, (list, tuple)) else [out_b]
    return max(float((x - y).abs().max()) for x, y in zip(flat_a, flat_b))


def assert_equivalent(train_model: nn.Module, deploy_model: nn.Module, inputs: torch.Tensor,
                      atol: float = 1e-4) -> float:
    """Raise if the deploy model differs from the train-form model by more than ``atol``."""
    leftover = remaining_multi_branch(deploy_model)
    if leftover:
        raise AssertionError(f"deploy model still has multi-branch blocks: {leftover[:5]}")
    diff = max_abs_diff(train_model, deploy_model, inputs)
    if diff > atol:
        raise AssertionError(f"deploy model differs from the training model by {diff:.3g} > {atol:g}; "
                             "was the model put in eval() mode with trained BN statistics?")
    return diff
