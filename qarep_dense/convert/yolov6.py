"""YOLOv6 (v2-era: EfficientRep + RepPAN + EffiDeHead, releases 0.1 / 0.2) -> our :class:`Detector`.

Release ``.pt`` files pickle the whole model (``{"model": Model, "ema": Model | None, ...}``, usually
half precision); they are read by :mod:`.unpickle` without importing YOLOv6. Module paths:

==============================================  ==========================================
YOLOv6                                          ours
==============================================  ==========================================
backbone.stem                                   backbone.stem
backbone.ERBlock_{k}.0  (k = 2..5)              backbone.stages.{k-2}.0
backbone.ERBlock_{k}.1.conv1 / .block.{j}       backbone.stages.{k-2}.1.0 / .1.{j+1}
backbone.ERBlock_5.2.cv1 / .cv2  (SimSPPF)      backbone.stages.3.2.reduce / .expand
neck.reduce_layer{0,1}                          neck.reduce{0,1}
neck.upsample{0,1}.upsample_transpose           neck.upsample{0,1}
neck.Rep_p4 / Rep_p3 / Rep_n3 / Rep_n4          neck.td_p4 / td_p3 / bu_p4 / bu_p5
neck.downsample2 / downsample1                  neck.downsample0 / downsample1
detect.{stems,cls_convs,reg_convs}.{i}          head.levels.{i}.{stem,cls_conv,reg_conv}
detect.{cls_preds,reg_preds}.{i}                head.levels.{i}.{cls_pred,reg_pred}
detect.proj, detect.proj_conv                   (constants, not stored; see _drop_dfl_constants)
==============================================  ==========================================

YOLOv6 3.0 and later (releases 0.3.0+: RepBiFPAN neck, CSPSPPF, ...) is refused as such (:func:`refuse_v3`).
The block type comes from the pickled class names (RepVGGBlock, QARepVGGBlock, QARepVGGBlockV2,
RealVGGBlock, LinearAddBlock), or from ``block`` for a plain state dict.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..models.detector import YOLOV6_BN_EPS, YOLOV6_BN_MOMENTUM, build_detector, scaled_channels
from ..models.zoo import DETECTOR_SCALES, detector_scale
from .common import RBR_BLOCKS, ConversionError, fit_state, rename_state, rule
from .unpickle import UnsafeFileError, is_module_record, module_state, read_pickled_checkpoint

_ERB = r"backbone\.ERBlock_(?P<k>[2-5])\."


def _stage(m) -> int:
    return int(m["k"]) - 2


def _repblock(src: str, dst: str) -> list:
    """Rules for one RepBlock: ``conv1`` is our block 0, ``block.{j}`` our block j + 1."""
    return [rule(src + r"conv1\.", dst + "0.", block=True),
            rule(src + r"block\.(?P<j>\d+)\.", lambda m: dst + f"{int(m['j']) + 1}.", block=True)]


RULES = [
    rule(r"backbone\.stem\.", "backbone.stem.", block=True),
    rule(_ERB + r"0\.", lambda m: f"backbone.stages.{_stage(m)}.0.", block=True),
    rule(_ERB + r"1\.conv1\.", lambda m: f"backbone.stages.{_stage(m)}.1.0.", block=True),
    rule(_ERB + r"1\.block\.(?P<j>\d+)\.", lambda m: f"backbone.stages.{_stage(m)}.1.{int(m['j']) + 1}.", block=True),
    rule(r"backbone\.ERBlock_5\.2\.cv1\.", "backbone.stages.3.2.reduce."),
    rule(r"backbone\.ERBlock_5\.2\.cv2\.", "backbone.stages.3.2.expand."),
    rule(r"neck\.reduce_layer(?P<i>[01])\.", "neck.reduce{i}."),
    rule(r"neck\.upsample(?P<i>[01])\.upsample_transpose\.", "neck.upsample{i}."),
    *_repblock(r"neck\.Rep_p4\.", "neck.td_p4."),
    *_repblock(r"neck\.Rep_p3\.", "neck.td_p3."),
    *_repblock(r"neck\.Rep_n3\.", "neck.bu_p4."),
    *_repblock(r"neck\.Rep_n4\.", "neck.bu_p5."),
    rule(r"neck\.downsample2\.", "neck.downsample0."),
    rule(r"neck\.downsample1\.", "neck.downsample1."),
    *(rule(rf"detect\.{src}\.(?P<i>\d+)\.", f"head.levels.{{i}}.{dst}.")
      for src, dst in (("stems", "stem"), ("cls_convs", "cls_conv"), ("reg_convs", "reg_conv"),
                       ("cls_preds", "cls_pred"), ("reg_preds", "reg_pred"))),
]

# Module paths that exist only in YOLOv6 3.0 and later (releases 0.3.0+), with what they are.
V3_MARKERS = {
    r"neck\.Bifusion\d\.": "RepBiFPAN neck (neck.Bifusion*)",
    r"backbone\.ERBlock_5\.2\.cspsppf\.": "CSPSPPF (backbone.ERBlock_5.2.cspsppf)",
    r"backbone\.ERBlock_5\.2\.sppf\.": "wrapped SPPF (backbone.ERBlock_5.2.sppf)",
    r"backbone\.ERBlock_6\.": "P6 backbone stage (backbone.ERBlock_6)",
    r"detect\.stems\.\d+\.block\.": "ConvModule head convs (detect.stems.*.block)",
    r"detect\.(cls|reg)_preds_ab\.": "anchor-based auxiliary head (detect.*_preds_ab)",
}

# YOLOv6 class name of the 3x3 block -> our block type.
BLOCK_CLASSES = {"RepVGGBlock": "repvgg", "QARepVGGBlock": "qarepvgg", "QARepVGGBlockV2": "qarepvgg_v2",
                 "RealVGGBlock": "repopt", "LinearAddBlock": "hs"}


def read_yolov6_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state_dict with YOLOv6 key names, block type from the class names or None) of a release ``.pt``.

    Takes ``ckpt["ema"]`` when present, else ``ckpt["model"]`` (as YOLOv6's own loader does); nothing
    from the file is imported or executed.
    """
    path = Path(path)
    try:
        ckpt = read_pickled_checkpoint(path)
        model = ckpt
        if isinstance(ckpt, dict):
            model = next((ckpt[k] for k in ("ema", "model") if is_module_record(ckpt.get(k))), None)
        if model is None or not is_module_record(model):
            keys = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
            raise ConversionError(f"{path}: no pickled model under 'ema' or 'model' (found {keys})")
        state, classes = module_state(model, str(path))
    except UnsafeFileError as err:
        raise ConversionError(str(err)) from err
    refuse_v3(state, str(path))
    return state, block_from_classes(classes, str(path))


