"""timm ``repvgg_*`` and official RepVGG / RepOptimizer classifiers -> our zoo classifier.

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

from ..layers import reparameterize
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


def _detect_block(state: dict[str, torch.Tensor], source: str, block: str | None
                  ) -> tuple[str, bool, BlockTable]:
    """(block type, fused?, block table) from the key names; ``block`` overrides the guess."""
    if source == "timm":
        fused = has_part(state, "reparam_conv")
        if block not in (None, "repvgg"):
            raise ConversionError(f"timm repvgg_* models are RepVGG blocks; --block {block!r} does not apply")
        return "repvgg", fused, TIMM_FUSED if fused else TIMM_BLOCK
    if has_part(state, "rbr_reparam"):
        post_bn = any(re.fullmatch(r"stage\d(\.\d+)?\.bn\..+", k) for k in state)
        guess = block or ("qarepvgg" if post_bn else "repvgg")
        if guess not in RBR_FUSED:
            raise ConversionError(f"a deploy-form (rbr_reparam) checkpoint cannot be block {guess!r}; "
                                  f"expected one of {sorted(RBR_FUSED)}")
        return guess, True, RBR_FUSED[guess]
    if has_part(state, "bn_3x3"):
        return block or "repvgg", False, REPOPT_REPVGG_BLOCK
    if has_part(state, "rbr_dense"):
        guess = block or ("repvgg" if has_part(state, "rbr_1x1.conv") else "qarepvgg")
    elif has_part(state, "scale_conv"):
        guess = block or "hs"
    else:
        guess = block or "repopt"
    if guess not in RBR_BLOCKS:
        raise ConversionError(f"--block {guess!r}: the official layouts hold one of {sorted(RBR_BLOCKS)}")
    return guess, False, RBR_BLOCKS[guess]


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
    layer2 = _kernel(state, "stages.1.1.")
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
    block, fused, table = _detect_block(state, source, block)
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
    fold_bn = not (fused and block.startswith("qarepvgg"))
    model: nn.Module = build_classifier(arch, block, num_classes)
    if fused:
        model = reparameterize(model, fold_bn=fold_bn)
    out = fit_state(model, mapped, unmapped, f"{origin} ({source} layout as {arch}/{block}"
                                              f"{', deploy form' if fused else ''})")
    meta = {"task": "cls", "arch": arch, "block": block, "num_classes": num_classes, "stem_stride": 2,
            "fused": fused, "fold_bn": fold_bn}
    return out, meta
