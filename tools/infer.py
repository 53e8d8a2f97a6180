#!/usr/bin/env python
"""Run a checkpoint on your own images and draw what it sees: boxes (det), masks (seg) or top-k labels (cls).

    python tools/infer.py work_dirs/det/synthetic_qarepvgg/best.pt photos/ --out work_dirs/infer/fp32
    python tools/infer.py work_dirs/det/synthetic_qarepvgg/best.pt photos/*.jpg --int8 --calib calib_photos/ \
        --out work_dirs/infer/int8
    python tools/infer.py work_dirs/cls/digits_qarepvgg/deploy.pt digit.png --topk 3 --out work_dirs/infer/cls
    python tools/infer.py work_dirs/seg/<run>/deploy.pt street.png --int8 --out work_dirs/infer/seg

The float model runs in PyTorch (fused); ``--int8`` calibrates it (max calibration) on the given
images or on ``--calib FOLDER``, exports the QDQ ONNX model and runs that in onnxruntime with the
INT8 kernels chosen for this machine. Images are prepared exactly as evaluation prepares them
(detector: letterbox, then the evaluation's decode + NMS; classifier: the eval resize/crop;
segmentor: its mmseg config's test pipeline; then qarep_dense/data/preprocess.py).
Writes OUT/<image name> (drawn), OUT/predictions.json and, with --int8, OUT/model_int8.onnx.
Input images are never overwritten, nor any file in OUT this tool did not write itself.
The work itself is qarep_dense/inference/.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import _bootstrap  # noqa: F401,E402  (this checkout first on sys.path)

from qarep_dense.tasks.cli import ORT_KERNEL_MODES, user_error, user_errors  # noqa: E402

if TYPE_CHECKING:
    from qarep_dense.inference import InferOptions


def parse_args(argv: list[str] | None = None) -> InferOptions:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("images", type=Path, nargs="+", help="image files and/or folders of images")
    p.add_argument("--out", type=Path, default=Path("work_dirs/infer"), help="output folder")
    p.add_argument("--int8", action="store_true", help="run the ONNX INT8 (QDQ) model in onnxruntime")
    p.add_argument("--calib", type=Path, default=None, help="calibration images for --int8 (default: the inputs)")
    p.add_argument("--calib-images", type=int, default=64, help="at most this many calibration images")
    p.add_argument("--ort-precision", choices=ORT_KERNEL_MODES, default="auto",
                   help="onnxruntime INT8 kernels (auto: chosen per machine)")
    p.add_argument("--image-size", type=int, default=None, help="default: the checkpoint's image_size")
    p.add_argument("--conf", type=float, default=0.25, help="det: score threshold of drawn boxes")
    p.add_argument("--iou", type=float, default=0.45, help="det: NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=100, help="det: boxes per image")
    p.add_argument("--topk", type=int, default=5, help="cls: labels per image")
    args = p.parse_args(argv)
    from qarep_dense.inference import InferOptions  # after parsing: --help needs no torch

    try:
        return InferOptions(**vars(args))
    except ValueError as err:
        p.error(str(err).replace("calib_images", "--calib-images").replace("topk", "--topk").replace("max_det", "--max-det"))


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from qarep_dense.inference import run_inference

    try:
        result = run_inference(opts)
    except (*user_errors(), OSError, ImportError) as err:  # also: an unwritable --out, a missing optional library
        return user_error(err)
    print(json.dumps({"out": str(opts.out), "images": len(result["images"]), **({"int8": result["int8"]}
                                                                              if "int8" in result else {})}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
