"""Detector benchmark on CPU: fused vs unfused inference latency, QARepVGG vs RepVGG train-step throughput.

    python benchmarks/bench_detector.py [--scale t] [--threads 2] [--reps 10] [--train-steps 5]

Prints a markdown table and the ratios measured in this one run (results/detector.md records one).
Timings on a shared machine are noisy: compare ratios within a run, not across runs.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from qarep_dense.layers import reparameterize
from qarep_dense.models.detector import build_detector


def _median_interleaved(steps: dict[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each step, calling them in turn so that load from other
    processes on a shared machine hits every contender alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + reps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def latency_ms(models: dict[str, torch.nn.Module], size: int, reps: int, warmup: int = 3) -> dict[str, float]:
    """Median batch-1 forward time at size x size, in milliseconds, per model."""
    x = torch.randn(1, 3, size, size)

    def forward(model: torch.nn.Module):
        return lambda: model(x)

    with torch.inference_mode():
        medians = _median_interleaved({name: forward(m) for name, m in models.items()}, reps, warmup)
    return {name: 1000 * t for name, t in medians.items()}


def train_images_per_s(scale: str, blocks: list[str], size: int, batch: int, steps: int, warmup: int = 2
                       ) -> dict[str, float]:
    """Images/s of forward + backward + SGD step per block; a dummy loss stands in for the detection loss."""
    x = torch.randn(batch, 3, size, size)

    def make_step(block: str):
        torch.manual_seed(0)
        model = build_detector(scale, block).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step() -> None:
            cls, reg = model(x)
            loss = cls.sigmoid().mean() + reg.abs().mean()  # touches every output, like a real loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    medians = _median_interleaved({block: make_step(block) for block in blocks}, steps, warmup)
    return {block: batch / t for block, t in medians.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="t")
    parser.add_argument("--block", default="qarepvgg", help="block for the latency comparison")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--train-size", type=int, default=320)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, scale {args.scale}")

    unfused = build_detector(args.scale, args.block).eval()
    models = {"unfused": unfused, "fused": reparameterize(unfused)}
    print(f"\n| {args.scale} ({args.block}), batch 1 | unfused ms | fused ms | speed-up |\n|---|---|---|---|")
    for size in args.sizes:
        ms = latency_ms(models, size, args.reps)
        print(f"| {size}x{size} | {ms['unfused']:.1f} | {ms['fused']:.1f} | {ms['unfused'] / ms['fused']:.2f}x |")

    rates = train_images_per_s(args.scale, ["qarepvgg", "repvgg"], args.train_size, args.train_batch,
                               args.train_steps)
    print(f"\n| train step, {args.scale} {args.train_size}x{args.train_size} batch {args.train_batch} "
          "| images/s |\n|---|---|")
    for block, rate in rates.items():
        print(f"| {block} | {rate:.2f} |")
    print(f"\nQARepVGG / RepVGG train throughput: {rates['qarepvgg'] / rates['repvgg']:.2f}x")


if __name__ == "__main__":
    main()
