"""timm ``repvgg_*``, official RepVGG / QARepVGG / RepOptimizer classifiers -> our zoo classifier.

The official QARepVGG code (cxxgtxy/QARepVGG) keeps the RepVGG layout: its QARepVGGBlockV2 is our
``qarepvgg`` (not our ``qarepvgg_v2``, which is YOLOv6's block with an average-pool branch), its
QARepVGGBlock our ``qarepvgg_no_bn3x3_post_bn``. A deploy form without a post-BN cannot tell which block
was trained (RepVGG and QARepVGG both deploy to one conv with bias), so the user names it.

Layouts (module paths; the keys inside a block are renamed by the block tables):

=================  =======================  ====================  ===========================
ours               timm (byobnet)           official RepVGG       RepOpt-VGG (RepOptimizers)
=================  =======================  ====================  ===========================
stages.0.0         stem                     stage0                stage0
stages.k.j         stages.{k-1}.j           stage{k}.j            stage{k}.j
fc                 head.fc                  linear                linear
branch_3x3         conv_kxk.{conv,bn}       rbr_dense.{conv,bn}   conv_3x3 / bn_3x3 ("repvgg")
branch_1x1         conv_1x1.{conv,bn}       rbr_1x1.{conv,bn}     conv_1x1 / bn_1x1
branch_identity    identity                 rbr_identity          bn_identity
fused conv         reparam_conv             rbr_reparam           --
RepOpt target      --                       --                    conv, bn ("target")
Hyper-Search       --                       --                    conv, scale_conv, conv_1x1,
                                                                  scale_1x1, scale_identity, bn
=================  =======================  ====================  ===========================
"""
from __future__ import annotations

import re

import torch
from torch import nn

from ..layers import BLOCK_TYPES, reparameterize
from ..models.classifier import build_classifier
from ..models.zoo import CLASSIFIER_ARCHS
from .common import RBR_BLOCKS, RBR_FUSED, BlockTable, ConversionError, PathRule, fit_state, has_part, \
    rename_state, rule

TIMM_RULES = [
    rule(r"stem\.", "stages.0.0.", block=True),
    rule(r"stages\.(?P<s>\d+)\.(?P<b>\d+)\.", lambda m: f"stages.{int(m['s']) + 1}.{m['b']}.", block=True),
    rule(r"head\.fc\.", "fc."),
]
OFFICIAL_RULES = [
    rule(r"stage0\.", "stages.0.0.", block=True),
    rule(r"stage(?P<s>[1-4])\.(?P<b>\d+)\.", "stages.{s}.{b}.", block=True),
    rule(r"linear\.", "fc."),
]
TIMM_BLOCK: BlockTable = (("conv_kxk.conv.", "branch_3x3.conv."), ("conv_kxk.bn.", "branch_3x3.bn."),
                          ("conv_1x1.conv.", "branch_1x1.conv."), ("conv_1x1.bn.", "branch_1x1.bn."),
                          ("identity.", "branch_identity."))
TIMM_FUSED: BlockTable = (("reparam_conv.", "conv."),)
# The RepOptimizers repo's own RepVGG baseline names its branches differently.
REPOPT_REPVGG_BLOCK: BlockTable = (("conv_3x3.", "branch_3x3.conv."), ("bn_3x3.", "branch_3x3.bn."),
                                   ("conv_1x1.", "branch_1x1.conv."), ("bn_1x1.", "branch_1x1.bn."),
                                   ("bn_identity.", "branch_identity."))

SOURCES = ("timm", "repvgg")


# Our "qarepvgg_v2" is YOLOv6's QARepVGGBlockV2 (with a weightless 3x3 average-pool branch); the official
# QARepVGG code's QARepVGGBlockV2 is our "qarepvgg". Same keys, different functions: refused by name.
NAMING_CLASH = ("--block qarepvgg_v2 is YOLOv6's QARepVGGBlockV2: QARepVGG plus a 3x3 average-pool branch, which "
                "has no weights, so the keys would map while the network computes something else. No official "
                "classifier code has that block. The official QARepVGG code's QARepVGGBlockV2 (its default, "
                "'QARepVGGV2-*') is our 'qarepvgg': pass --block qarepvgg or leave --block out")
# A deploy form without a post-BN is one 3x3 conv with bias per block, whatever was trained.
DEPLOY_UNKNOWN = ("a deploy-form checkpoint (rbr_reparam, no post-BN) is one 3x3 conv with bias per block: the "
                  "official RepVGG and QARepVGG codes (which folds its post-BN into that conv) write the same "
                  "keys, so the file cannot tell which block was trained. Pass --block repvgg or --block qarepvgg "
                  "(the converted network is the same; the choice is what the checkpoint records)")


def _official_train_block(state: dict[str, torch.Tensor]) -> str:
    """The block type of an official train-form (rbr_*) checkpoint, from its key names."""
    if has_part(state, "rbr_1x1.conv"):
        return "repvgg"
    if has_part(state, "rbr_dense.conv"):
        return "qarepvgg"  # 3x3 conv + BN (the official QARepVGG code's QARepVGGBlockV2; YOLOv6's QARepVGGBlock)
    return "qarepvgg_no_bn3x3_post_bn"  # plain rbr_dense conv: the official QARepVGG code's QARepVGGBlock


