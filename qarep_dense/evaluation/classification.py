"""Top-k accuracy of a classifier over a loader of (uint8 images, labels)."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from tqdm import tqdm

from ..data.preprocess import Preprocess


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader: Iterable, preprocess: Preprocess,
                        device: str | torch.device = "cpu", topk: tuple[int, ...] = (1, 5),
                        progress: bool = False, desc: str = "eval") -> dict[str, float]:
    """Returns {"top1": %, "top5": %, "n": count}; k larger than the class count is clipped."""
    model.eval()
    correct = {k: 0 for k in topk}
    total = 0
    for images, labels in tqdm(loader, desc=desc, disable=not progress, leave=False):
        logits = model(preprocess(images.to(device)))
        labels = labels.to(device)
        top = logits.topk(min(max(topk), logits.shape[1]), dim=1).indices
        hits = top.eq(labels[:, None])
        for k in topk:
            correct[k] += int(hits[:, :k].any(dim=1).sum())
        total += labels.numel()
    if total == 0:
        raise ValueError("evaluate_classifier: the loader yielded no samples")
    result = {f"top{k}": 100.0 * correct[k] / total for k in topk}
    result["n"] = total
    return result
