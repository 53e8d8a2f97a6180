"""YOLOv6 (v2-era) detector: EfficientRep backbone + Rep-PAN neck + efficient decoupled head.

Sizes are rows of ``DETECTOR_SCALES`` (n, t, s, test); the 3x3 block is any key of ``BLOCK_TYPES``.
Forward always returns the raw head tensors; fusion is ``qarep_dense.layers.reparameterize(detector)``
and decoding/NMS are plain functions in :mod:`qarep_dense.models.postprocess`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..layers import block_spec
from ..ops import make_anchor_points
from .backbones import EfficientRep, RepTrunk
from .heads import EffiDeHead
from .necks import RepPANNeck
from .zoo import YOLOV6_BASE_CHANNELS, YOLOV6_BASE_REPEATS, detector_scale

# YOLOv6's ``initialize_weights`` sets every BatchNorm2d of the model to these; official weights
# reproduce only with them (PyTorch's 1e-5 / 0.1 move outputs by up to 0.58 on YOLOv6-n/t/s).
YOLOV6_BN_EPS = 1e-3
YOLOV6_BN_MOMENTUM = 0.03
# What detectors were built with before the BN settings were recorded in checkpoints.
TORCH_BN_EPS = 1e-5
TORCH_BN_MOMENTUM = 0.1


def scaled_repeats(depth: float) -> tuple[int, ...]:
    """YOLOv6 depth rule: n -> max(round(n * depth), 1) for n > 1, single blocks stay single."""
    return tuple(max(round(n * depth), 1) if n > 1 else n for n in YOLOV6_BASE_REPEATS)


def scaled_channels(width: float) -> tuple[int, ...]:
    """YOLOv6 width rule: c -> ceil(c * width / 8) * 8 (multiples of 8 suit INT8 kernels)."""
    return tuple(math.ceil(c * width / 8) * 8 for c in YOLOV6_BASE_CHANNELS)


class Detector(nn.Module):
    """Backbone -> neck -> head. Input (N, 3, H, W), H and W multiples of 32 ->
    (cls_logits (N, A, num_classes), reg (N, A, 4 * (reg_max + 1))), A = sum over strides 8, 16, 32
    of (H/s) * (W/s), levels in stride order, cells row-major (as :meth:`anchors` lays them out).
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: EffiDeHead):
        super().__init__()
        self.backbone, self.neck, self.head = backbone, neck, head
        self.strides: tuple[int, int, int] = tuple(neck.strides)
        self.num_classes, self.reg_max = head.num_classes, head.reg_max

    def feature_sizes(self, h: int, w: int) -> list[tuple[int, int]]:
        """(H/s, W/s) per output level; raises if the input does not divide by the largest stride."""
        top = max(self.strides)
        if h <= 0 or w <= 0 or h % top or w % top:
            raise ValueError(f"detector input size {h}x{w} must be positive multiples of {top} "
                             f"(the top-down path upsamples stride {top} back onto stride {top // 2}); "
                             "letterbox the image to a multiple of the stride")
        return [(h // s, w // s) for s in self.strides]

    def anchors(self, h: int, w: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Anchor points (A, 2) xy pixels (cell centres) and stride_tensor (A, 1) for an H x W input."""
        return make_anchor_points(self.feature_sizes(h, w), list(self.strides), device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"detector input must be (N, C, H, W), got shape {tuple(x.shape)}")
        if not torch.jit.is_tracing():  # traced sizes are tensors; the export shape is checked eagerly
            self.feature_sizes(x.shape[-2], x.shape[-1])  # clear error instead of a concat shape mismatch
        return self.head(self.neck(self.backbone(x)))


def set_batchnorm(model: nn.Module, eps: float, momentum: float) -> nn.Module:
    """Give every ``BatchNorm2d`` of ``model`` this eps and momentum (in place; returns ``model``)."""
    if eps <= 0 or not 0 < momentum <= 1:
        raise ValueError(f"BatchNorm eps must be > 0 and momentum in (0, 1], got eps={eps}, momentum={momentum}")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = float(eps), float(momentum)
    return model


def build_detector(scale: str, block: str = "qarepvgg", num_classes: int = 80, use_dfl: bool | None = None,
                   reg_max: int = 16, head_act: str | None = "silu", bn_eps: float = YOLOV6_BN_EPS,
                   bn_momentum: float = YOLOV6_BN_MOMENTUM) -> Detector:
    """Build a YOLOv6 v2-era detector, e.g. ``build_detector("s", "qarepvgg")``.

    scale: a key of ``DETECTOR_SCALES`` ("n", "t", "s", "test"). block: a key of ``BLOCK_TYPES``.
    use_dfl: None picks the YOLOv6 v2.0 release setting, which trained n/t/s (and our test row)
    without DFL (plain ltrb regression, reg_max forced to 0); True uses DFL with ``reg_max`` bins.
    Backbone and neck use ReLU (YOLOv6's rep blocks and SimConv; quantization friendly); the head
    convs use ``head_act`` (SiLU in YOLOv6 v2). Every BatchNorm gets ``bn_eps`` / ``bn_momentum``:
    YOLOv6's 1e-3 / 0.03 by default; checkpoints written before these were recorded used PyTorch's
    1e-5 / 0.1 (:data:`TORCH_BN_EPS`, :data:`TORCH_BN_MOMENTUM`).
    """
    spec = detector_scale(scale)
    block_spec(block)
    repeats, channels = scaled_repeats(spec.depth), scaled_channels(spec.width)
    backbone = EfficientRep(channels[:5], repeats[:5], block)
    return set_batchnorm(_with_neck_and_head(backbone, (8, 16, 32), scale, block, num_classes, use_dfl, reg_max,
                                             head_act), bn_eps, bn_momentum)


def _with_neck_and_head(backbone: nn.Module, strides: tuple[int, int, int], scale: str, block: str, num_classes: int,
                        use_dfl: bool | None, reg_max: int, head_act: str | None) -> Detector:
    """``backbone`` (three outputs at ``strides``) under the Rep-PAN neck and the efficient head of ``scale``."""
    spec = detector_scale(scale)
    if use_dfl is None:
        use_dfl = False  # every scale in our table is an n/t/s-class model (no DFL in v2.0)
    if use_dfl and reg_max < 1:
        raise ValueError(f"use_dfl=True needs reg_max >= 1, got reg_max={reg_max}")
    repeats, channels = scaled_repeats(spec.depth), scaled_channels(spec.width)
    neck = RepPANNeck(backbone.out_channels, channels[5:], repeats[5:], block, strides=strides)
    head = EffiDeHead(neck.out_channels, num_classes, reg_max if use_dfl else 0, head_act)
    return Detector(backbone, neck, head)


# The trunk stages that feed the neck: 2, 3, 4 (strides 4/8/16 at stem stride 1, 8/16/32 at stem stride 2).
TRUNK_OUT_INDICES = (2, 3, 4)


def build_trunk_detector(arch: str, block: str, scale: str, num_classes: int, stem_stride: int = 2,
                         use_dfl: bool | None = None, reg_max: int = 16, head_act: str | None = "silu",
                         bn_eps: float = YOLOV6_BN_EPS, bn_momentum: float = YOLOV6_BN_MOMENTUM) -> Detector:
    """The classification zoo's trunk (row ``arch``) under the Rep-PAN neck and efficient head of ``scale``.

    The backbone of a detector fine-tuned from a classifier, as the paper's downstream models start from
    ImageNet backbones: its ``stages.*`` keys are a classifier checkpoint's (load them with
    :func:`qarep_dense.engine.checkpoint.load_pretrained_trunk`). ``stem_stride``: the classifier's (1 for
    the digits classifiers, 2 for ImageNet's). The trunk's BatchNorms keep the classifier's settings
    (PyTorch's eps 1e-5, momentum 0.1): a pretrained channel means what it meant in pretraining; YOLOv6's
    ``bn_eps`` / ``bn_momentum`` go to the neck and head.
    """
    if stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
    block_spec(block)
    trunk = RepTrunk(arch, block, out_indices=TRUNK_OUT_INDICES, strides=(stem_stride, 2, 2, 2, 2))
    detector = _with_neck_and_head(trunk, trunk.out_strides, scale, block, num_classes, use_dfl, reg_max, head_act)
    set_batchnorm(detector.neck, bn_eps, bn_momentum)
    set_batchnorm(detector.head, bn_eps, bn_momentum)
    return detector
