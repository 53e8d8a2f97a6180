#!/usr/bin/env python
"""Fuse a checkpoint (classifier, detector or segmentor) and export the float deploy model to ONNX, checked in ONNX Runtime.

    python tools/export_onnx.py work_dirs/det/synthetic_qarepvgg/best.pt --out deploy/det.onnx
    python tools/export_onnx.py work_dirs/cls/digits_qarepvgg/deploy.pt --out deploy/cls.onnx --batch 8
    python tools/export_onnx.py work_dirs/seg/<run>/deploy.pt --out deploy/seg.onnx

The batch axis is always free; a segmentor's height and width are free too, and its check runs at a
second input size. The check is relative: per output, max|ORT - PyTorch| / max|PyTorch| <= --rtol.
For an INT8 QDQ model use tools/ptq_eval.py --ort (it exports the calibrated model it evaluates).
The model input is the *preprocessed* image (see qarep_dense/data/preprocess.py and the checkpoint's
meta["preprocess"]): feed ORT exactly what the evaluation feeds PyTorch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import _bootstrap  # noqa: F401,E402  (this checkout first on sys.path)

from qarep_dense.tasks.cli import ONNX_RTOL, user_error, user_errors  # noqa: E402


def _out_problem(out: Path, overwrite: bool) -> str | None:
    """Why ``out`` may not be written (checked before any work): a folder, or a file without --overwrite."""
    if out.is_dir():
        return f"is a folder; --out is the ONNX file to write (e.g. {out / 'model.onnx'})"
    if out.exists() and not overwrite:
        return "already exists; choose another --out or pass --overwrite to replace it"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--image-size", type=int, nargs="+", default=None, metavar="S",
                   help="S or H W (default: the checkpoint's image_size)")
    p.add_argument("--batch", type=int, default=1, help="example batch (the batch axis stays dynamic)")
    p.add_argument("--opset", type=int, default=13)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--rtol", type=float, default=ONNX_RTOL,
                   help="largest accepted max|ORT - PyTorch| / max|PyTorch| per output (default %(default)g)")
    args = p.parse_args(argv)
    if args.image_size is not None and len(args.image_size) > 2:
        p.error("--image-size takes S or H W")
    problem = _out_problem(args.out, args.overwrite)
    if problem:
        print(f"error: --out {args.out}: {problem}", file=sys.stderr)
        return 2
    size = args.image_size[0] if args.image_size and len(args.image_size) == 1 else args.image_size
    from qarep_dense.tasks.export import export_checkpoint_onnx  # after parsing: --help needs no torch

    try:
        report, meta = export_checkpoint_onnx(args.checkpoint, args.out, size, args.batch, args.opset, args.rtol,
                                              args.overwrite)
    except FileExistsError as err:  # --out refused by its claim: the message names it
        return user_error(err)
    except OSError as err:  # the checkpoint's own problems are CheckpointErrors: an OSError is writing --out
        print(f"error: --out {args.out}: cannot write the ONNX file ({type(err).__name__}: {err})", file=sys.stderr)
        return 2
    except user_errors() as err:
        return user_error(err)
    print(json.dumps({**report.as_dict(), "preprocess": meta.get("preprocess")}, indent=2))
    if not report.ok:
        print(f"error: {args.out}: ONNX Runtime differs from PyTorch by {report.worst:.3g} (max|diff| / max|output|)"
              f" > --rtol {args.rtol:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
