"""DeepLabV3+ QARepVGG-B1g4 training-step throughput at 512x1024 with AMP, and peak memory (one GPU).

    python benchmarks/bench_seg_gpu.py --device cuda                      # the paper's per-GPU batch 2, 512x1024
    python benchmarks/bench_seg_gpu.py --device cuda --batch 8 --block repvgg
    python benchmarks/bench_seg_gpu.py --device cpu --arch test --size 64 128 --batch 2 --steps 3 --warmup 1  # smoke

Builds the segmentor of configs/seg/deeplabv3plus_qarepvgg-b1g4_4xb2-80k_cityscapes-512x1024.py
(random init; --arch swaps the trunk and resizes the heads' inputs to it) and times full steps: the
mmseg data preprocessor, forward, decode + auxiliary losses, backward, SGD (lr 0.01, momentum 0.9,
wd 5e-4) under autocast + GradScaler on CUDA. Inputs are random uint8 images with random label maps
(speed only). Prints images/s over the steps after --warmup, peak CUDA memory and every step's loss.
Needs mmseg / mmengine / mmcv(-lite) next to torch.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

CONFIG = Path(__file__).resolve().parents[1] / "configs/seg/deeplabv3plus_qarepvgg-b1g4_4xb2-80k_cityscapes-512x1024.py"


def build(args: argparse.Namespace) -> torch.nn.Module:
    from qarep_dense.integrations import mmseg as mm
    from qarep_dense.models.zoo import classifier_arch

    cfg = mm.load_config(CONFIG)
    model_cfg = cfg.model.to_dict()
    backbone = model_cfg["backbone"]
    backbone.update(init_cfg=None, arch=args.arch, block=args.block)
    widths = classifier_arch(args.arch).widths
    model_cfg["decode_head"].update(in_channels=widths[4], c1_in_channels=widths[1])
    model_cfg["auxiliary_head"]["in_channels"] = widths[3]
    model_cfg["data_preprocessor"]["size"] = tuple(args.size)
    for head in ("decode_head", "auxiliary_head"):  # one process: plain BN (SyncBN needs a process group)
        model_cfg[head]["norm_cfg"] = dict(type="BN", requires_grad=True)
    return mm.build_segmentor(model_cfg)


def batch(args: argparse.Namespace, g: torch.Generator):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    h, w = args.size
    images, samples = [], []
    for _ in range(args.batch):
        images.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
        s = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 19, (1, h, w), generator=g)))
        s.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        samples.append(s)
    return {"inputs": images, "data_samples": samples}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--arch", default="B1g4")
    p.add_argument("--block", default="qarepvgg")
    p.add_argument("--size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2, help="images per step (the paper: 2 per GPU x 8 GPUs)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args()
    device = torch.device(args.device)
    amp = device.type == "cuda"
    model = build(args).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    g = torch.Generator().manual_seed(0)
    data = [batch(args, g) for _ in range(2)]  # alternate two batches: the loader is not what is measured
    if amp:
        torch.cuda.reset_peak_memory_stats(device)
    losses, start = [], None
    for step in range(args.steps):
        if step == args.warmup:
            if amp:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        inputs = model.data_preprocessor(data[step % 2], training=True)
        with torch.autocast(device.type, enabled=amp):
            parsed = model.loss(inputs["inputs"], inputs["data_samples"])
            loss = sum(v for k, v in parsed.items() if "loss" in k)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss))
    if amp:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    timed = args.steps - args.warmup
    print(f"DeepLabV3+ {args.block}-{args.arch}, {args.size[0]}x{args.size[1]}, batch {args.batch}, "
          f"{'AMP' if amp else 'fp32'} on {device}: {timed * args.batch / seconds:.2f} images/s "
          f"({seconds / timed * 1e3:.0f} ms/step over {timed} steps)")
    if amp:
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    print("loss per step:", " ".join(f"{v:.3f}" for v in losses))


if __name__ == "__main__":
    main()
