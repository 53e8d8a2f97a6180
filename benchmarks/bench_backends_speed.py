"""INT8 speed at a realistic size: each backend's QDQ export against onnxruntime's own quantize_static, one run.

    nice -n 10 python benchmarks/bench_backends_speed.py --arch A0 --size 224 --batches 1 8 --repeats 10 \
        --out benchmarks/results/backends_speed.md

One fused A0 QARepVGG at 224x224 (random init, BN statistics from random images, as bench_ort_kernels.py
builds it), calibrated (max) on the same random images by every variant:

- ``pytorch-quantization`` / ``modelopt``: the project's QDQ export with either backend (signed int8 activations,
  Q/DQ moved in front of each ReLU, uint8 with zero point 128: exact, see qarep_dense/quant/export.py);
- ``modelopt unsigned``: ``mtq.quantize`` with the input quantizers after a ReLU unsigned (first layer signed),
  exported as it is: the ORT-fusable fix of a plain modelopt flow (a different, finer grid after each ReLU);
- ``ort-static``: ``quantize_static`` after ``quant_pre_process`` (per-channel weights, symmetric activations).

Per variant: integer convs in ORT's optimized graph, what else ORT still runs in float between them (the op
counts of its optimized graph, ORT_ENABLE_ALL), and the median latency at each batch with ORT's default INT8
kernels, all variants interleaved in one loop so that load from other processes hits them alike. Speed-ups are
FP32 median / variant median in this run; on a shared machine read the ratios, not the milliseconds.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from _timing import median_ms, ort_speed_parser, publish_report
from bench_backends import ort_fix_config
from bench_ort_kernels import fused_model, random_images
from qarep_dense.data.preprocess import IMAGENET
from qarep_dense.deploy.onnx import export_onnx
from qarep_dense.deploy.ort import export_graph, make_session, run_session
from qarep_dense.quant import ort_quantize_static
from qarep_dense.quant.backends import get_backend
from qarep_dense.quant.export import count_ops, kernel_counts
from qarep_dense.tasks.quant_check import CheckOptions, QuantConfig, quantize_and_check

# Ops worth naming in the optimized graph: what sits between the integer convs.
SHOWN = ("QLinearConv", "QuantizeLinear", "DequantizeLinear", "Relu", "Conv", "FusedConv", "GlobalAveragePool",
         "QLinearGlobalAveragePool", "Gemm", "QGemm", "MatMul", "Transpose", "ReorderInput", "ReorderOutput")


def parse_args() -> argparse.Namespace:
    return ort_speed_parser(__doc__.split("\n\n")[0], repeats=10, calib_images=8).parse_args()


def modelopt_unsigned(fused, calib: list[torch.Tensor], path: Path) -> Path:
    get_backend("modelopt")  # imports modelopt with torch.nn as torch ships it
    import copy

    import modelopt.torch.quantization as mtq

    first = next(n for n, m in fused.named_modules() if isinstance(m, torch.nn.Conv2d))

    def forward_loop(model):
        with torch.no_grad():
            for images in calib:
                model(IMAGENET(images))

    model = mtq.quantize(copy.deepcopy(fused), ort_fix_config(mtq, first), forward_loop)
    return export_graph(model.eval(), IMAGENET(calib[0][:1]), path, quiet=True)


def build_files(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    fused = fused_model(args.arch, args.size)
    calib = [random_images(args.calib_images // 2, args.size, s) for s in range(2)]
    files = {"fp32": export_onnx(fused, IMAGENET(calib[0][:1]), work / "fp32.onnx")}
    for backend in ("pytorch_quantization", "modelopt"):
        report = quantize_and_check(fused, calib, IMAGENET, QuantConfig(num_calib_batches=2, backend=backend),
                                    options=CheckOptions(onnx_path=work / f"{backend}.onnx", ort_pre_process=False,
                                                         check_images=1, progress=False))
        files[backend.replace("_", "-")] = Path(report.onnx)
    files["modelopt unsigned"] = modelopt_unsigned(fused, calib, work / "modelopt_unsigned.onnx")
    files["ort-static"] = ort_quantize_static(fused, calib, IMAGENET, work / "ort_static.onnx",
                                              QuantConfig(num_calib_batches=2))
    return files


def optimized_ops(path: Path, threads: int) -> Counter:
    optimized = path.with_suffix(".all-opt.onnx")
    make_session(path, threads, "all", optimized, precise_int8=False)
    counts = count_ops(optimized)
    optimized.unlink(missing_ok=True)
    return counts


def main() -> None:
    import onnxruntime

    args = parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        files = build_files(args, Path(tmp))
        info = {}
        for name, path in files.items():
            if name != "fp32":
                _, total, integer, _ = kernel_counts(path, args.threads)
                ops = optimized_ops(path, args.threads)
                info[name] = (f"{integer}/{total}", ", ".join(f"{k} {ops[k]}" for k in SHOWN if ops.get(k)))
        sessions = {name: make_session(path, args.threads, precise_int8=False) for name, path in files.items()}
        rows = []
        for batch in args.batches:
            x = np.random.default_rng(0).standard_normal((batch, 3, args.size, args.size)).astype(np.float32)
            ms = median_ms({name: (lambda s=s: run_session(s, x)) for name, s in sessions.items()}, args.repeats, 2)
            rows += [f"| {batch} | {name} | {info[name][0]} | {ms['fp32']:.1f} | {ms[name]:.1f} | "
                     f"{ms['fp32'] / ms[name]:.2f}x | {info[name][1]} |" for name in files if name != "fp32"]
            print("\n".join(rows[-len(info):]), flush=True)
    after = os.getloadavg()
    text = "\n".join([
        f"## INT8 speed per backend, fused {args.arch} at {args.size} (onnxruntime {onnxruntime.__version__}, "
        f"{platform.processor() or platform.machine()}, {args.threads} intra-op threads, median of {args.repeats}, "
        f"load average {load[0]:.1f} before / {after[0]:.1f} after)", "",
        "| batch | INT8 variant | integer convs | FP32 ms | INT8 ms | speed-up | ops in ORT's optimized graph |",
        "|---|---|---|---|---|---|---|", *rows])
    publish_report(args.out, text)


if __name__ == "__main__":
    main()