def _detect_block(state: dict[str, torch.Tensor], source: str, block: str | None, origin: str
                  ) -> tuple[str, bool, bool, BlockTable]:
    """(block type, fused?, fold_bn, block table) from the key names; ``block`` overrides the guess.

    ``fold_bn`` is False only for a deploy form that keeps its post-BN (YOLOv6's QAT form).
    """
    if source == "timm":
        fused = has_part(state, "reparam_conv")
        if block not in (None, "repvgg"):
            raise ConversionError(f"timm repvgg_* models are RepVGG blocks; --block {block!r} does not apply")
        return "repvgg", fused, True, TIMM_FUSED if fused else TIMM_BLOCK
    if block == "qarepvgg_v2":
        raise ConversionError(f"{origin}: {NAMING_CLASH}")
    if has_part(state, "rbr_reparam"):
        post_bn = any(re.fullmatch(r"stage\d(\.\d+)?\.bn\..+", k) for k in state)
        if block is None and not post_bn:
            raise ConversionError(f"{origin}: {DEPLOY_UNKNOWN}")
        block = block or "qarepvgg"
        if block not in RBR_BLOCKS or block in ("repopt", "hs"):
            raise ConversionError(f"a deploy-form (rbr_reparam) checkpoint cannot be block {block!r}; expected one "
                                  f"of {sorted(set(RBR_BLOCKS) - {'repopt', 'hs', 'qarepvgg_v2'})}")
        if post_bn and not BLOCK_TYPES[block].post_bn:
            raise ConversionError(f"{origin}: the deploy form keeps a post-BN after each conv, which block "
                                  f"{block!r} does not have (a QARepVGG block does)")
        return block, True, not post_bn, RBR_FUSED[post_bn]
    if has_part(state, "bn_3x3"):
        return block or "repvgg", False, True, REPOPT_REPVGG_BLOCK
    if has_part(state, "rbr_dense"):
        found = _official_train_block(state)
        if block is not None and block in RBR_BLOCKS and RBR_BLOCKS[block] != RBR_BLOCKS[found]:
            raise ConversionError(f"{origin}: --block {block!r} but the keys are those of block {found!r}")
        guess = block or found
    elif has_part(state, "scale_conv"):
        guess = block or "hs"
    else:
        guess = block or "repopt"
    if guess not in RBR_BLOCKS:
        raise ConversionError(f"--block {guess!r}: the official layouts hold one of {sorted(RBR_BLOCKS)}")
    return guess, False, True, RBR_BLOCKS[guess]


def _kernel(state: dict[str, torch.Tensor], prefix: str) -> torch.Tensor | None:
    """The 3x3 kernel of the block at ``prefix`` (any branch or the fused conv)."""
    for key, value in state.items():
        if key.startswith(prefix) and value.dim() == 4 and value.shape[-2:] == (3, 3):
            return value
    return None


def infer_arch(state: dict[str, torch.Tensor]) -> str | None:
    """The zoo row whose stage depths, widths and grouping match a renamed state dict, if exactly one does."""
    depths, widths = [], []
    for s in range(5):
        idx = {int(k.split(".")[2]) for k in state if k.startswith(f"stages.{s}.")}
        kernel = _kernel(state, f"stages.{s}.0.")
        if not idx or kernel is None:
            return None
        depths.append(max(idx) + 1)
        widths.append(kernel.shape[0])
    # global layer 2 (stage 0 is layer 0) is grouped in grouped rows; its input is stage 1's width
    layer2 = _kernel(state, "stages.1.1." if depths[1] > 1 else "stages.2.0.")
    groups = widths[1] // layer2.shape[1] if layer2 is not None else 1
    matches = [name for name, row in CLASSIFIER_ARCHS.items()
               if tuple(depths) == (1, *row.blocks) and tuple(widths) == row.widths
               and (groups == (row.groups if row.grouped_layers else 1))]
    return matches[0] if len(matches) == 1 else None


def convert_classifier(state: dict[str, torch.Tensor], source: str, arch: str | None = None,
                       block: str | None = None, origin: str = "checkpoint"
                       ) -> tuple[dict[str, torch.Tensor], dict]:
    """(our state_dict, partial meta) for a timm or official RepVGG / RepOpt-VGG classifier state dict.

    The arch is inferred from the weights when not given (and checked when given); ``num_classes``
    comes from the classifier layer. Raises :class:`ConversionError` unless every key maps.
    """
    if source not in SOURCES:
        raise ConversionError(f"unknown classifier source {source!r}; expected one of {SOURCES}")
    rules: list[PathRule] = TIMM_RULES if source == "timm" else OFFICIAL_RULES
    block, fused, fold_bn, table = _detect_block(state, source, block, origin)
    mapped, unmapped = rename_state(state, rules, table)
    if "fc.weight" not in mapped:
        raise ConversionError(f"{origin}: no classifier layer ({'head.fc' if source == 'timm' else 'linear'}) "
                              f"found; {len(unmapped)} keys did not map, e.g. {sorted(unmapped)[:5]}")
    guessed = infer_arch(mapped)
    if arch is None:
        if guessed is None:
            raise ConversionError(f"{origin}: stage depths / widths match no arch of {sorted(CLASSIFIER_ARCHS)} "
                                  "(pass --arch to see which keys differ)")
        arch = guessed
    if arch not in CLASSIFIER_ARCHS:
        raise ConversionError(f"--arch {arch!r} is not one of {sorted(CLASSIFIER_ARCHS)}")
    num_classes = int(mapped["fc.weight"].shape[0])
    model: nn.Module = build_classifier(arch, block, num_classes)
    if fused:
        model = reparameterize(model, fold_bn=fold_bn)
    out = fit_state(model, mapped, unmapped, f"{origin} ({source} layout as {arch}/{block}"
                                              f"{', deploy form' if fused else ''})")
    meta = {"task": "cls", "arch": arch, "block": block, "num_classes": num_classes, "stem_stride": 2,
            "fused": fused, "fold_bn": fold_bn}
    return out, meta
