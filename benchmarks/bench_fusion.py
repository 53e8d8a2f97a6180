"""Fused vs unfused vs plain-VGG inference, and QARepVGG vs RepVGG training-step throughput (CPU).

    python benchmarks/bench_fusion.py [--arch A0] [--repeats 10]

Prints medians and ratios measured side by side in one run.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from _timing import median_ms
from qarep_dense.layers import reparameterize
from qarep_dense.models import build_classifier


def plain_stack(deploy: nn.Module) -> nn.Module:
    """The same layers as a hand-written plain VGG (Conv2d+ReLU Sequential): the physical speed limit."""
    layers = []
    for m in deploy.stages.modules():
        if isinstance(m, nn.Conv2d):
            layers += [nn.Conv2d(m.in_channels, m.out_channels, 3, m.stride, 1, groups=m.groups), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(deploy.fc.in_features, 1000)).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="A0")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, arch {args.arch}, 224x224, medians of {args.repeats}")
    for block in ("qarepvgg", "repvgg"):
        train_form = build_classifier(args.arch, block).eval()
        deploy = reparameterize(train_form)
        plain = plain_stack(deploy)
        for batch in (1, 8):
            x = torch.randn(batch, 3, 224, 224)
            with torch.inference_mode():
                t = median_ms({"unfused": lambda: train_form(x), "fused": lambda: deploy(x),
                               "plain": lambda: plain(x)}, args.repeats)
            print(f"{block:9s} batch {batch}: unfused {t['unfused']:.1f} ms, fused {t['fused']:.1f} ms, "
                  f"plain {t['plain']:.1f} ms | fused/plain {t['fused'] / t['plain']:.2f}, "
                  f"unfused/fused {t['unfused'] / t['fused']:.2f}")
    batch = 8
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))
    steps = {}
    for block in ("qarepvgg", "repvgg"):
        model = build_classifier(args.arch, block).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        steps[block] = step
    t = median_ms(steps, max(3, args.repeats // 2), warmup=1)
    print(f"train step batch {batch}: qarepvgg {t['qarepvgg']:.0f} ms ({batch / t['qarepvgg'] * 1e3:.1f} img/s), "
          f"repvgg {t['repvgg']:.0f} ms ({batch / t['repvgg'] * 1e3:.1f} img/s) | "
          f"qarepvgg/repvgg throughput {t['repvgg'] / t['qarepvgg']:.2f}")


if __name__ == "__main__":
    main()
