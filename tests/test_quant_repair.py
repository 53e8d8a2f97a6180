"""Dead-channel repair: only scale-setting dead slices are zeroed, held-out data is checked, INT8 error drops."""
import copy
from functools import partial

import pytest
import torch
from torch import nn

from qarep_dense.data.preprocess import IMAGENET
from qarep_dense.layers import make_block, reparameterize
from qarep_dense.quant.repair import (find_dead_inputs, outlier_slices, repair_dead_channels, slice_amax,
                                      zero_input_columns)
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


def test_outlier_slices_by_hand():
    """Per output channel: zero dead slices only when a dead one is >= 2x the live max, and then all
    dead slices above the live max (so the scale falls to the live max)."""
    fc = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, 9.0, 1.5, 0.5],    # dead 9 >= 2x live 1: zero 9 and 1.5 (> 1)
                                      [1.0, 1.5, 0.5, 0.2],    # dead max 1.5 < 2x 1: scale unit left alone
                                      [1.0, 0.5, 0.7, 0.0]]))  # dead slices below the live max: nothing
    dead = torch.tensor([False, True, True, False])
    mask = outlier_slices(fc, dead)
    assert mask.tolist() == [[False, True, True, False], [False] * 4, [False] * 4]
    assert outlier_slices(fc, dead, min_ratio=1.0)[1].tolist() == [False, True, False, False]
    # ConvTranspose: scale units are dim 1 of (C_in, C_out, kH, kW); its M is (C_out, C_in).
    deconv = nn.ConvTranspose2d(2, 3, 2, bias=False)
    with torch.no_grad():
        deconv.weight.fill_(0.1)
        deconv.weight[1, 2, 0, 0] = 5.0
    m, index = slice_amax(deconv)
    assert m.shape == (3, 2) and index[2].tolist() == [0, 1]
    assert torch.nonzero(outlier_slices(deconv, torch.tensor([False, True]))).tolist() == [[2, 1]]


