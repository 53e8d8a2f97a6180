"""Rebuild a classifier or detector from a checkpoint's plain metadata.

Below ``tasks/`` (and below ``integrations/``), so that every loader shares it: the task rows, the
Hyper-Search loader of RepOptimizer training (:func:`qarep_dense.engine.checkpoint.load_hs_model`) and the
mmseg backbone's. A segmentor's metadata is an mmseg config: ``integrations.mmseg.model_from_meta`` builds it.
"""
from __future__ import annotations

from torch import nn

from .classifier import build_classifier
from .detector import TORCH_BN_EPS, TORCH_BN_MOMENTUM, build_detector, build_trunk_detector

# The metadata keys each family needs (the callers name a file that lacks one).
REQUIRED_KEYS = {"cls": ("arch", "block", "num_classes"), "det": ("scale", "block", "num_classes")}


def classifier_from_meta(meta: dict) -> nn.Module:
    """The train-form classifier of ``meta`` (``stem_stride`` 2 when unrecorded: the ImageNet stem)."""
    return build_classifier(meta["arch"], meta["block"], meta["num_classes"], stem_stride=meta.get("stem_stride", 2))


def detector_from_meta(meta: dict) -> nn.Module:
    """The train-form detector of ``meta``. A checkpoint without ``bn_eps`` / ``bn_momentum`` was trained with
    PyTorch's BatchNorm defaults (1e-5 / 0.1) and is rebuilt with them, so its outputs do not change. A
    detector on the zoo trunk (``backbone`` "trunk") also needs ``arch`` and ``stem_stride``."""
    if meta.get("backbone", "efficientrep") == "trunk":
        return build_trunk_detector(meta["arch"], meta["block"], meta["scale"], meta["num_classes"],
                                    meta["stem_stride"], use_dfl=meta.get("use_dfl", False),
                                    reg_max=meta.get("reg_max", 16), head_act=meta.get("head_act", "silu"),
                                    bn_eps=meta["bn_eps"], bn_momentum=meta["bn_momentum"])
    return build_detector(meta["scale"], meta["block"], meta["num_classes"], use_dfl=meta.get("use_dfl", False),
                          reg_max=meta.get("reg_max", 16), head_act=meta.get("head_act", "silu"),
                          bn_eps=meta.get("bn_eps", TORCH_BN_EPS), bn_momentum=meta.get("bn_momentum", TORCH_BN_MOMENTUM))


BUILDERS = {"cls": classifier_from_meta, "det": detector_from_meta}
