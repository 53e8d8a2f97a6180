"""The trainings' speed settings, each measured against eager NCHW in the same run (one CPU thread).

    python benchmarks/bench_train_speed.py --out benchmarks/results/train_speed.md

One SGD step of the main job's models: the digits classifier (A0h, 64 images at 24x24) and the canvas detector
(A0h trunk, Rep-PAN neck, efficient head, 16 canvases at 64x64; the summed head outputs stand in for the loss,
which runs outside the compiled forward in training too): eager NCHW, channels-last weights
(``train.channels_last``), channels-last plus ``torch.compile`` (``train.compile``; the first step's compile
time reported apart, with inductor's on-disk cache as the run finds it); and the digit-canvas FCN segmentor
(``configs/seg/fcn_repvgg-a0h_1xb16-2000it_digits-canvas-64x64.py``, 16 canvases, mmseg's loss), eager NCHW
against channels-last (``ChannelsLastHook``). Random weights and inputs: speed only; steps measured round-robin.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from torch import nn

from qarep_dense.engine.trainer import compile_for_training
from qarep_dense.models import build_classifier
from qarep_dense.models.detector import build_trunk_detector
from _timing import median_ms, publish_report  # benchmarks/ is the script's folder, first on sys.path  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, default=None, help="append the Markdown report to this file")
    return p.parse_args()


def segmentor_steps(repeats: int) -> dict[str, float]:
    """Median ms per SGD step of the digit-canvas FCN (mmseg's ``loss``), NCHW and channels-last."""
    from mmengine.config import Config
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    import qarep_dense.integrations.mmseg  # noqa: F401  (registers the backbone)

    cfg = Config.fromfile(str(Path(__file__).resolve().parents[1] / "configs" / "seg" /
                              "fcn_repvgg-a0h_1xb16-2000it_digits-canvas-64x64.py"))
    cfg.model.backbone.init_cfg = None
    x = torch.randn(16, 3, 64, 64)
    samples = []
    for _ in range(16):
        sample = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 11, (1, 64, 64))))
        sample.set_metainfo(dict(img_shape=(64, 64), pad_shape=(64, 64), ori_shape=(64, 64)))
        samples.append(sample)

    def make(channels_last: bool):
        torch.manual_seed(0)
        model = MODELS.build(cfg.model).train()
        if channels_last:
            model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            losses = model.loss(x, samples)
            sum(v for k, v in losses.items() if "loss" in k).backward()
            opt.step()

        return step

    return median_ms({"eager NCHW": make(False), "channels_last": make(True)}, repeats=repeats, warmup=2)


def step_fn(model: nn.Module, x: torch.Tensor, loss: callable):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss(model(x)).backward()
        opt.step()

    return step


def step_variants(make: callable, x: torch.Tensor, loss: callable, repeats: int) -> tuple[dict, float]:
    """Median ms per step of eager NCHW, channels-last and channels-last + compile; and the compile seconds."""
    eager = make()
    last = make().to(memory_format=torch.channels_last)
    compiled_module = make().to(memory_format=torch.channels_last)
    compiled = compile_for_training(compiled_module)
    start = time.perf_counter()
    step_fn(compiled, x, loss)()  # the first step compiles (forward and backward)
    compile_s = time.perf_counter() - start
    fns = {"eager NCHW": step_fn(eager, x, loss), "channels_last": step_fn(last, x, loss),
           "channels_last + compile": step_fn(compiled, x, loss)}
    return median_ms(fns, repeats=repeats, warmup=2), compile_s


def main() -> str:
    args = parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    lines = [f"# Speed settings of the trainings ({platform.processor() or platform.machine()}, 1 thread, "
             f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')})", ""]

    classifier = lambda: build_classifier("A0h", "repvgg", 10, stem_stride=1).train()  # noqa: E731
    detector = lambda: build_trunk_detector("A0h", "repvgg", "t", 10, stem_stride=1).train()  # noqa: E731
    cases = [("digits classifier, A0h, 64 x 24x24", classifier, torch.randn(64, 3, 24, 24),
              lambda out: nn.functional.cross_entropy(out, torch.zeros(64, dtype=torch.long))),
             ("canvas detector, A0h trunk, 16 x 64x64", detector, torch.randn(16, 3, 64, 64),
              lambda out: sum(t.float().sum() for part in out for t in (part if isinstance(part, (list, tuple))
                                                                          else [part])))]
    lines += ["| one training step (median ms) | eager NCHW | channels_last | channels_last + compile | "
              "speed-up of each | compile s |", "|---|---|---|---|---|---|"]
    for name, make, x, loss in cases:
        ms, compile_s = step_variants(make, x, loss, args.repeats)
        base = ms["eager NCHW"]
        lines.append(f"| {name} | {base:.1f} | {ms['channels_last']:.1f} | {ms['channels_last + compile']:.1f} | "
                     f"{base / ms['channels_last']:.2f}x, {base / ms['channels_last + compile']:.2f}x | "
                     f"{compile_s:.1f} |")
    ms = segmentor_steps(args.repeats)
    lines.append(f"| digit-canvas FCN segmentor, A0h trunk, 16 x 64x64 | {ms['eager NCHW']:.1f} | "
                 f"{ms['channels_last']:.1f} | - | {ms['eager NCHW'] / ms['channels_last']:.2f}x | - |")
    return publish_report(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
