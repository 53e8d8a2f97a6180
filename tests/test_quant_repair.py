"""Dead-channel repair: hand-checked column zeroing (groups), bit-identical FP32, lower INT8 error."""
import copy

from functools import partial

import pytest
import torch
from torch import nn

from qarep_dense.data.preprocess import IMAGENET
from qarep_dense.layers import make_block, reparameterize
from qarep_dense.quant.repair import find_dead_inputs, repair_dead_channels, zero_input_columns
from support import uint8_batches  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


image_loader = partial(uint8_batches, size=12)


def test_zero_input_columns_respects_groups():
    conv = nn.Conv2d(8, 6, 3, groups=2)  # 4 inputs and 3 outputs per group
    nn.init.constant_(conv.weight, 1.0)
    zero_input_columns(conv, torch.tensor([1, 5]))
    w = conv.weight
    # input 1 = group 0, local 1 -> outputs 0..2; input 5 = group 1, local 1 -> outputs 3..5
    assert torch.all(w[:, 1] == 0)
    assert torch.all(w[:, [0, 2, 3]] == 1)
    deconv = nn.ConvTranspose2d(4, 6, 2, groups=2)
    nn.init.constant_(deconv.weight, 1.0)
    zero_input_columns(deconv, torch.tensor([2]))
    assert torch.all(deconv.weight[2] == 0) and int((deconv.weight == 0).sum()) == deconv.weight[2].numel()
    fc = nn.Linear(5, 3)
    zero_input_columns(fc, torch.tensor([0, 4]))
    assert torch.all(fc.weight[:, [0, 4]] == 0) and torch.all(fc.weight[:, 1:4] != 0)


def planted_model(channels=8, dead=(0, 3, 6), groups=2):
    """stem (dead output channels) -> RepVGG block whose identity BN learned var 1e-12 there -> RepVGG block."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, channels, 3, padding=1)
    with torch.no_grad():
        conv.weight[list(dead)] = 0
        conv.bias[list(dead)] = -1.0
    b1 = make_block("repvgg", channels, channels, groups=groups)
    b2 = make_block("repvgg", channels, channels)
    with torch.no_grad():
        for bn in [m for m in (b1, b2) for m in m.modules() if isinstance(m, nn.BatchNorm2d)]:
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
        b1.branch_identity.running_mean[list(dead)] = 0.0
        b1.branch_identity.running_var[list(dead)] = 1e-12
        b1.branch_identity.weight[list(dead)] = 1.0
    return reparameterize(nn.Sequential(conv, nn.ReLU(), b1, b2).eval())


def test_find_dead_inputs_sees_the_planted_channels():
    model = planted_model()
    dead = find_dead_inputs(model, [b for b, _ in image_loader()], IMAGENET)
    assert torch.nonzero(dead["2.conv"]).flatten().tolist() == [0, 3, 6]
    assert not dead["0"].any()


def test_repair_keeps_fp32_bit_identical_and_lowers_int8_error():
    pytest.importorskip("pytorch_quantization")
    from qarep_dense.quant import QuantConfig, quantize_ptq

    model = planted_model()
    loader = image_loader()
    batches = [b for b, _ in loader]
    repaired = copy.deepcopy(model)
    report = repair_dead_channels(repaired, batches, IMAGENET)
    assert [e.layer for e in report] == ["2.conv"] and report[0].channels == [0, 3, 6]
    assert report[0].max_abs_before > 300 > 5 > report[0].max_abs_after
    with torch.no_grad():
        for images in batches:
            x = IMAGENET(images)
            assert torch.equal(model(x), repaired(x))
    x = IMAGENET(batches[0])
    errors = {}
    for repair in (False, True):
        qmodel, rep = quantize_ptq(model, loader, IMAGENET, QuantConfig(repair_dead_channels=repair), progress=False)
        assert len(rep.repair) == int(repair)
        with torch.no_grad():
            y, yq = model(x), qmodel(x)
        errors[repair] = float(((y - yq) ** 2).sum() / (y ** 2).sum())
    assert errors[True] < errors[False] / 10, errors
