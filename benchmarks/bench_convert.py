"""Conversion exactness per source: max |logit difference| between the source model and ours.

    python benchmarks/bench_convert.py            # prints a Markdown table (about a minute on 2 cores)

Sources, all randomly initialised (no downloads) with random BN statistics so every branch matters:
* timm ``repvgg_a0`` / ``repvgg_b1g4`` (timm 1.0, the real library): train form, our fused form, and
  timm's own reparameterized form converted;
* the official RepVGG / RepOptimizer key layouts (our A0 under their names: checks the tables);
* YOLOv6 v2-era n / t / s release files (the YOLOv6-layout fixture of tests/test_convert_yolov6.py,
  pickled half precision under YOLOv6's module paths, read by the restricted unpickler), plus the
  same weights built with PyTorch's BN defaults (1e-5 / 0.1) instead of YOLOv6's (1e-3 / 0.03).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (str(ROOT), str(ROOT / "tests")):  # the YOLOv6-layout fixture lives with the tests
    if path not in sys.path:
        sys.path.insert(0, path)

from qarep_dense.convert import convert_state  # noqa: E402
from qarep_dense.layers import reparameterize  # noqa: E402
from qarep_dense.models.classifier import build_classifier  # noqa: E402
from qarep_dense.models.detector import build_detector  # noqa: E402
from test_convert_classifier import OFFICIAL, _official_keys  # noqa: E402
from test_convert_yolov6 import _release, _save_release, yolov6_modules  # noqa: E402


@torch.no_grad()
def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN statistics and affine parameters, mild enough that deep nets keep O(1) outputs."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_((torch.rand(n, generator=gen) - 0.5) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            if m.affine:
                m.weight.copy_(torch.rand(n, generator=gen) * 0.3 + 0.3)
                m.bias.copy_((torch.rand(n, generator=gen) - 0.5) * 0.2)
    return model


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def timm_rows(tmp: Path) -> list[tuple]:
    import timm

    rows = []
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for name in ("repvgg_a0", "repvgg_b1g4"):
        ref = randomize_bn(timm.create_model(name, pretrained=False)).eval()
        torch.save(ref.state_dict(), tmp / f"{name}.pth")
        state, meta = convert_state(tmp / f"{name}.pth", "timm")
        ours = build_classifier(meta["arch"], meta["block"], meta["num_classes"]).eval()
        ours.load_state_dict(state)
        expected = ref(x)
        scale = expected.abs().max().item()
        rows.append((f"timm {name}", "train form", len(state), _diff(ours(x), expected), scale))
        rows.append((f"timm {name}", "ours fused vs timm train", len(state), _diff(reparameterize(ours)(x), expected),
                     scale))
        for m in ref.modules():
            if hasattr(m, "reparameterize"):
                m.reparameterize()
        torch.save(ref.state_dict(), tmp / f"{name}_deploy.pth")
        state, meta = convert_state(tmp / f"{name}_deploy.pth", "timm")
        fused = reparameterize(build_classifier(meta["arch"], "repvgg", meta["num_classes"])).eval()
        fused.load_state_dict(state)
        rows.append((f"timm {name}", "timm reparameterized", len(state), _diff(fused(x), ref(x)), scale))
    return rows


@torch.no_grad()
def official_rows(tmp: Path) -> list[tuple]:
    rows = []
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    labels = {"repvgg": "official RepVGG", "repopt": "RepOpt-VGG target", "hs": "RepOpt Hyper-Search",
              "repvgg_baseline": "RepOptimizers' RepVGG baseline"}
    for layout in sorted(OFFICIAL):
        ref = randomize_bn(build_classifier("A0", layout.split("_")[0], 1000)).eval()
        torch.save(_official_keys(ref.state_dict(), OFFICIAL[layout]), tmp / f"official_{layout}.pth")
        state, meta = convert_state(tmp / f"official_{layout}.pth", "repvgg")
        ours = build_classifier(meta["arch"], meta["block"], meta["num_classes"]).eval()
        ours.load_state_dict(state)
        expected = ref(x)
        rows.append((labels[layout], "train form", len(state), _diff(ours(x), expected), expected.abs().max().item()))
    return rows


@torch.no_grad()
def yolov6_rows(tmp: Path) -> list[tuple]:
    rows = []
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    for scale in ("n", "t", "s"):
        with yolov6_modules():
            ref = randomize_bn(_release(scale, "repvgg"))
            count = len(ref.state_dict())
            _save_release(ref, tmp / f"yolov6{scale}.pt")
        ref = ref.half().float()
        state, meta = convert_state(tmp / f"yolov6{scale}.pt", "yolov6")
        expected = torch.cat(ref(x), -1)
        for label, eps, momentum in (("YOLOv6 BN (1e-3 / 0.03)", 1e-3, 0.03), ("PyTorch BN (1e-5 / 0.1)", 1e-5, 0.1)):
            ours = build_detector(scale, "repvgg", meta["num_classes"], bn_eps=eps, bn_momentum=momentum).eval()
            ours.load_state_dict(state)
            rows.append((f"YOLOv6-{scale} release (fp16)", label, f"{count} -> {len(state)}",
                         _diff(torch.cat(ours(x), -1), expected), expected.abs().max().item()))
    return rows


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        rows = timm_rows(Path(tmp)) + official_rows(Path(tmp)) + yolov6_rows(Path(tmp))
    print("| source | form | tensors | max abs diff | max abs output |")
    print("|---|---|---|---|---|")
    for source, form, count, diff, scale in rows:
        print(f"| {source} | {form} | {count} | {diff:.3g} | {scale:.3g} |")


if __name__ == "__main__":
    main()
