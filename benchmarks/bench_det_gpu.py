"""yolov6s training throughput, peak memory and a short loss curve: the CUDA check of the detection issue.

    python benchmarks/bench_det_gpu.py --device cuda --scale s --size 640 --batch 32 --steps 30
    python benchmarks/bench_det_gpu.py --device cpu --scale test --size 128 --batch 2 --steps 3   # smoke run

Trains on the embedded synthetic COCO shapes (generated into --data on first use) with the real loss,
SGD with the detection param groups, AMP (autocast + GradScaler) on CUDA. Prints images/s over the steps
after --warmup, peak CUDA memory, and the loss of every step (it should fall); --json FILE also writes them.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from qarep_dense.data.det_loader import make_det_loader
from qarep_dense.data.preprocess import DETECTION
from qarep_dense.data.synthetic.coco import generate_coco
from qarep_dense.losses import DetectionLoss
from qarep_dense.models.detector import build_detector
from qarep_dense.models.zoo import detector_scale
from qarep_dense.optim import param_groups


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--scale", default="s")
    p.add_argument("--block", default="qarepvgg")
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--data", default="data/synthetic_coco_bench")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here (JSON)")
    args = p.parse_args()
    device = torch.device(args.device)
    paths = generate_coco(args.data, num_train=max(4 * args.batch, 64), num_val=8, image_size=args.size, seed=0)
    loader = make_det_loader(paths["train_images"], paths["train_ann"], args.size, args.batch, train=True,
                             workers=args.workers, drop_last=True)
    model = build_detector(args.scale, args.block, num_classes=loader.dataset.num_classes).to(device).train()
    loss_fn = DetectionLoss(model.num_classes, reg_max=model.reg_max, use_dfl=model.reg_max > 0,
                            iou_type=detector_scale(args.scale).iou_loss)
    opt = torch.optim.SGD(param_groups(model, 5e-4), lr=0.01, momentum=0.937, nesterov=True)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    sizes = model.feature_sizes(args.size, args.size)
    points, strides = model.anchors(args.size, args.size, device)
    batches = itertools.cycle(loader)
    losses, timed, start = [], 0, None
    for step in range(args.steps):
        images, targets, _ = next(batches)
        if step == args.warmup:
            if amp:
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, enabled=amp):
            cls_logits, reg = model(DETECTION(images.to(device, non_blocking=True)))
        loss, _ = loss_fn(cls_logits, reg, points, strides, targets.to(device), sizes)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.detach().item())
        timed += images.shape[0] if step >= args.warmup else 0
    if amp:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start if start else float("nan")
    print(f"{args.scale} {args.block} {args.size}px batch {args.batch} on {device} (AMP {amp}): "
          f"{timed / elapsed:.1f} images/s over {args.steps - args.warmup} steps")
    if amp:
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f} GiB")
    print("loss per step:", " ".join(f"{v:.3f}" for v in losses))
    if args.json:
        summary = {"scale": args.scale, "block": args.block, "size": args.size, "batch": args.batch,
                   "device": str(device), "amp": amp, "steps": args.steps, "warmup": args.warmup,
                   "images_per_s": timed / elapsed, "loss_first": losses[0], "loss_last": losses[-1],
                   "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if amp else None,
                   "losses": losses}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
