"""The anchor benchmark's own pieces: which layers get unsigned inputs, and the loss AutoQuantize scores with."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_backends  # noqa: E402


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def test_unsigned_inputs_are_exactly_the_relu_outputs():
    # conv0 sees the (signed) image, conv1 a ReLU output, conv2 a SiLU output (negative somewhere), fc a ReLU output
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.SiLU(),
                          nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
    torch.manual_seed(0)
    batches = [(torch.randn(2, 3, 8, 8), torch.zeros(2))]
    assert bench_backends.nonnegative_inputs(model, batches, identity) == ["2", "7"]
    assert not any(m._forward_pre_hooks for m in model.modules())  # the hooks are gone


def test_ort_fix_config_marks_only_the_given_layers_unsigned():
    mtq = pytest.importorskip("modelopt.torch.quantization")
    cfg = bench_backends.ort_fix_config(mtq, ["stage.1.conv"])
    added = cfg["quant_cfg"][len(mtq.INT8_DEFAULT_CFG["quant_cfg"]):]
    assert added == [{"quantizer_name": "stage.1.conv.input_quantizer",
                      "cfg": {"num_bits": 8, "axis": None, "unsigned": True}}]
    assert all("unsigned" not in str(e) for e in mtq.INT8_DEFAULT_CFG["quant_cfg"])  # the shipped config untouched


def test_segmentation_loss_is_the_decode_heads_training_loss():
    """AutoQuantize scores a segmentor with the loss it was trained with: mmseg's cross-entropy of the config, which
    averages over every pixel with the ignored ones counting zero (``avg_non_ignore=False``, mmseg's default)."""
    mm = pytest.importorskip("qarep_dense.integrations.mmseg")
    from qarep_dense.data.digits_canvas import IGNORE

    cfg = mm.load_config(ROOT / "configs" / "seg" / "fcn_qarepvgg-test_1xb4-2it_digits-canvas-32x32.py")
    torch.manual_seed(0)
    logits = torch.randn(2, 11, 4, 4)
    masks = [torch.randint(0, 11, (8, 8)), torch.randint(0, 11, (8, 8))]
    masks[0][:4] = IGNORE
    loss = bench_backends.task_loss(nn.Identity(), mm.seg_meta(cfg), identity)(lambda _: logits, (torch.zeros(2), masks))
    up = nn.functional.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    per_pixel = nn.functional.cross_entropy(up, torch.stack(masks).long(), ignore_index=IGNORE, reduction="none")
    assert torch.isclose(loss, per_pixel.sum() / per_pixel.numel())  # ignored pixels: 0 in the sum, 1 in the count
