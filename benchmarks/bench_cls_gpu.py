"""RepVGG/QARepVGG-A0 training steps at batch 256 with AMP, eager and under ``torch.compile``: the CUDA check
of the classification path.

    python benchmarks/bench_cls_gpu.py --device cuda                         # A0, 224px, batch 256
    python benchmarks/bench_cls_gpu.py --device cpu --arch test --size 32 --batch 8 --steps 3 --warmup 1 \
        --compile-backend eager                                               # smoke run (seconds)

Times full steps (ImageNet preprocessing of uint8 images, forward, cross-entropy, backward, SGD with
the classification param groups) on one fixed random batch (the loader is not what is measured; the
loss falls as the model memorises it). Then the same with ``torch.compile(model)``: a compile that
fails is reported (``compile.error``), not raised, so the eager numbers still count. Prints a JSON
summary; ``--json FILE`` writes it too.
"""
from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from qarep_dense.data.preprocess import IMAGENET
from qarep_dense.models.classifier import build_classifier
from qarep_dense.optim import param_groups


def run_steps(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int, warmup: int,
              amp: bool) -> dict:
    """Train ``steps`` steps on one batch; images/s over the steps after ``warmup`` and every step's loss."""
    device = images.device
    opt = torch.optim.SGD(param_groups(model, 1e-4), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, start = [], None
    for step in range(steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        with torch.autocast(device.type, enabled=amp):
            loss = F.cross_entropy(model(IMAGENET(images)), labels)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    timed = steps - warmup
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    return {"images_per_s": timed * images.shape[0] / seconds, "ms_per_step": seconds / timed * 1e3,
            "peak_memory_gib": peak, "loss_first": losses[0], "loss_last": losses[-1], "losses": losses}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--arch", default="A0")
    p.add_argument("--block", default="qarepvgg")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="untimed first steps (compilation happens here)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile run")
    p.add_argument("--no-eager", action="store_true", help="skip the eager run (only the torch.compile one)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: tracing only)")
    p.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = p.parse_args(argv)
    if not 0 <= args.warmup < args.steps:
        p.error("--warmup must be in [0, --steps)")
    device = torch.device(args.device)
    amp = device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, generator=g).to(device)
    labels = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    torch.manual_seed(0)
    summary: dict = {"arch": args.arch, "block": args.block, "size": args.size, "batch": args.batch,
                     "device": str(device), "amp": amp}
    if not args.no_eager:
        summary["eager"] = run_steps(build_classifier(args.arch, args.block, 1000).to(device).train(), images,
                                     labels, args.steps, args.warmup, amp)
    summary["compile"] = {"backend": args.compile_backend, "skipped": args.no_compile}
    if not args.no_compile:
        model = build_classifier(args.arch, args.block, 1000).to(device).train()
        t0 = time.perf_counter()
        try:
            compiled = torch.compile(model, backend=args.compile_backend)
            summary["compile"].update(run_steps(compiled, images, labels, args.steps, args.warmup, amp))
        except Exception as err:  # noqa: BLE001 - any compiler failure is a finding to report, not a crash
            summary["compile"]["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            traceback.print_exc()
        summary["compile"]["wall_s"] = time.perf_counter() - t0
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return summary


if __name__ == "__main__":
    main()
