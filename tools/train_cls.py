"""Train a RepVGG / QARepVGG / RepOpt-VGG classifier, then fuse it and evaluate both forms.

    python tools/train_cls.py configs/cls/digits_qarepvgg.toml --work-dir work_dirs/digits_qa
    python tools/train_cls.py CONFIG --set optim.lr=0.2 train.seed=1 --resume
    torchrun --nproc_per_node=8 tools/train_cls.py configs/cls/a0_qarepvgg_imagenet.toml --device cuda

Writes WORK_DIR/{last,best,deploy}.pt, results.json, train.csv, val.csv, train.log, config.json.
All logic lives in ``qarep_dense.tasks.classification.train``; this file only parses arguments.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qarep_dense.config import ConfigError, load_config
from qarep_dense.engine.checkpoint import CheckpointError
from qarep_dense.tasks.classification import ClsConfig, train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="TOML config, e.g. configs/cls/digits_qarepvgg.toml")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys (dotted, type-checked), e.g. --set optim.lr=0.2 train.seed=1; "
                             "repeatable")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="output folder (default: work_dirs/cls/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from WORK_DIR/last.pt")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the config's train.device)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work_dir = args.work_dir or Path("work_dirs") / "cls" / args.config.stem
    try:
        cfg = load_config(args.config, ClsConfig, args.overrides)
        results = train(cfg, work_dir, resume=args.resume, device=args.device)
    except (ConfigError, CheckpointError, FileNotFoundError) as err:  # user errors: message, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    if results:  # rank 0 only
        summary = {k: results[k] for k in ("train_form", "deploy", "max_logit_diff")}
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
