"""What configs name by ``type``, registered in mmseg's registries (the package's import does it):

* ``QARepVGGBackbone`` (MODELS): the zoo trunk (:class:`~qarep_dense.models.backbones.RepTrunk`) with
  ``arch``, ``block``, ``out_indices``, ``strides``, ``dilations`` / ``output_stride``, ``norm_eval``,
  ``frozen_stages`` and ``init_cfg=dict(type='Pretrained', checkpoint=...)`` that loads one of OUR
  classification checkpoints strictly (every missing or unexpected key named);
* ``CheckSegLabels`` (TRANSFORMS): fails naming the label file when it holds ids outside 0..C-1 and
  the ignore index (mmseg's metric would silently drop them);
* ``ChannelsLastHook`` (HOOKS): trains with channels-last weights (``custom_hooks=[dict(type='ChannelsLastHook')]``,
  what ``train.channels_last`` is to the other tasks);
* ``RepOptimizerConstructor`` (OPTIM_WRAPPER_CONSTRUCTORS): RepOptimizer SGD with the gradient masks of
  a Hyper-Search classification checkpoint on the backbone, plain SGD on the heads. It reads that
  checkpoint with :func:`~qarep_dense.engine.checkpoint.load_hs_model`, the recipes' own loader.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper
from mmseg.registry import HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, TRANSFORMS
from mmseg.utils import register_all_modules
from torch import nn

from ...engine.checkpoint import CheckpointError, load_hs_model, load_pretrained_trunk
from ...models.backbones.rep_trunk import OUTPUT_STRIDES, RepTrunk

log = logging.getLogger(__name__)
register_all_modules(init_default_scope=False)

@MODELS.register_module()
class QARepVGGBackbone(RepTrunk):
    """The zoo trunk as an mmseg backbone (RepVGG, QARepVGG and every other block type).

    arch: a zoo row ("B1g4", "A0", "A0h", "test" ...); block: a block type ("qarepvgg", "repvgg",
    "repopt", "hs" ...); out_indices: stages 0..4 returned (default 1..4, strides 4/8/16/32);
    strides/dilations: per stage, or ``output_stride`` 32/16/8 for the standard pairs.
    norm_eval: keep BN statistics frozen in training; frozen_stages: stages 0..k get no gradient.
    init_cfg: None (fresh init) or ``dict(type='Pretrained', checkpoint=PATH)`` with a qarep-dense
    classification checkpoint of the same arch and block (train form; its ``fc`` is dropped).
    Input (N, 3, H, W) -> tuple of (N, out_channels[i], H/out_strides[i], W/out_strides[i]).
    """

    def __init__(self, arch: str = "B1g4", block: str = "qarepvgg", in_channels: int = 3,
                 out_indices: tuple[int, ...] = (1, 2, 3, 4), strides: tuple[int, ...] | None = None,
                 dilations: tuple[int, ...] | None = None, output_stride: int | None = None,
                 norm_eval: bool = False, frozen_stages: int = -1, init_cfg: dict | None = None):
        if output_stride is not None:
            if output_stride not in OUTPUT_STRIDES:
                raise ValueError(f"QARepVGGBackbone: output_stride must be one of {sorted(OUTPUT_STRIDES)}, "
                                 f"got {output_stride}")
            if strides is not None or dilations is not None:
                raise ValueError("QARepVGGBackbone: give output_stride or strides/dilations, not both")
            strides, dilations = OUTPUT_STRIDES[output_stride]
        strides = OUTPUT_STRIDES[32][0] if strides is None else tuple(strides)
        dilations = OUTPUT_STRIDES[32][1] if dilations is None else tuple(dilations)
        super().__init__(arch, block, in_channels, tuple(out_indices), strides, dilations)
        if not -1 <= frozen_stages < len(self.stages):
            raise ValueError(f"QARepVGGBackbone: frozen_stages must be -1..{len(self.stages) - 1}, got {frozen_stages}")
        if init_cfg is not None and (not isinstance(init_cfg, dict) or init_cfg.get("type") != "Pretrained"
                                     or not init_cfg.get("checkpoint")):
            raise ValueError(f"QARepVGGBackbone: init_cfg must be None or dict(type='Pretrained', checkpoint=PATH), "
                             f"got {init_cfg!r}")
        self.norm_eval, self.frozen_stages, self.init_cfg = norm_eval, frozen_stages, init_cfg
        self._freeze_stages()

    def init_weights(self) -> None:
        """Load the pretrained classification checkpoint named by ``init_cfg`` (mmengine calls this)."""
        if self.init_cfg is None:
            return
        path = str(self.init_cfg["checkpoint"])
        load_pretrained_trunk(self, path)  # strict: names missing / unexpected / mis-shaped keys
        log.info("backbone %s/%s loaded from %s", self.arch, self.block, path)
        self._freeze_stages()

    def _freeze_stages(self) -> None:
        for stage in self.stages[: self.frozen_stages + 1]:
            stage.eval()
            for p in stage.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> "QARepVGGBackbone":
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


# --- data checks ---------------------------------------------------------------------------------

@TRANSFORMS.register_module()
class CheckSegLabels:
    """Pipeline step after ``LoadAnnotations``: raise naming the label file if it holds an id outside
    0..num_classes-1 and ``ignore_index`` (mmseg's IoU metric would silently drop such pixels).
    Without labels (mmseg's inference pipeline) it passes the sample through."""

    def __init__(self, num_classes: int = 19, ignore_index: int = 255):
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)

    def __call__(self, results: dict) -> dict:
        if "gt_seg_map" not in results:  # inference: mmseg.apis.inference_model drops LoadAnnotations
            return results
        seg = np.asarray(results["gt_seg_map"])
        counts = np.bincount(seg.ravel().astype(np.int64, copy=False), minlength=256)
        counts[: self.num_classes] = 0
        if 0 <= self.ignore_index < counts.size:
            counts[self.ignore_index] = 0
        bad = np.flatnonzero(counts)
        if bad.size:
            raise ValueError(f"{results.get('seg_map_path')}: label ids {bad[:10].tolist()} are outside "
                             f"0..{self.num_classes - 1} and the ignore index {self.ignore_index} "
                             f"(is it a labelIds map instead of labelTrainIds?)")
        return results

    def __repr__(self) -> str:
        return f"CheckSegLabels(num_classes={self.num_classes}, ignore_index={self.ignore_index})"


# --- RepOptimizer --------------------------------------------------------------------------------

@HOOKS.register_module()
class ChannelsLastHook(Hook):
    """Puts the model's weights in channels-last memory order before training starts (after a resume's load).

    Convolutions follow their weight's memory format, so the activations follow too: the same arithmetic in
    another order, 1.25x faster per step of the digit-canvas FCN on one CPU thread (``benchmarks/bench_train_speed.py``);
    the kernels round differently, so a run's numbers differ slightly from an NCHW run of the same seed. The
    parameters stay the same objects (their data is re-laid), so the optimizer built before keeps them.
    """

    priority = "VERY_HIGH"

    def before_train(self, runner) -> None:
        runner.model.to(memory_format=torch.channels_last)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class RepOptimizerConstructor:
    """``optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=..., momentum=...,
    weight_decay=...), constructor='RepOptimizerConstructor', paramwise_cfg=dict(hs_checkpoint=PATH))``.

    PATH: a qarep-dense Hyper-Search ('hs') classification checkpoint of the backbone's arch. Its
    scales give the gradient masks of the backbone's 'repopt' convs; the heads get plain SGD. A
    backbone without a pretrained ``init_cfg`` is re-initialised from the scales (a pretrained
    RepOpt-VGG backbone was trained with the same masks and keeps its weights).
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None):
        self.cfg = dict(optim_wrapper_cfg)
        self.hs_checkpoint = (paramwise_cfg or {}).get("hs_checkpoint")
        if not self.hs_checkpoint:
            raise ValueError("RepOptimizerConstructor needs paramwise_cfg=dict(hs_checkpoint=PATH)")

    def __call__(self, model: nn.Module) -> OptimWrapper:
        from ...optim.repopt import RepOptimizerSGD, extract_scales, gradient_masks, init_target_from_scales
        from ...optim.weight_decay import param_groups

        model = model.module if is_model_wrapper(model) else model
        backbone = model.backbone
        hs_model = load_hs_model(self.hs_checkpoint, "cls", "paramwise_cfg.hs_checkpoint", arch=backbone.arch)
        if backbone.block != "repopt":
            raise ValueError(f"RepOptimizerConstructor trains block 'repopt', the backbone has {backbone.block!r}")
        scales = extract_scales(hs_model)  # keys "stages.N.M": the trunk's own module names
        if backbone.init_cfg is None:
            init_target_from_scales(backbone, scales)
        cfg = dict(self.cfg)
        opt = dict(cfg.pop("optimizer"))
        if opt.pop("type") != "SGD":
            raise ValueError("RepOptimizerConstructor: optimizer type must be 'SGD'")
        wd = opt.pop("weight_decay", 0.0)
        optimizer = RepOptimizerSGD(param_groups(model, wd), opt.pop("lr"), opt.pop("momentum", 0.9), wd,
                                    opt.pop("nesterov", False), masks=gradient_masks(backbone, scales))
        wrapper_type = cfg.pop("type", "OptimWrapper")
        from mmseg.registry import OPTIM_WRAPPERS

        return OPTIM_WRAPPERS.build(dict(type=wrapper_type, optimizer=optimizer, **cfg))


__all__ = ["QARepVGGBackbone", "CheckSegLabels", "RepOptimizerConstructor"]
