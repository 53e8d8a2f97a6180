"""Distribution focal loss (Li et al., Generalized Focal Loss, NeurIPS 2020).

Written by hand: neither torch nor torchvision has it. Each box side is predicted as a softmax over
integer bins 0..reg_max; DFL puts the continuous target between its two neighbouring bins and trains them
with cross-entropy, weighted linearly by how close the target is to each.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-element DFL: ``logits`` (..., reg_max+1) raw bin scores, ``target`` (...) distances in bin units.

    For target t with left bin l = floor(t) and right bin l+1:
    loss = CE(logits, l) * (l + 1 - t) + CE(logits, l + 1) * (t - l). Returns (...) in float32.
    ``target`` must lie in [0, reg_max]; ``qarep_dense.ops.bbox2dist`` clips it there.
    """
    reg_max = logits.shape[-1] - 1
    if reg_max < 1:
        raise ValueError(f"distribution_focal_loss: logits need at least 2 bins, got shape {tuple(logits.shape)}")
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"distribution_focal_loss: logits {tuple(logits.shape)} must be target "
                         f"{tuple(target.shape)} + (reg_max+1,)")
    target = target.float()
    if target.numel() and (target.min() < 0 or target.max() > reg_max):
        raise ValueError(f"distribution_focal_loss: target must lie in [0, {reg_max}] (clip with bbox2dist), "
                         f"got [{target.min().item():.3f}, {target.max().item():.3f}]")
    # clamp so that t == reg_max uses bins (reg_max-1, reg_max) with all weight on the right one
    left = target.floor().long().clamp(max=reg_max - 1)
    w_left = (left + 1).float() - target
    log_probs = F.log_softmax(logits.float(), dim=-1)
    nll_left = -log_probs.gather(-1, left.unsqueeze(-1)).squeeze(-1)
    nll_right = -log_probs.gather(-1, (left + 1).unsqueeze(-1)).squeeze(-1)
    return nll_left * w_left + nll_right * (1 - w_left)
