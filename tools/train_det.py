#!/usr/bin/env python
"""Train a YOLOv6-style rep-block detector on COCO-format data, then fuse it and evaluate both forms.

    python tools/train_det.py configs/det/synthetic_qarepvgg.toml --work-dir work_dirs/det_demo
    torchrun --nproc_per_node=8 tools/train_det.py configs/det/yolov6s_qarepvgg_coco.toml --device cuda
    python tools/train_det.py CONFIG --work-dir DIR --resume          # continue exactly from DIR/last.pt
    python tools/train_det.py CONFIG --work-dir DIR --overwrite       # start over, replacing DIR's checkpoints
    python tools/train_det.py CONFIG --set optim.epochs=100 --set data.batch_size=64

Writes WORK_DIR/{last,best,deploy}.pt, results.json, train.csv, val.csv, train.log, config.json.
All logic lives in ``qarep_dense.tasks.detection.train``; this file only parses arguments.
"""
import sys

import _bootstrap  # noqa: F401,E402  (this checkout first on sys.path)

from qarep_dense.tasks.cli import train_tool  # noqa: E402


def _detection():
    from qarep_dense.tasks.detection import DetConfig, train  # after parsing: --help needs no torch

    return DetConfig, train


parse_args, main = train_tool(__doc__, "det", ("train_form", "deploy", "best"), _detection)


if __name__ == "__main__":
    sys.exit(main())