def refuse_v3(state: dict[str, torch.Tensor], source: str) -> None:
    """Raise if ``state`` has the module layout of YOLOv6 3.0 or later (checked before anything else,
    so that a v3 file is not reported as a wrong block, scale or DFL projection)."""
    found = [what for pattern, what in V3_MARKERS.items() if any(re.match(pattern, key) for key in state)]
    if found:
        raise ConversionError(f"{source}: a YOLOv6 v3 checkpoint (release 0.3.0 or later: {'; '.join(found)}) is "
                              "not supported; only the v2-era layout converts (releases 0.1 / 0.2: EfficientRep + "
                              "RepPAN neck + EffiDeHead, scales n / t / s)")


def block_from_classes(classes: dict[str, str], source: str) -> str | None:
    """Our block type from the class of the backbone stem (all 3x3 blocks share it in YOLOv6)."""
    stem = classes.get("backbone.stem", "")
    name = stem.rsplit(".", 1)[-1]
    if not stem:
        return None
    if name not in BLOCK_CLASSES:
        raise ConversionError(f"{source}: backbone.stem is a {stem}; supported YOLOv6 blocks are "
                              f"{sorted(BLOCK_CLASSES)}")
    return BLOCK_CLASSES[name]


def _drop_dfl_constants(state: dict[str, torch.Tensor], reg_max: int, source: str) -> None:
    """Drop ``detect.proj`` / ``proj_conv`` (constants, not weights) after checking what they mean.

    Without DFL (``reg_preds`` has 4 channels) YOLOv6 never reads them, and 0.2.x always stores the
    bins of ``Detect``'s default ``reg_max=16``: its ``build_network`` does not pass ``reg_max`` to
    ``Detect``. So they are ignored whatever they hold. With DFL they must be the bins 0..reg_max
    our decoder uses.
    """
    if reg_max > 0:
        bins = torch.linspace(0, reg_max, reg_max + 1)
        for key in ("detect.proj", "detect.proj_conv.weight"):
            if key in state and not torch.equal(state[key].float().flatten(), bins):
                raise ConversionError(f"{source}: {key} is not linspace(0, {reg_max}) for a DFL head with "
                                      f"{reg_max + 1} bins per side (a modified DFL projection cannot be "
                                      "expressed by our decoder)")
    state.pop("detect.proj", None)
    state.pop("detect.proj_conv.weight", None)


