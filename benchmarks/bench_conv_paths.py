"""Where could the main job's trainings get faster without changing a recipe? The convolution paths, side by side.

The trainings are convolution-bound (one thread per stage). This measures, in one run and one thread each:

1. one training step of the main job's classifier (A0h RepVGG, 64 digits of 24x24) with PyTorch's oneDNN
   convolutions (the default) and with its native path (``torch.backends.mkldnn.enabled = False``);
2. per layer (3x3 conv, forward + backward) at the classifier's and the segmentor's shapes:
   oneDNN, im2col + one GEMM (``F.unfold`` + matmul), and the three classification seeds as one grouped
   convolution (``groups=3``) against three separate ones;
3. whether this torch build survives the backward of a channels-last 1x1 stride-2 convolution on 3 input
   channels (the RepVGG stem's 1x1 branch at stride 2, as the detectors and segmentors have it), in a
   process of its own.

    OMP_NUM_THREADS=1 python benchmarks/bench_conv_paths.py [--repeats 30]

Prints markdown; ratios > 1 mean the alternative is faster than oneDNN.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qarep_dense.models.classifier import build_classifier  # noqa: E402

CHANNELS_LAST_STEM = """
import torch
torch.set_num_threads(1)
conv = torch.nn.Conv2d(3, 24, 1, 2, bias=False).to(memory_format=torch.channels_last)
x = torch.randn(16, 3, 64, 64).contiguous(memory_format=torch.channels_last)
for _ in range(5):
    conv(x).sum().backward()
print("ok")
"""


def timed(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def classifier_step(repeats: int) -> float:
    torch.manual_seed(0)
    model = build_classifier("A0h", "repvgg", 10, stem_stride=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(64, 3, 24, 24), torch.randint(0, 10, (64,))

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return timed(step, repeats)


def layer_paths(batch: int, channels: int, size: int, repeats: int) -> dict[str, float]:
    xs = [torch.randn(batch, channels, size, size, requires_grad=True) for _ in range(3)]
    ws = [torch.randn(channels, channels, 3, 3, requires_grad=True) for _ in range(3)]
    xg = torch.randn(batch, 3 * channels, size, size, requires_grad=True)
    wg = torch.randn(3 * channels, channels, 3, 3, requires_grad=True)

    def backward(y):
        y.backward(torch.ones_like(y))

    def onednn():
        backward(F.conv2d(xs[0], ws[0], padding=1))

    def unfold_gemm():
        cols = F.unfold(xs[0], 3, padding=1)
        backward((ws[0].view(channels, -1) @ cols).view(batch, channels, size, size))

    def three_separate():
        for x, w in zip(xs, ws):
            backward(F.conv2d(x, w, padding=1))

    def grouped():
        backward(F.conv2d(xg, wg, padding=1, groups=3))
    return {"onednn": timed(onednn, repeats), "unfold_gemm": timed(unfold_gemm, repeats),
            "three_separate": timed(three_separate, repeats), "grouped": timed(grouped, repeats)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread\n")

    print("| classifier training step (A0h RepVGG, 64 x 24x24) | ms | oneDNN / this |\n|---|---|---|")
    torch.backends.mkldnn.enabled = True
    base = classifier_step(max(4, args.repeats // 3))
    torch.backends.mkldnn.enabled = False
    native = classifier_step(max(4, args.repeats // 3))
    torch.backends.mkldnn.enabled = True
    print(f"| oneDNN (default) | {base:.1f} | 1.00 |\n| native (mkldnn off) | {native:.1f} | {base / native:.2f} |\n")

    print("| 3x3 conv, fwd + bwd (batch, channels, size) | oneDNN ms | unfold + GEMM ms (x) | 3 separate ms | "
          "grouped x3 ms (x) |\n|---|---|---|---|---|")
    for shape in [(64, 96, 3), (64, 48, 6), (64, 24, 12), (64, 24, 24), (16, 96, 4), (16, 48, 8), (16, 24, 16)]:
        t = layer_paths(*shape, args.repeats)
        print(f"| {shape} | {t['onednn']:.2f} | {t['unfold_gemm']:.2f} ({t['onednn'] / t['unfold_gemm']:.2f}) | "
              f"{t['three_separate']:.2f} | {t['grouped']:.2f} ({t['three_separate'] / t['grouped']:.2f}) |")

    run = subprocess.run([sys.executable, "-c", CHANNELS_LAST_STEM], capture_output=True, text=True)
    verdict = "ok" if run.returncode == 0 and "ok" in run.stdout else (
        f"failed: exit {run.returncode} ({(run.stderr.strip().splitlines() or ['no message'])[-1][:120]})")
    print(f"\nchannels-last backward of a 1x1 stride-2 conv on 3 input channels (16 x 64x64): {verdict}")


if __name__ == "__main__":
    main()
