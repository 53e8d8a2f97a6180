"""Checks that a deploy model computes what its training form computes."""
from __future__ import annotations

from typing import Sequence

import numpy as np
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


def normalized_max_error(outputs: Sequence, reference: Sequence) -> float:
    """Worst over outputs of max|a - b| / max|b|: the error measured in units of each output's own scale.

    Why this definition: float32 rounding is relative to the magnitudes a network carries, so an
    exact export of a detector whose box outputs are ~1e4 differs by ~1e-3 absolute while its
    class scores differ by ~1e-7; dividing each output by its own largest magnitude (not element by
    element, which blows up near zero, and not one norm over all outputs, which lets large outputs
    hide small ones) makes the number independent of the output's scale. An all-zero reference
    counts as 0 error only if ``a`` is all zero too (else inf). Inputs: arrays or tensors, paired.
    """
    if len(outputs) != len(reference):
        raise ValueError(f"normalized_max_error: {len(outputs)} outputs vs {len(reference)} reference outputs")
    worst = 0.0
    for a, b in zip(outputs, reference):
        a64, b64 = _as_float64(a), _as_float64(b)
        diff, scale = float(np.abs(a64 - b64).max(initial=0.0)), float(np.abs(b64).max(initial=0.0))
        worst = max(worst, diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")))
    return worst


def _as_float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)
