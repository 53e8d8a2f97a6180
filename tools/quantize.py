#!/usr/bin/env python
"""Quantize a RepVGG-family checkpoint to a verified INT8 model within an accuracy budget, in one command.

    python tools/quantize.py work_dirs/digits_qa/deploy.pt --data data/digits --max-drop 1.0 --out work_dirs/q8
    python tools/quantize.py repvgg_a0.pth --from timm --data data/imagenet --out work_dirs/q8_timm
    python tools/quantize.py yolov6n.pt --from yolov6 --task det --data data/coco --int8-only --out work_dirs/q8_det

Loads (converting a foreign checkpoint on the fly), fuses and evaluates FP32; diagnoses the model; tries
the calibrators x dead-channel repair x cross-layer equalization x bias correction, scored on training images set aside for
selection (never the validation split); if the best all-INT8 model misses --max-drop, keeps the fewest
sensitive layers in float (not with --int8-only), then fine-tunes with QAT (--allow-qat); exports QDQ ONNX
and checks it in ONNX Runtime. Writes OUT/report.md, OUT/report.json, OUT/model_int8.onnx and
OUT/model_fakequant.pt, nothing outside OUT; refuses an OUT holding files it did not write, or one another
run is writing; a rerun replaces only the files the last run recorded.
All logic lives in ``qarep_dense.tasks.quantize_pipeline``; this file only parses arguments.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import _bootstrap  # noqa: F401,E402  (this checkout first on sys.path)

from qarep_dense.tasks.cli import (BATCH_SIZE, CALIBRATORS, CHECKPOINT_SOURCES, ORT_KERNEL_MODES,  # noqa: E402
                                   QUANT_BACKENDS, TASK_NAMES, user_error, user_errors)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="our checkpoint (train or deploy form), or a foreign one with --from")
    p.add_argument("--data", type=Path, default=None,
                   help="dataset root (cls: ImageFolder with train/ and val/, required; det: COCO layout, default: "
                        "the checkpoint's training data)")
    p.add_argument("--max-drop", type=float, default=1.0, help="budget: validation metric points INT8 may lose")
    p.add_argument("--out", type=Path, required=True, help="output folder (new, empty, or one this tool wrote)")
    p.add_argument("--task", choices=sorted(TASK_NAMES), default=None, help="expected task (default: from the file)")
    p.add_argument("--from", dest="source", choices=CHECKPOINT_SOURCES, default=None, help="convert a foreign checkpoint first")
    p.add_argument("--int8-only", action="store_true", help="never keep a layer in float")
    p.add_argument("--allow-qat", action="store_true", help="fine-tune with QAT if PTQ misses the budget (the task's own loss)")
    p.add_argument("--ort-precision", choices=ORT_KERNEL_MODES, default="auto",
                   help="onnxruntime INT8 kernels (auto: chosen for this CPU, checked against fake quant)")
    p.add_argument("--calibrators", nargs="+", choices=CALIBRATORS, default=None,
                   help=f"calibrators to try (default: {' '.join(CALIBRATORS)})")
    p.add_argument("--bias-correction", choices=["auto", "all", "on", "off"], default="auto",
                   help="bias correction after calibration: auto = the 3 best candidates also compete corrected, "
                        "all = every candidate with and without it")
    p.add_argument("--backend", choices=QUANT_BACKENDS, default=QUANT_BACKENDS[0],
                   help="fake-quant library (docs/quantization.md says when to pick which)")
    p.add_argument("--calib-batches", type=int, default=8, help="calibration batches from the training split")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--selection-images", type=int, default=256, help="training images set aside to pick a candidate")
    p.add_argument("--image-size", type=int, default=None, help="input size (a converted checkpoint's, or override)")
    p.add_argument("--data-config", type=Path, default=None,
                   help="with --from yolov6: a detection TOML whose data section evaluation reads (default: COCO)")
    p.add_argument("--block", default=None, help="with --from: the block type, when the weights cannot tell")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from qarep_dense.tasks.quantize_pipeline import QuantizeOptions, quantize_checkpoint  # after parsing: fast --help

    opts = QuantizeOptions(args.checkpoint, args.data, args.out, args.max_drop, args.task, args.source,
                           args.int8_only, args.allow_qat, args.ort_precision, calib_batches=args.calib_batches,
                           batch_size=args.batch_size, selection_images=args.selection_images,
                           image_size=args.image_size, data_config=args.data_config, block=args.block,
                           bias_correction=args.bias_correction, backend=args.backend.replace("-", "_"),
                           device=args.device,
                           progress=not args.no_progress)
    if args.calibrators:
        opts.calibrators = tuple(args.calibrators)
    try:
        report = quantize_checkpoint(opts)
    except user_errors() as err:
        return user_error(err)
    c = report["chosen"]
    print(f"{report['metric']}: FP32 {report['fp32']:.2f}, INT8 {report['int8']:.2f} (ORT {report['int8_ort']:.2f}), "
          f"drop {report['drop']:.2f} <= {report['max_drop']:.2f}: {'met' if report['budget_met'] else 'MISSED'}")
    print(f"chosen: {c['calibrator']}, repair {'on' if c['repair'] else 'off'}, CLE {c['cle']}, "
          f"bias correction {'on' if c['bias_correction'] else 'off'}, "
          f"{len(c['float_layers'])} float layers, QAT {'yes' if c['qat'] else 'no'}; "
          f"integer convs {report['integer_convs']}/{report['convs']}; {report['seconds']['total']:.0f} s")
    if not report["is_int8"]:
        print(f"not INT8: none of the {report['convs']} convs runs as an integer kernel in ONNX Runtime; the budget "
              "counts as not met", file=sys.stderr)
    print(f"report: {args.out / 'report.md'}")
    return 0 if report["budget_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
