"""Bring your own checkpoint: timm, official RepVGG / QARepVGG / RepOptimizer and YOLOv6 weights -> our format.

:func:`convert_state` reads a foreign checkpoint, renames every tensor onto our model (no
value changes; half precision is cast to float32), checks the mapping is exact -- every source key
used, every model key filled, every shape equal, else :class:`ConversionError` lists the keys --
and returns the state dict with the model's metadata. ``tasks.registry.convert_checkpoint`` completes that
metadata through the task rows (which own the task configs) and writes our checkpoint, so
``tasks.registry.load_model``, ``tools/ptq_eval.py``, ``tools/analyze.py`` and ``--repair`` read it.

Sources:
    "timm"    timm ``repvgg_*`` state dicts (.pth / .bin / .safetensors), train or reparameterized form
    "repvgg"  official RepVGG and QARepVGG (train / deploy ``rbr_reparam``) and RepOptimizer (RepOpt-VGG
              target, Hyper-Search, RepVGG baseline) state dicts, also inside training checkpoints that
              pickle other objects (read by the restricted unpickler)
    "yolov6"  YOLOv6 v2-era (releases 0.1 / 0.2) release ``.pt`` (a pickled whole model, read without
              importing YOLOv6 or executing anything from the file), or a plain state dict with YOLOv6
              key names; v3 (0.3.0 and later) is refused
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from ..choices import CHECKPOINT_SOURCES
from ..engine.checkpoint import checkpoint_path_problem
from .classifier import convert_classifier
from .common import ConversionError, load_state_file
from .yolov6 import convert_yolov6, read_yolov6_file

# COCO 2017's 80 category ids in YOLOv6's class order (sorted ids), and their names.
COCO80_IDS = [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83),
              *range(84, 91)]
COCO80_NAMES = [name.replace("_", " ") for name in (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie "
    "suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard "
    "cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear hair_drier "
    "toothbrush").split()]


def convert_state(src: str | os.PathLike, source: str, arch: str | None = None, scale: str | None = None,
                  block: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(our state_dict, task meta without data settings) for the checkpoint at ``src``."""
    src = Path(src)
    if source not in CHECKPOINT_SOURCES:
        raise ConversionError(f"unknown source {source!r}; expected one of {CHECKPOINT_SOURCES}")
    problem = checkpoint_path_problem(src)
    if problem:
        raise ConversionError(problem)
    if source == "yolov6":
        if arch is not None:
            raise ConversionError("--arch is for classifiers; a YOLOv6 detector takes --scale (n, t, s)")
        if not zipfile.is_zipfile(src):  # the release format is a torch zip: anything else is read as a state dict
            state, found_block = load_state_file(src), None
        else:
            try:
                state, found_block = load_state_file(src), None
            except ConversionError:
                state, found_block = read_yolov6_file(src)  # a pickled whole model (release format)
        if block and found_block and block != found_block:
            raise ConversionError(f"{src}: --block {block!r} but the file's blocks are {found_block!r}")
        return convert_yolov6(state, block or found_block, scale, origin=str(src))
    if scale is not None:
        raise ConversionError("--scale is for YOLOv6 detectors; a classifier takes --arch")
    return convert_classifier(load_state_file(src), source, arch, block, origin=str(src))


__all__ = ["ConversionError", "convert_state"]
