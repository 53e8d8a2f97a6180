#!/usr/bin/env python
"""Convert a timm / official RepVGG / QARepVGG / RepOptimizer / YOLOv6 checkpoint into this project's format.

    python tools/convert_ckpt.py repvgg_a0.safetensors --from timm --out work_dirs/convert/a0_timm.pt
    python tools/convert_ckpt.py RepVGG-A0-train.pth --from repvgg --out work_dirs/convert/a0_official.pt
    python tools/convert_ckpt.py yolov6n.pt --from yolov6 --out work_dirs/convert/yolov6n.pt

Every tensor is renamed onto our model (values unchanged; half precision becomes float32) and the
mapping must be exact, or nothing is written and the keys that did not map are listed. The arch
(classifiers) or scale (YOLOv6) and the block type are read from the weights; --arch / --scale /
--block check or settle them. The output loads in tools/ptq_eval.py, tools/analyze.py and --repair.
YOLOv6 release files pickle a whole model: they are read without importing YOLOv6 and without
executing anything from the file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import _bootstrap  # noqa: F401,E402  (this checkout first on sys.path)

from qarep_dense.tasks.cli import CHECKPOINT_SOURCES, user_error, user_errors  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="checkpoint to convert (.pth / .pt / .bin / .safetensors)")
    p.add_argument("--from", dest="source", choices=CHECKPOINT_SOURCES, required=True,
                   help="timm (repvgg_*), repvgg (official RepVGG / QARepVGG / RepOptimizer) or yolov6 "
                        "(v2-era n/t/s; v3 is refused)")
    p.add_argument("--out", type=Path, required=True, help="our checkpoint to write (must not exist)")
    p.add_argument("--arch", help="classifier arch (A0 ... B3g4); default: read from the weights")
    p.add_argument("--scale", help="YOLOv6 scale (n, t, s); default: read from the weights")
    p.add_argument("--block", help="block type (repvgg, qarepvgg, qarepvgg_v2 [YOLOv6 only], "
                                   "qarepvgg_no_bn3x3_post_bn, repopt, hs); default: read from the keys / YOLOv6 "
                                   "class names; needed for a plain YOLOv6 state dict and for a deploy form "
                                   "(rbr_reparam) without post-BN, which RepVGG and QARepVGG share")
    p.add_argument("--image-size", type=int, help="input size recorded for the tools (default 224 / 640)")
    p.add_argument("--data-config", type=Path,
                   help="detectors: a detection TOML whose [data] / [eval] sections the evaluator should use "
                        "(default: the COCO 2017 layout; pass the dataset root to ptq_eval with --data)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from qarep_dense.tasks.registry import convert_checkpoint  # after parsing: --help needs no torch

    try:
        path, meta = convert_checkpoint(args.src, args.out, args.source, arch=args.arch, scale=args.scale,
                                        block=args.block, image_size=args.image_size, data_config=args.data_config)
    except user_errors() as err:  # a ConversionError is a ValueError
        return user_error(err, "convert_ckpt")
    shown = {k: meta[k] for k in ("task", "arch", "scale", "block", "num_classes", "fused", "fold_bn", "use_dfl",
                                  "reg_max", "bn_eps", "image_size") if k in meta}
    print(f"wrote {path}: {json.dumps(shown)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