def infer_scale(state: dict[str, torch.Tensor]) -> str | None:
    """The DETECTOR_SCALES row whose backbone widths match the stem and ERBlock widths, if one does."""
    widths = []
    for prefix in ("backbone.stem.", *(f"backbone.ERBlock_{k}.0." for k in range(2, 6))):
        kernel = next((v for k, v in state.items() if k.startswith(prefix) and v.dim() == 4), None)
        if kernel is None:
            return None
        widths.append(int(kernel.shape[0]))
    matches = [name for name, row in DETECTOR_SCALES.items() if list(scaled_channels(row.width)[:5]) == widths]
    return matches[0] if len(matches) == 1 else None


def convert_yolov6(state: dict[str, torch.Tensor], block: str | None, scale: str | None = None,
                   origin: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict]:
    """(our detector state_dict, partial meta) for a YOLOv6 v2-era state dict (YOLOv6 key names).

    The detector is built with YOLOv6's BatchNorm settings (eps 1e-3, momentum 0.03).
    """
    refuse_v3(state, origin)
    if "detect.cls_preds.0.weight" not in state or "detect.reg_preds.0.weight" not in state:
        # checked before the block: a classifier given here must hear what it is, not be asked for --block
        classifier = {"head.fc.weight": "timm", "linear.weight": "repvgg"}
        found = next((src for key, src in classifier.items() if key in state), None)
        hint = f"; its keys are those of a {found} classifier: use --from {found}" if found else ""
        raise ConversionError(f"{origin}: no YOLOv6 EffiDeHead (detect.cls_preds / detect.reg_preds) found{hint}")
    if block is None:
        raise ConversionError(f"{origin}: cannot tell the block type from a plain state dict; pass --block")
    if block not in RBR_BLOCKS:
        raise ConversionError(f"--block {block!r}: YOLOv6 blocks map onto {sorted(RBR_BLOCKS)}")
    state = dict(state)
    num_classes = int(state["detect.cls_preds.0.weight"].shape[0])
    reg_max = int(state["detect.reg_preds.0.weight"].shape[0]) // 4 - 1
    _drop_dfl_constants(state, reg_max, origin)
    scale = scale or infer_scale(state)
    if scale is None:
        raise ConversionError(f"{origin}: backbone widths match no scale of {sorted(DETECTOR_SCALES)} "
                              "(only the v2-era EfficientRep n/t/s layout is supported); pass --scale to see "
                              "which keys differ")
    detector_scale(scale)
    mapped, unmapped = rename_state(state, RULES, RBR_BLOCKS[block])
    use_dfl = reg_max > 0
    reg_max = reg_max if use_dfl else 16  # without DFL the value is unused; 16 is what our configs record
    model = build_detector(scale, block, num_classes, use_dfl=use_dfl, reg_max=reg_max,
                           bn_eps=YOLOV6_BN_EPS, bn_momentum=YOLOV6_BN_MOMENTUM)
    out = fit_state(model, mapped, unmapped, f"{origin} (YOLOv6 layout as {scale}/{block})")
    meta = {"task": "det", "scale": scale, "block": block, "num_classes": num_classes, "use_dfl": use_dfl,
            "reg_max": reg_max, "head_act": "silu", "bn_eps": YOLOV6_BN_EPS,
            "bn_momentum": YOLOV6_BN_MOMENTUM, "fused": False, "fold_bn": True}
    return out, meta


__all__ = ["BLOCK_CLASSES", "convert_yolov6", "infer_scale", "read_yolov6_file", "refuse_v3"]
