"""Where onnxruntime INT8 speed goes: kernels, weight granularity, pre-processing, graph optimization level.

    nice -n 10 python benchmarks/bench_ort_kernels.py --arch A0 --size 224 --batches 1 8 --threads 2 \
        --out benchmarks/results/ort_kernels.md

One fused QARepVGG (random init, BN statistics estimated on random images so activations are
O(1)), calibrated (max) on random images, measured side by side in ONE run, runs interleaved:

- fp32: the float export (ORT_ENABLE_ALL);
- ours: our per-channel QDQ export (tools/ptq_eval.py --ort), default U8S8 and precise U8U8 kernels,
  at optimization levels basic / extended / all ("all" adds the CPU layout transforms), and after
  ORT's quant_pre_process;
- static: ORT's quantize_static after quant_pre_process with per-channel and per-tensor weights
  (default and precise kernels), and per-channel without quant_pre_process (the trap of REFERENCE §7).

Accuracy cost of each, on a fixed held-out batch of 8: ||y - y_fp32|| / ||y_fp32|| (FP32 = the
float ONNX model) and, for our export, ||y - y_fakequant|| / ||y_fakequant|| (what the INT8
engine adds to the PyTorch fake-quant model). Speed-ups are FP32 median / variant median in this run.
On a shared machine absolute times drift: read the ratios.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch
from torch import nn

from _timing import median_ms, ort_speed_parser, publish_report
from qarep_dense.data.preprocess import IMAGENET
from qarep_dense.deploy.onnx import export_onnx
from qarep_dense.deploy.ort import cpu_int8_features, make_session, relative_error, run_session
from qarep_dense.layers import reparameterize
from qarep_dense.models import build_classifier
from qarep_dense.quant import ort_quantize_static
from qarep_dense.tasks.quant_check import CheckOptions, QuantConfig, quantize_and_check
from qarep_dense.quant.export import _pre_process, count_ops, kernel_counts

# (row name, ONNX file key, optimization level, precise kernels)
VARIANTS = [
    ("fp32", "fp32", "all", False),
    ("ours per-channel, default kernels", "ours", "all", False),
    ("ours per-channel, precise kernels", "ours", "all", True),
    ("ours per-channel, default, opt extended", "ours", "extended", False),
    ("ours per-channel, default, opt basic", "ours", "basic", False),
    ("ours per-channel + quant_pre_process, default", "ours_pre", "all", False),
    ("static per-channel, default kernels", "static_pc", "all", False),
    ("static per-channel, precise kernels", "static_pc", "all", True),
    ("static per-tensor, default kernels", "static_pt", "all", False),
    ("static per-tensor, precise kernels", "static_pt", "all", True),
    ("static per-channel, no quant_pre_process, default", "static_nopre", "all", False),
]


def parse_args() -> argparse.Namespace:
    return ort_speed_parser(__doc__.split("\n\n")[0], repeats=15, calib_images=16).parse_args()


def random_images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def fused_model(arch: str, size: int) -> nn.Module:
    """Fused random-init QARepVGG whose BN statistics come from random images (a cumulative average)."""
    torch.manual_seed(0)
    model = build_classifier(arch, "qarepvgg", 1000)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for seed in range(3):
        model(IMAGENET(random_images(4, size, 100 + seed)))
    return reparameterize(model.eval()).eval()


def build_files(args: argparse.Namespace, work: Path) -> tuple[dict[str, Path], nn.Module, nn.Module]:
    fused = fused_model(args.arch, args.size)
    calib = [random_images(args.calib_images // 2, args.size, s) for s in range(2)]
    example = IMAGENET(calib[0][:1])
    config = QuantConfig(num_calib_batches=2)
    files = {"fp32": export_onnx(fused, example, work / "fp32.onnx")}
    report = quantize_and_check(fused, calib, IMAGENET, config, options=CheckOptions(
        onnx_path=work / "ours.onnx", ort_pre_process=False, check_images=1, progress=False))
    qmodel, files["ours"] = report.model, Path(report.onnx)
    files["ours_pre"] = _pre_process(files["ours"])
    for key, per_channel, pre in (("static_pc", True, True), ("static_pt", False, True), ("static_nopre", True, False)):
        files[key] = ort_quantize_static(fused, calib, IMAGENET, work / f"{key}.onnx", config, per_channel=per_channel,
                                         pre_process=pre)
    return files, fused, qmodel


def layout_ops(path: Path, level: str, threads: int) -> str:
    """Conv-like op types ORT runs at ``level`` (shows layout transforms such as NCHWc / NHWC)."""
    optimized = path.with_suffix(f".{level}-opt.onnx")
    make_session(path, threads, level, optimized)
    counts = count_ops(optimized)
    optimized.unlink(missing_ok=True)
    convs = {k: v for k, v in counts.items() if "Conv" in k or "Reorder" in k or k == "Transpose"}
    return ", ".join(f"{k} {v}" for k, v in sorted(convs.items()))


def main() -> None:
    import onnxruntime

    args = parse_args()
    torch.set_num_threads(args.threads)
    features = cpu_int8_features()
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        files, fused, qmodel = build_files(args, Path(tmp))
        held_out = IMAGENET(random_images(8, args.size, 999))
        with torch.no_grad():
            fake_quant = [qmodel(held_out).numpy()]
            torch_fp32 = [fused(held_out).numpy()]
        sessions = {name: make_session(files[key], args.threads, level, precise_int8=precise)
                    for name, key, level, precise in VARIANTS}
        fp32_out = run_session(sessions["fp32"], held_out)
        kernels = {}
        for key in files:
            _, total, integer, floating = kernel_counts(files[key], args.threads)
            kernels[key] = f"{integer}/{total}" if key != "fp32" else "-"
        ms = {}
        for batch in args.batches:
            x = held_out[:batch].numpy() if batch <= 8 else IMAGENET(random_images(batch, args.size, 7)).numpy()
            ms[batch] = median_ms({n: (lambda s=s: s.run(None, {"input": x})) for n, s in sessions.items()},
                                  repeats=args.repeats, warmup=2)
            print(f"batch {batch}: " + ", ".join(f"{n} {t:.1f} ms" for n, t in ms[batch].items()), flush=True)
        for name, key, level, precise in VARIANTS:
            out = run_session(sessions[name], held_out)
            vs_fq = f"{relative_error(out, fake_quant):.4f}" if key.startswith("ours") else "-"
            times = " | ".join(f"{ms[b][name]:.1f} | {ms[b]['fp32'] / ms[b][name]:.2f}x" for b in args.batches)
            rows.append(f"| {name} | {kernels[key]} | {times} | {relative_error(out, fp32_out):.4f} | {vs_fq} |")
        rows.append("| PyTorch fake quant (reference, not timed) | - | " + " | ".join("- | -" for _ in args.batches)
                    + f" | {relative_error(fake_quant, torch_fp32):.4f} | 0 |")
        layouts = {level: layout_ops(files["ours"], level, args.threads) for level in ("extended", "all")}
        layouts["fp32 all"] = layout_ops(files["fp32"], "all", args.threads)
    cpu = ", ".join(features["vnni_flags"]) or "no VNNI"
    batch_cols = " | ".join(f"b{b} ms | b{b} speed-up" for b in args.batches)
    header = [f"onnxruntime {onnxruntime.__version__}, {platform.machine()} ({cpu}), {args.threads} intra-op threads, "
              f"{args.arch} {args.size}x{args.size}, random-init fused QARepVGG, median of {args.repeats} interleaved "
              "runs on a shared machine",
              "",
              f"| variant | integer convs | {batch_cols} | rel. error vs FP32 | rel. error vs fake quant |",
              "|---|---|" + "---|---|" * len(args.batches) + "---|---|"]
    notes = [f"- ORT ops, ours at opt extended: {layouts['extended']}",
             f"- ORT ops, ours at opt all: {layouts['all']}",
             f"- ORT ops, fp32 at opt all: {layouts['fp32 all']}"]
    text = "\n".join(header + rows) + "\n\n" + "\n".join(notes) + "\n"
    publish_report(args.out, text)


if __name__ == "__main__":
    main()
