"""The anchor benchmark's own pieces: which layers get unsigned inputs, and the loss AutoQuantize scores with."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

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


def test_segmentation_loss_is_the_pixel_cross_entropy_without_the_ignore_label():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    masks = [torch.randint(0, 3, (8, 8)), torch.randint(0, 3, (8, 8))]
    masks[0][:4] = bench_backends.IGNORE
    loss = bench_backends.task_loss(nn.Identity(), {"task": "seg"}, identity)(lambda _: logits, (None, masks))
    up = nn.functional.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    target = torch.stack(masks).long()
    keep = target != bench_backends.IGNORE
    expected = nn.functional.cross_entropy(up.permute(0, 2, 3, 1)[keep], target[keep])
    assert torch.isclose(loss, expected)
