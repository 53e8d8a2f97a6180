#!/usr/bin/env python
"""Fuse a checkpoint (classifier or detector) and export the float deploy model to ONNX, checked in ONNX Runtime.

    python tools/export_onnx.py work_dirs/det/synthetic_qarepvgg/best.pt --out deploy/det.onnx
    python tools/export_onnx.py work_dirs/cls/digits_qarepvgg/deploy.pt --out deploy/cls.onnx --batch 8

For an INT8 QDQ model use tools/ptq_eval.py --ort (it exports the calibrated model it evaluates).
The model input is the *preprocessed* image (see qarep_dense/data/preprocess.py and the checkpoint's
meta["preprocess"]): feed ORT exactly what the evaluation feeds PyTorch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])  # this checkout: `python tools/x.py` runs without an install
if sys.path[:1] != [_ROOT]:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402

from qarep_dense.deploy.onnx import export_onnx, verify_onnx  # noqa: E402
from qarep_dense.engine.checkpoint import CheckpointError  # noqa: E402
from qarep_dense.layers import reparameterize  # noqa: E402
from qarep_dense.tasks.registry import load_model  # noqa: E402

# Tasks whose network takes one (N, 3, S, S) image tensor: the export below.
EXPORTABLE = ("cls", "det", "seg")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--image-size", type=int, default=None, help="default: the checkpoint's image_size")
    p.add_argument("--batch", type=int, default=1, help="example batch (the batch axis stays dynamic)")
    p.add_argument("--opset", type=int, default=13)
    p.add_argument("--atol", type=float, default=1e-3, help="largest accepted |ORT - PyTorch|")
    args = p.parse_args(argv)
    try:
        model, meta = load_model(args.checkpoint, EXPORTABLE)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    deploy = model if meta.get("fused") else reparameterize(model)
    size = args.image_size or meta.get("image_size") or 224
    height, width = (size, size) if isinstance(size, int) else size  # (H, W) for non-square inputs
    example = torch.randn(args.batch, 3, height, width)
    try:
        path = export_onnx(deploy, example, args.out, args.opset)
    except OSError as err:
        print(f"error: --out {args.out}: cannot write the ONNX file ({type(err).__name__}: {err})", file=sys.stderr)
        return 2
    diff = verify_onnx(path, deploy, example)
    print(json.dumps({"onnx": str(path), "input": [args.batch, 3, height, width], "preprocess": meta.get("preprocess"),
                      "max_abs_diff_vs_torch": diff}, indent=2))
    if diff > args.atol:
        print(f"error: ONNX Runtime differs from PyTorch by {diff:.3g} > {args.atol}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
