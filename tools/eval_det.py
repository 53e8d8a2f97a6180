#!/usr/bin/env python
"""COCO mAP of a detector checkpoint (train-form or deploy), with pycocotools.

    python tools/eval_det.py work_dirs/det/synthetic_qarepvgg/best.pt
    python tools/eval_det.py work_dirs/y6s/deploy.pt --data data/coco --batch-size 64 --device cuda
    python tools/eval_det.py CHECKPOINT --fuse --out metrics.json   # evaluate the fused deploy form

The validation split, image size and NMS settings come from the checkpoint's training config;
``--data`` points at another root of the same layout (e.g. real COCO 2017).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import _bootstrap  # noqa: F401,E402  (this checkout first on sys.path)

from qarep_dense.tasks.cli import EVAL_BATCH_SIZE, user_error, user_errors  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--data", type=Path, default=None,
                   help="dataset root, read as it is (default: the training config's, generated there if synthetic)")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE["det"])
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--fuse", action="store_true", help="evaluate the fused deploy form of a train-form checkpoint")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="also write the metrics as JSON here")
    args = p.parse_args(argv)
    from qarep_dense.tasks.registry import fuse, get_task, load_model  # after parsing: --help needs no torch
    from qarep_dense.tasks.splits import request_for

    try:
        model, meta = load_model(args.checkpoint, "det")
        evaluator = get_task("det").make_evaluator(request_for(args.checkpoint, meta, args.data, args.batch_size,
                                                               args.workers, args.device, args.image_size))
    except user_errors() as err:
        return user_error(err)
    if args.fuse:
        model = fuse(model, meta)
    metrics = evaluator.evaluate(model.to(args.device))
    result = {"checkpoint": str(args.checkpoint), "fused": bool(meta.get("fused") or args.fuse),
              "metrics_unit": "percent", **metrics}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
