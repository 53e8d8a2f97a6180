"""mmseg segmentors as the project's models: build from a config, tensor in / logits out, fusion, metadata.

:class:`SegmentorLogits` wraps an mmseg ``EncoderDecoder`` as (N, 3, H, W) -> (N, classes, H, W) logits
(what quantization, ONNX export and ONNX Runtime see); its ``fuse()`` re-parameterizes the backbone and
folds the heads' BN. :func:`seg_meta` / :func:`model_from_meta` are the plain metadata a project
checkpoint stores and the model it describes.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from mmengine.config import Config
from mmseg.registry import MODELS
from torch import nn

from ...engine.checkpoint import CheckpointError
from .runner import config_from_text


def build_segmentor(model_cfg: dict) -> nn.Module:
    """An mmseg segmentor from a config's ``model`` dict (registry scope "mmseg")."""
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope("mmseg"):
        return MODELS.build(model_cfg)


class _LogitsForward(nn.Module):
    """(N, 3, H, W) normalised RGB -> (N, num_classes, H, W) logits of ``segmentor``'s decode head.

    The same computation as mmseg's whole-image ``predict`` without its data preprocessor and
    metas, so quantization, ONNX export and ONNX Runtime see a plain tensor graph.
    """

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.segmentor.decode_head(self.segmentor.extract_feat(x))
        return nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear",
                                         align_corners=self.segmentor.align_corners)


class DeploySegmentorLogits(_LogitsForward):
    """The fused form: backbone re-parameterized, every ConvModule's BN folded (unless fused with
    ``fold_bn=False``), no auxiliary head."""


class SegmentorLogits(_LogitsForward):
    """The train form; ``fuse()`` returns its :class:`DeploySegmentorLogits` (``reparameterize`` calls it).

    ``fuse(fold_bn=False)`` is the QAT form: every BN after a fused conv stays, in the backbone (QARepVGG's
    post-BN) and in the heads' ConvModules alike.
    """

    fuse_takes_fold_bn = True  # reparameterize passes its fold_bn through (layers/rep.py)

    def fuse(self, fold_bn: bool = True) -> DeploySegmentorLogits:
        from ...layers.rep import reparameterize

        segmentor = copy.deepcopy(self.segmentor).eval()
        segmentor.backbone = reparameterize(segmentor.backbone, fold_bn=fold_bn)
        if fold_bn:
            fold_conv_module_bn(segmentor)
        if getattr(segmentor, "auxiliary_head", None) is not None:
            segmentor.auxiliary_head = None  # training-only loss branch
        return DeploySegmentorLogits(segmentor)


def fold_conv_module_bn(model: nn.Module) -> int:
    """Fold the BN of every mmcv ``ConvModule`` (conv -> norm -> act) into its conv, in place (eval mode).

    An integer kernel needs ``DQ -> Conv -> Q``: a BN left between conv and quantizer keeps the
    head's convs float in ONNX Runtime. Returns the number of folded modules.
    """
    from mmcv.cnn import ConvModule
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for m in model.modules():
        if isinstance(m, ConvModule) and m.with_norm and isinstance(m.norm, nn.modules.batchnorm._BatchNorm) \
                and m.order.index("norm") == m.order.index("conv") + 1 and isinstance(m.conv, nn.Conv2d):
            m.conv = fuse_conv_bn_eval(m.conv.eval(), m.norm.eval())
            setattr(m, m.norm_name, nn.Identity())
            folded += 1
    return folded


def revert_sync_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every SyncBatchNorm (``sync_bn='torch'`` under DDP) back to BatchNorm2d."""
    from mmengine.model import revert_sync_batchnorm

    return revert_sync_batchnorm(copy.deepcopy(model))


def seg_meta(cfg: Config) -> dict:
    """Plain metadata of a segmentation checkpoint: the whole config as text, plus the fields the
    tools compare (arch, block, classes, crop) and the uint8 -> float preprocessing."""
    from ...data.preprocess import Preprocess
    from .data import preprocess_of

    backbone = cfg.model.backbone
    pre: Preprocess = preprocess_of(cfg)
    crop = cfg.get("crop_size")
    return {"task": "seg", "arch": backbone.get("arch"), "block": backbone.get("block"),
            "num_classes": int(cfg.model.decode_head.num_classes), "head": cfg.model.decode_head.type,
            "image_size": list(crop) if crop else None, "fused": False, "fold_bn": True,
            "preprocess": pre.as_dict(), "data_root": cfg.get("data_root"), "mmseg_config": cfg.pretty_text}


def model_from_meta(meta: dict) -> SegmentorLogits:
    """The train-form :class:`SegmentorLogits` a segmentation checkpoint's metadata describes."""
    cfg = config_from_text(meta["mmseg_config"])
    model_cfg = cfg.model.to_dict()
    model_cfg["backbone"]["init_cfg"] = None  # weights come from the checkpoint, not the pretrained file
    return SegmentorLogits(build_segmentor(model_cfg))


def decode_head_loss(cfg: Config):
    """``loss(logits (N, C, H, W), ground truths [(H_i, W_i)]) -> scalar``: the config's decode-head loss, as
    mmseg's ``BaseDecodeHead.loss_by_feat`` applies it (logits resized bilinearly to the labels with the head's
    ``align_corners``, every ``loss_decode`` module summed, the head's ``ignore_index``).

    The QAT loss of a :class:`DeploySegmentorLogits`, which has no auxiliary head and takes no data samples,
    so the head's own method cannot be called on it. Ground truths of different sizes are scored one by one.
    """
    from mmengine.registry import DefaultScope

    head = cfg.model.decode_head
    specs = head.get("loss_decode", dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0))
    with DefaultScope.overwrite_default_scope("mmseg"):
        losses = [MODELS.build(spec) for spec in (specs if isinstance(specs, (list, tuple)) else [specs])]
    ignore, align = int(head.get("ignore_index", 255)), bool(head.get("align_corners", False))

    def loss(logits: torch.Tensor, gts: list[torch.Tensor]) -> torch.Tensor:
        if len({tuple(gt.shape) for gt in gts}) > 1:
            return torch.stack([loss(logit[None], [gt]) for logit, gt in zip(logits, gts)]).mean()
        labels = torch.stack(list(gts)).to(logits.device).long()
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = nn.functional.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=align)
        return sum(fn(logits, labels, ignore_index=ignore) for fn in losses)

    return loss


def read_mmengine_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(state dict of :class:`SegmentorLogits`, metadata) of a checkpoint mmengine's Runner wrote during a
    segmentation run (``iter_*.pth``): its config is in the file, its weights are the segmentor's."""
    from .checkpoints import check_mmengine_checkpoint

    payload = check_mmengine_checkpoint(path, "checkpoint", resume=True)
    text = (payload.get("meta") or {}).get("cfg")
    if not isinstance(text, str):
        raise CheckpointError(f"{path}: an mmengine checkpoint without its config (meta['cfg']); evaluate the "
                              "project's last.pt / deploy.pt of the run instead")
    return {f"segmentor.{k}": v for k, v in payload["state_dict"].items()}, seg_meta(config_from_text(text))


__all__ = ["build_segmentor", "SegmentorLogits", "DeploySegmentorLogits", "fold_conv_module_bn", "revert_sync_bn",
           "seg_meta", "model_from_meta", "decode_head_loss", "read_mmengine_checkpoint"]
