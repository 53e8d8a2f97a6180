"""Segmentor latency side by side: train form vs fused (PyTorch), and ONNX Runtime FP32 vs our INT8 QDQ export.

    python benchmarks/bench_seg.py work_dirs/seg/demo_qarepvgg/last.pt --batch 1 --repeats 20
    python benchmarks/bench_seg.py --config configs/seg/deeplabv3plus_qarepvgg-b1g4_4xb2-80k_cityscapes-512x1024.py \
        --size 256 512 --repeats 5      # random-init B1g4 DeepLabV3+ (speed only)

With a checkpoint, the INT8 model is calibrated on its training images (max calibrator) and the
integer kernels are counted in ORT's optimized graph. Runs of the variants are interleaved (medians),
so load from other processes hits them alike: read the ratios.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _timing import median_ms  # benchmarks/ is the script's folder, first on sys.path

from qarep_dense.deploy.onnx import export_onnx
from qarep_dense.layers.rep import reparameterize
from qarep_dense.quant import QuantConfig, export_qdq_onnx, quantize_ptq
from qarep_dense.quant.export import OrtModule, kernel_counts


def load(args: argparse.Namespace):
    """(train-form model, preprocess, calibration batches of uint8 images, input size)."""
    from qarep_dense.data.preprocess import IMAGENET
    from qarep_dense.integrations import mmseg as mm

    if args.checkpoint:
        from qarep_dense.evaluation.evaluators import EvalRequest
        from qarep_dense.tasks.registry import load_model
        from qarep_dense.tasks.segmentation import make_evaluator

        model, meta = load_model(args.checkpoint, "seg")
        ev = make_evaluator(EvalRequest(args.checkpoint, meta, None, batch_size=args.batch, progress=False))
        calib = [images for images, _ in list(ev.calibration_loader())[:2]]
        return model, ev.preprocess, calib, tuple(calib[0].shape[-2:])
    cfg = mm.load_config(args.config)
    model_cfg = cfg.model.to_dict()
    model_cfg["backbone"]["init_cfg"] = None
    model = mm.SegmentorLogits(mm.build_segmentor(model_cfg)).eval()
    h, w = args.size
    g = torch.Generator().manual_seed(0)
    calib = [torch.randint(0, 256, (args.batch, 3, h, w), dtype=torch.uint8, generator=g) for _ in range(2)]
    return model, IMAGENET, calib, (h, w)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", type=Path, help="segmentation checkpoint (train form)")
    p.add_argument("--config", type=Path, help="mmseg config for a random-init model (without a checkpoint)")
    p.add_argument("--size", type=int, nargs=2, default=(128, 256), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if not args.checkpoint and not args.config:
        p.error("give a checkpoint or --config")
    torch.set_num_threads(args.threads)
    model, preprocess, calib, (h, w) = load(args)
    deploy = reparameterize(model)
    x = preprocess(calib[0][: args.batch])
    with torch.no_grad():
        torch_ms = median_ms({"train form": lambda: model(x), "fused": lambda: deploy(x)}, args.repeats)
        qmodel, _ = quantize_ptq(deploy, calib, preprocess, QuantConfig(num_calib_batches=len(calib)), progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(deploy, x, Path(tmp) / "fp32.onnx")
        qdq = export_qdq_onnx(qmodel, x, Path(tmp) / "int8.onnx")
        _, total, integer, floating = kernel_counts(qdq, args.threads)
        sessions = {"ORT FP32": OrtModule(fp32, args.threads), "ORT INT8": OrtModule(qdq, args.threads, precise_int8=False)}
        ort_ms = median_ms({k: (lambda s=s: s(x)) for k, s in sessions.items()}, args.repeats)
    name = args.checkpoint or args.config.name
    print(f"{name}: batch {args.batch}, {h}x{w}, {args.threads} threads, median ms of {args.repeats} interleaved runs\n")
    print("| variant | ms | speed-up over the row above it |\n|---|---|---|")
    print(f"| train form (PyTorch) | {torch_ms['train form']:.1f} | |")
    print(f"| fused (PyTorch) | {torch_ms['fused']:.1f} | {torch_ms['train form'] / torch_ms['fused']:.2f}x |")
    print(f"| ORT FP32 (fused) | {ort_ms['ORT FP32']:.1f} | |")
    print(f"| ORT INT8 QDQ ({integer}/{total} integer convs, {floating} float) | {ort_ms['ORT INT8']:.1f} | "
          f"{ort_ms['ORT FP32'] / ort_ms['ORT INT8']:.2f}x |")


if __name__ == "__main__":
    main()
