#!/usr/bin/env python
"""Train a RepVGG / QARepVGG / RepOpt-VGG classifier, then fuse it and evaluate both forms.

    python tools/train_cls.py configs/cls/digits_qarepvgg.toml --work-dir work_dirs/digits_qa
    python tools/train_cls.py CONFIG --set optim.lr=0.2 --set train.seed=1
    python tools/train_cls.py CONFIG --work-dir DIR --resume            # continue exactly from DIR/last.pt
    python tools/train_cls.py CONFIG --work-dir DIR --overwrite         # start over, replacing DIR's checkpoints
    torchrun --nproc_per_node=8 tools/train_cls.py configs/cls/a0_qarepvgg_imagenet.toml --device cuda

Writes WORK_DIR/{last,best,deploy}.pt, results.json, train.csv, val.csv, train.log, config.json.
All logic lives in ``qarep_dense.tasks.classification.train``; this file only parses arguments.
"""
import sys

import _bootstrap  # noqa: F401,E402  (this checkout first on sys.path)

from qarep_dense.tasks.cli import train_tool  # noqa: E402


def _classification():
    from qarep_dense.tasks.classification import ClsConfig, train  # after parsing: --help needs no torch

    return ClsConfig, train


parse_args, main = train_tool(__doc__, "cls", ("train_form", "deploy", "max_logit_diff"), _classification)


if __name__ == "__main__":
    sys.exit(main())
