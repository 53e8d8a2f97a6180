"""Deploy-form detector size at 640x640 against YOLOv6 v0.2.0's published numbers (REFERENCE §4)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from qarep_dense.analysis.complexity import count_macs
from qarep_dense.layers import reparameterize
from qarep_dense.models.detector import build_detector


def test_count_macs_by_hand():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 1, 1, groups=4),
                        nn.ConvTranspose2d(8, 4, 2, 2), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    # conv1: out 8x4x4=128, 3*9=27 -> 3456; grouped conv: 128 * 2*9 = 2304;
    # deconv: in 8x4x4=128 elements * 4 out * 4 taps = 2048; linear: 256 * 10 = 2560.
    assert count_macs(net, torch.zeros(1, 3, 8, 8)) == 3456 + 2304 + 2048 + 2560


def test_macs_scale_with_pixel_count():
    """Every layer's cost is proportional to (H/s)(W/s), so a 64x64 pass times 100 is the 640x640 cost."""
    model = reparameterize(build_detector("test", "qarepvgg"))
    assert count_macs(model, torch.zeros(1, 3, 128, 128)) == 4 * count_macs(model, torch.zeros(1, 3, 64, 64))


# scale: (params, multiply-adds at 640x640), YOLOv6 v0.2.0 fused deploy models with 80 classes.
PUBLISHED = {"n": (4.32e6, 5.52e9), "t": (9.70e6, 12.37e9), "s": (17.22e6, 21.93e9)}


@pytest.mark.parametrize("block", ["qarepvgg", "repvgg"])
@pytest.mark.parametrize("scale", sorted(PUBLISHED))
def test_deploy_size_matches_published(scale, block):
    model = reparameterize(build_detector(scale, block, num_classes=80), fold_bn=True)
    params = sum(p.numel() for p in model.parameters())
    macs = count_macs(model, torch.zeros(1, 3, 64, 64)) * 100  # exact: see test_macs_scale_with_pixel_count
    want_params, want_macs = PUBLISHED[scale]
    assert abs(params / want_params - 1) < 0.03, f"{scale}: {params / 1e6:.3f}M params"
    assert abs(macs / want_macs - 1) < 0.03, f"{scale}: {macs / 1e9:.3f} G multiply-adds"
    # YOLOv6's README quotes FLOPs = 2 x multiply-adds: N 11.1 G, S 44.2 G
    if scale in ("n", "s"):
        assert abs(2 * macs / {"n": 11.1e9, "s": 44.2e9}[scale] - 1) < 0.03


def test_dfl_head_adds_only_the_bin_channels():
    plain = sum(p.numel() for p in build_detector("test", use_dfl=False).parameters())
    dfl = sum(p.numel() for p in build_detector("test", use_dfl=True, reg_max=16).parameters())
    # three reg preds grow from 4 to 68 outputs over input widths 16, 32, 64 (+ bias)
    assert dfl - plain == 64 * (16 + 32 + 64 + 3)
