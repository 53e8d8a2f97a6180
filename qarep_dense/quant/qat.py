"""Quantization-aware fine-tuning of a PTQ model (paper: 10 epochs, 3 warm-up, lr 0.01).

QARepVGG's post-BN can stay unfolded during QAT: quantize ``reparameterize(model, fold_bn=False)``
(ConvBNAct = quantized conv -> BN -> act), fine-tune, then :func:`fold_after_qat`. Weight amax
follows the weights (per-channel max refreshed after every step); activation amax stays at its
calibrated value. Fake quant passes gradients straight through inside [-amax, amax].
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

from ..data.preprocess import Preprocess
from ..layers import kernels
from ..layers.conv import ConvAct, ConvBNAct
from .backends import backend_of, iter_quantizers

log = logging.getLogger(__name__)


def prepare_qat(qmodel: nn.Module, backend: str | None = None) -> nn.Module:
    """Put a calibrated fake-quant model (from ``quantize_ptq``) in training mode, IN PLACE.

    Refuses a model without quantizers or one that was never calibrated. backend: the fake-quant
    backend's name; None (here and in the other QAT steps): the one whose quantizers the model holds.
    """
    try:
        b = backend_of(qmodel, backend)
    except ValueError:
        raise ValueError("prepare_qat: the model has no quantizers; quantize it with quantize_ptq first") from None
    quantizers = list(iter_quantizers(qmodel, b))
    if not quantizers:
        raise ValueError("prepare_qat: the model has no quantizers; quantize it with quantize_ptq first")
    # Quantizers that saw no calibration data were switched off by the backend and keep no amax.
    if all(b.amax(q) is None for _, q in quantizers):
        raise ValueError("prepare_qat: no quantizer has a calibrated amax; run quantize_ptq first")
    b.refresh_weight_amax(qmodel)
    for p in qmodel.parameters():
        p.requires_grad_(True)
    return qmodel.train()


def supervised_loss(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], preprocess: Preprocess,
                    device: str | torch.device = "cpu") -> Callable[[nn.Module, Any], torch.Tensor]:
    """``batch_loss(model, (uint8 images, targets, ...)) = loss_fn(model(preprocess(images)), targets)``."""

    def batch_loss(model: nn.Module, batch: Any) -> torch.Tensor:
        return loss_fn(model(preprocess(batch[0].to(device))), batch[1].to(device))

    return batch_loss


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """lr multiplier: linear 1/warmup -> 1 over ``warmup`` steps, then cosine 1 -> 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def qat_finetune(model: nn.Module, loader: Iterable, preprocess: Preprocess,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None, epochs: int = 10,
                 warmup_epochs: int = 3, lr: float = 0.01, device: str | torch.device = "cpu",
                 momentum: float = 0.9, weight_decay: float = 1e-4, backend: str | None = None,
                 progress: bool = True, batch_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None
                 ) -> list[float]:
    """SGD fine-tuning of a :func:`prepare_qat` model; returns the mean training loss per epoch.

    loader yields (uint8 images (N, 3, H, W), targets); ``loss_fn(model(preprocess(images)), targets)``.
    ``batch_loss(model, batch)`` replaces that for batches of another shape (a detector's (images,
    targets, infos) and its assigner-based loss); ``loss_fn`` and ``preprocess`` are then unused.
    """
    if batch_loss is None:
        batch_loss = supervised_loss(loss_fn, preprocess, device)
    if epochs < 1 or warmup_epochs < 0:
        raise ValueError(f"qat_finetune: epochs >= 1 and warmup_epochs >= 0 required, got {epochs}, {warmup_epochs}")
    b = backend_of(model, backend)
    model.to(device).train()
    steps_per_epoch = len(loader) if hasattr(loader, "__len__") else None
    if not steps_per_epoch:
        raise ValueError("qat_finetune: the loader must be non-empty and have a length (for the lr schedule)")
    total, warmup = epochs * steps_per_epoch, warmup_epochs * steps_per_epoch
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum,
                                weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))
    history = []
    for epoch in range(epochs):
        running, seen = 0.0, 0
        for batch in tqdm(loader, desc=f"qat {epoch + 1}/{epochs}", disable=not progress, leave=False):
            images = batch[0]
            loss = batch_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            b.refresh_weight_amax(model)  # weight scales follow the updated weights
            running += float(loss.detach()) * len(images)
            seen += len(images)
        history.append(running / max(seen, 1))
        log.info("qat epoch %d/%d: loss %.4f", epoch + 1, epochs, history[-1])
    return history


@torch.no_grad()
def fold_after_qat(model: nn.Module, backend: str | None = None) -> nn.Module:
    """Fold every post-BN kept for QAT into its quantized conv, IN PLACE; returns the eval-mode model.

    ConvBNAct(quant conv, BN, act) becomes ConvAct(quant conv, act) with w' = w*s, b' = (b-mean)*s+beta,
    s = gamma/sqrt(var+eps). Per-channel symmetric weight quantization commutes with that per-channel
    scaling, so the weight amax is re-calibrated (max |w'| per channel) and the INT8 weights are unchanged.
    """
    b = backend_of(model, backend)
    model.eval()

    def walk(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, ConvBNAct) and b.is_quant_layer(child.conv):
                conv = child.conv
                weight, bias = kernels.fold_bn(conv.weight, conv.bias, child.bn)
                conv.weight.copy_(weight)
                if conv.bias is None:
                    conv.bias = nn.Parameter(bias)
                else:
                    conv.bias.copy_(bias)
                setattr(module, name, ConvAct(conv, child.act))
            else:
                walk(child)

    walk(model)
    b.refresh_weight_amax(model)
    return model