def planted_model(channels=8, dead=(0, 3, 6), groups=2, bright=None, small=()):
    """stem (dead output channels ``dead``) -> RepVGG block whose identity BN learned var 1e-12 on them
    -> RepVGG block. ``bright``: one more stem channel that fires only on bright images (mean > 0.45
    after ImageNet normalization), also given a collapsed identity BN. ``small``: dead channels whose
    identity BN gamma is tiny, so their fused column is no outlier."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, channels, 3, padding=1)
    with torch.no_grad():
        conv.weight[list(dead)] = 0
        conv.bias[list(dead)] = -1.0
        if bright is not None:
            conv.weight[bright] = 1.0 / 27
            conv.bias[bright] = 0.0
    b1 = make_block("repvgg", channels, channels, groups=groups)
    b2 = make_block("repvgg", channels, channels)
    collapsed = [c for c in (*dead, bright) if c is not None]
    with torch.no_grad():
        for bn in [m for m in (b1, b2) for m in m.modules() if isinstance(m, nn.BatchNorm2d)]:
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
        b1.branch_identity.running_mean[collapsed] = 0.0
        b1.branch_identity.running_var[collapsed] = 1e-12
        b1.branch_identity.weight[collapsed] = 1.0
        b1.branch_identity.weight[list(small)] = 1e-9  # 1e-9 / sqrt(1e-12 + 1e-5): a tiny fused weight
    return reparameterize(nn.Sequential(conv, nn.ReLU(), b1, b2).eval())


def dark_and_bright(n=2, batch=8, size=12, seed=0):
    """Calibration batches of dark images (0..60) and one held-out batch of bright ones (200..255)."""
    g = torch.Generator().manual_seed(seed)
    dark = [torch.randint(0, 61, (batch, 3, size, size), dtype=torch.uint8, generator=g) for _ in range(n)]
    bright = torch.randint(200, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    return dark, [bright]


def test_find_dead_inputs_sees_the_planted_channels():
    model = planted_model()
    dead = find_dead_inputs(model, [b for b, _ in image_loader()], IMAGENET)
    assert torch.nonzero(dead["2.conv"]).flatten().tolist() == [0, 3, 6]
    assert not dead["0"].any()


def test_repair_zeroes_only_outliers_keeps_fp32_on_heldout_and_lowers_int8_error():
    pytest.importorskip("pytorch_quantization")
    from qarep_dense.quant import QuantConfig, quantize_ptq

    model = planted_model(small=(6,))
    loader = image_loader(3)
    batches, heldout = [b for b, _ in loader[:2]], [loader[2][0]]
    repaired = copy.deepcopy(model)
    report = repair_dead_channels(repaired, batches, IMAGENET, heldout=heldout)
    by_layer = {e.layer: e for e in report.entries}
    entry = by_layer["2.conv"]
    # Channel 6 is dead too, but its fused identity weight is tiny: it sets no scale and stays.
    assert entry.channels == [0, 3] and entry.dead_inputs == 3 and entry.alive_on_heldout == []
    assert entry.zeroed_slices == 2 and entry.output_channels == 2  # one identity slice per channel
    assert entry.max_abs_before > 300 > 5 > entry.max_abs_after
    assert torch.equal(repaired[2].conv.weight[6], model[2].conv.weight[6])
    assert [e.layer for e in report.changed] == ["2.conv"]
    assert report.heldout_images == 8 and report.heldout_max_abs_diff == 0.0 and report.heldout_rel_error == 0.0
    with torch.no_grad():
        for images in batches + heldout:
            assert torch.equal(model(IMAGENET(images)), repaired(IMAGENET(images)))
    x = IMAGENET(batches[0])
    errors = {}
    for repair in (False, True):
        config = QuantConfig(num_calib_batches=2, repair_dead_channels=repair)
        qmodel, rep = quantize_ptq(model, loader, IMAGENET, config, progress=False)
        assert (rep.repair is None) == (not repair)
        assert rep.calib_images == 16  # the held-out third batch is never calibrated on
        if repair:
            assert rep.repair.zeroed_channels == 2 and rep.repair.heldout_images == 8
        with torch.no_grad():
            y, yq = model(x), qmodel(x)
        errors[repair] = float(((y - yq) ** 2).sum() / (y ** 2).sum())
    assert errors[True] < errors[False] / 10, errors


def test_channel_dead_on_calibration_but_alive_on_heldout_is_counted_and_kept():
    model = planted_model(dead=(0, 3), bright=5)
    dark, bright = dark_and_bright()
    assert find_dead_inputs(model, dark, IMAGENET)["2.conv"][5]  # dead on the dark calibration images
    assert not find_dead_inputs(model, bright, IMAGENET)["2.conv"][5]  # alive on the bright held-out ones
    repaired = copy.deepcopy(model)
    report = repair_dead_channels(repaired, dark, IMAGENET, heldout=bright)
    entry = {e.layer: e for e in report.entries}["2.conv"]
    assert entry.alive_on_heldout == [5] and report.alive_on_heldout == 1
    assert entry.channels == [0, 3]  # the collapsed identity of channel 5 is an outlier, yet it is kept
    assert torch.equal(repaired[2].conv.weight[5], model[2].conv.weight[5])
    assert report.heldout_max_abs_diff == 0.0
    # Without the held-out batch the same channel would have been zeroed (the harm the check prevents),
    # and the repaired model would then differ from the original on the bright images.
    blind = copy.deepcopy(model)
    blind_report = repair_dead_channels(blind, dark, IMAGENET)
    assert {e.layer: e for e in blind_report.entries}["2.conv"].channels == [0, 3, 5]
    assert blind_report.heldout_images == 0 and blind_report.heldout_max_abs_diff is None
    with torch.no_grad():
        x = IMAGENET(bright[0])
        assert not torch.equal(blind(x), model(x)) and torch.equal(repaired(x), model(x))


def test_dead_inputs_of_a_linear_layer_with_ordinary_weights_are_left_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()
    with torch.no_grad():
        model[0].weight[[1, 4]] = 0
        model[0].bias[[1, 4]] = -1.0
    before = model[4].weight.clone()
    batches = [b for b, _ in image_loader(3)]
    report = repair_dead_channels(model, batches[:2], IMAGENET, heldout=batches[2:])
    entry = {e.layer: e for e in report.entries}["4"]
    assert entry.dead_inputs == 2 and entry.zeroed_slices == 0 and report.changed == []
    assert torch.equal(model[4].weight, before)
    with pytest.raises(ValueError, match="min_ratio must be >= 1"):
        repair_dead_channels(model, batches, IMAGENET, min_ratio=0.5)
