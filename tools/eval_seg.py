#!/usr/bin/env python
"""mIoU of a segmentation checkpoint, in train form and fused, side by side (mmseg's IoU metric).

    python tools/eval_seg.py work_dirs/seg/demo_qarepvgg/last.pt
    python tools/eval_seg.py work_dirs/seg/deeplab_qarep/last.pt --data data/cityscapes --save-deploy deploy.pt

CHECKPOINT is a project checkpoint written by tools/train_seg.py (last.pt: train form; deploy.pt:
fused). The validation split and pipeline come from the checkpoint's config; --data swaps the root.
Prints a table (train form / fused mIoU, largest logit difference) and, with --save-deploy, writes
the fused model as a checkpoint that tools/ptq_eval.py --task seg reads.
"""
import argparse
import json
import logging
import sys
from pathlib import Path

import _bootstrap  # noqa: F401,E402  (this checkout first on sys.path)

from qarep_dense.tasks.cli import EVAL_BATCH_SIZE, user_error, user_errors  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="segmentation checkpoint (last.pt or deploy.pt)")
    p.add_argument("--data", type=Path, default=None, help="dataset root (default: the one the model was trained on)")
    p.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE["seg"])
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--save-deploy", type=Path, default=None, help="write the fused model here")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    from qarep_dense.tasks.segmentation import claim_deploy_file

    if args.save_deploy is None:
        return evaluate(args)
    with claim_deploy_file(args.save_deploy) as claimed:  # before the evaluation: a bad path fails first
        rows = evaluate(args)
        claimed.seal()
    return rows


def evaluate(args: argparse.Namespace) -> dict:
    from qarep_dense.tasks.registry import EvalRequest, fuse, load_model, save_checkpoint
    from qarep_dense.tasks.segmentation import make_evaluator

    model, meta = load_model(args.checkpoint, "seg")
    model = model.to(args.device)
    evaluator = make_evaluator(EvalRequest(args.checkpoint, meta, args.data, None, args.batch_size, args.workers,
                                           args.device, progress=not args.no_progress))
    deploy = fuse(model, meta)
    rows = {"deploy": evaluator.evaluate(deploy)}
    if not meta.get("fused"):
        rows["train_form"] = evaluator.evaluate(model)
        images = evaluator.preprocess(next(iter(evaluator.val_loader))[0].to(args.device))
        rows["max_logit_diff"] = float((model(images) - deploy(images)).abs().max())
    if args.save_deploy:
        save_checkpoint(args.save_deploy, deploy.state_dict(), {**meta, "fused": True}, metrics=rows["deploy"])
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        rows = run(args)
    except user_errors() as err:
        return user_error(err)
    print("\n| form | mIoU | mAcc | aAcc |\n|---|---|---|---|")
    for form in ("train_form", "deploy"):
        if form in rows:
            m = rows[form]
            print(f"| {form.replace('_', ' ')} | {m['mIoU']:.2f} | {m['mAcc']:.2f} | {m['aAcc']:.2f} |")
    if "max_logit_diff" in rows:
        print(f"\nlargest |logit difference| train form vs fused: {rows['max_logit_diff']:.3g}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
