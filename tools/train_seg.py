#!/usr/bin/env python
"""Train an MMSegmentation 1.x config with mmengine's Runner, then fuse the segmentor and evaluate both forms.

    python tools/train_seg.py configs/seg/deeplabv3plus_qarepvgg-test_1xb8-600it_synthetic-cityscapes-128x256.py
    python tools/train_seg.py configs/deeplab_qarep.py --work-dir work_dirs/seg/deeplab_qarep
    torchrun --nproc_per_node=4 tools/train_seg.py configs/deeplab_qarep.py --launcher pytorch
    python tools/train_seg.py CONFIG --work-dir DIR --resume              # continue from DIR's latest iter_*.pth
    python tools/train_seg.py CONFIG --resume DIR/iter_40000.pth          # continue from that checkpoint
    python tools/train_seg.py CONFIG --work-dir DIR --overwrite           # start over, replacing DIR's checkpoints
    python tools/train_seg.py CONFIG --cfg-options train_cfg.max_iters=1000 model.backbone.block=repvgg

--cfg-options keys are checked (a typo fails with the nearest key). On --resume only run context may change
(paths, workers, logging, hooks, train_cfg.max_iters / val_interval); a key the checkpoint restores (model,
optimizer, schedule) is refused. --data-root must exist (a synthetic config generates its scenes into it).

Writes mmengine's iter_*.pth, logs and vis_data in WORK_DIR, then (rank 0) last.pt (train form),
deploy.pt (fused) in the project's checkpoint format and results.json (mIoU of both forms, and of
mmseg's own validation loop). All logic lives in ``qarep_dense.tasks.segmentation.train``.
"""
import argparse
import json
import logging
import sys
from pathlib import Path

import _bootstrap  # noqa: F401,E402  (this checkout first on sys.path)

from qarep_dense.tasks.cli import user_error, user_errors  # noqa: E402


def parse_cfg_options(items: list[str]) -> dict:
    """``["a.b=1", "c=[1,2]"]`` -> {"a.b": 1, "c": [1, 2]} (values parsed as Python literals when they are)."""
    import ast

    options = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--cfg-options {item!r}: expected KEY=VALUE")
        try:
            options[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            options[key] = raw  # a bare string such as model.backbone.block=repvgg
    return options


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="mmseg-style Python config, e.g. configs/seg/<name>.py")
    p.add_argument("--work-dir", type=Path, default=None, help="output folder (default: work_dirs/seg/<config name>)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", nargs="?", const="auto", default=False, metavar="CHECKPOINT",
                       help="continue from WORK_DIR's latest checkpoint, or from CHECKPOINT")
    again.add_argument("--overwrite", action="store_true",
                       help="start over in a WORK_DIR holding an earlier run's checkpoints (refused without it)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="dataset root holding leftImg8bit/ and gtFine/ (default: the config's data_root)")
    p.add_argument("--amp", action="store_true", help="mixed precision (AmpOptimWrapper)")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    p.add_argument("--launcher", choices=["none", "pytorch"], default="none",
                   help="'pytorch' under torchrun (one process per GPU)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from qarep_dense.tasks.segmentation import train

    try:
        results = train(args.config, args.work_dir, args.resume, args.amp, parse_cfg_options(args.cfg_options),
                        args.launcher, progress=not args.no_progress, data_root=args.data_root,
                        overwrite=args.overwrite)
    except user_errors() as err:
        return user_error(err)
    if results:  # rank 0 only
        print(json.dumps({k: results[k] for k in ("train_form", "deploy", "mmseg_val", "max_logit_diff",
                                                  "start_iter", "end_iter") if k in results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
