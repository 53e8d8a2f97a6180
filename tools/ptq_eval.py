"""FP32 vs INT8 post-training quantization, side by side: the paper's ``model | FP32 | INT8 | drop`` table.

    python tools/ptq_eval.py --task cls --data data/imagenet \
        --checkpoints work_dirs/cls/a0_repvgg/deploy.pt work_dirs/cls/a0_qarepvgg/deploy.pt \
        --calibrator max percentile --calib-batches 16 --ort --out work_dirs/ptq/a0

Each checkpoint is loaded (and fused if it is a train-form checkpoint), evaluated in FP32,
quantized (pytorch-quantization, W8A8 per-channel weights / per-tensor activations, calibrated
on the train split with the evaluation preprocessing) and evaluated again; ``--ort`` also exports
the QDQ ONNX model and evaluates it in onnxruntime (integer kernels counted, not assumed).
Writes OUT/ptq_table.{md,csv,json} (rewritten after every row, and each row printed as it is
computed; until the last row is in, ptq_table.md starts with "partial: N of M rows" and ptq_table.json
has "complete": false) and OUT/onnx/*.onnx. OUT/.written.json records what was written there: a later
run into the same OUT replaces exactly those files (and refuses to overwrite any file it did not write).
The study itself is qarep_dense.tasks.ptq_study; this file is its command line.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import _bootstrap  # noqa: F401,E402  (this checkout first on sys.path)

from qarep_dense.tasks.cli import (BATCH_SIZE, CALIBRATORS, ORT_KERNEL_MODES, QUANT_BACKENDS,  # noqa: E402
                                   TASK_NAMES, user_error, user_errors)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(TASK_NAMES), default="cls", help="task evaluator (default: cls)")
    p.add_argument("--checkpoints", type=Path, nargs="+", required=True, help="checkpoints of the same arch")
    p.add_argument("--data", type=Path, default=None,
                   help="dataset root (cls: ImageFolder with train/ and val/, required; det: COCO-layout root, "
                        "default: the data.root of the checkpoint's training config)")
    p.add_argument("--calibrator", nargs="+", choices=CALIBRATORS, default=["max"], help="one or several")
    p.add_argument("--percentile", type=float, default=99.99, help="value for the percentile calibrator")
    p.add_argument("--calib-batches", type=int, default=8, help="calibration batches from the train split")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--weight-bits", type=int, default=8, help="8 (W8A8) or 4 (W4A8)")
    p.add_argument("--act-bits", type=int, default=8)
    p.add_argument("--repair", action="store_true",
                   help="before PTQ, zero the dead-input kernel slices that set an INT8 weight scale (checked on one "
                        "held-out calibration batch)")
    p.add_argument("--bias-correction", action="store_true",
                   help="after calibration, correct each quantized layer's bias by the mean shift quantization put on "
                        "its output (measured on the calibration images)")
    p.add_argument("--backend", choices=QUANT_BACKENDS, default=QUANT_BACKENDS[0],
                   help="fake-quant library (docs/quantization.md says when to pick which)")
    p.add_argument("--ort", action="store_true", help="also evaluate the exported QDQ model in onnxruntime")
    p.add_argument("--ort-static", action="store_true",
                   help="also evaluate onnxruntime's own quantize_static model (max/percentile/entropy)")
    p.add_argument("--ort-precision", choices=ORT_KERNEL_MODES, default="auto",
                   help="onnxruntime INT8 kernels: auto (per machine: CPU features, checked against fake quant on a "
                        "calibration batch), default (fast U8S8) or precise (exact U8U8)")
    p.add_argument("--image-size", type=int, default=None, help="override the checkpoint's image_size")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("work_dirs/ptq_eval"), help="output folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    if args.calib_batches < 1 or args.batch_size < 1:
        p.error("--calib-batches and --batch-size must be >= 1")
    return args


def study_of(args: argparse.Namespace):
    """The :class:`~qarep_dense.tasks.ptq_study.PtqStudy` the arguments ask for."""
    from qarep_dense.tasks.ptq_study import PtqStudy
    from qarep_dense.tasks.quant_check import QuantConfig

    base = QuantConfig(calibrator=args.calibrator[0], percentile=args.percentile,
                       num_calib_batches=args.calib_batches, weight_bits=args.weight_bits,
                       act_bits=args.act_bits, repair_dead_channels=args.repair,
                       bias_correction=args.bias_correction, backend=args.backend.replace("-", "_"))
    return PtqStudy(args.task, list(args.checkpoints), args.out, args.data, list(args.calibrator), base,
                    args.batch_size, args.workers, args.image_size, args.ort, args.ort_static, args.ort_precision,
                    args.device, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from qarep_dense.tasks.ptq_study import run_study  # after parsing: --help needs no torch

    try:
        _, table = run_study(study_of(args), echo=lambda line: print(line, flush=True))
    except user_errors() as err:
        return user_error(err)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
