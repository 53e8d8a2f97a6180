"""Fused vs unfused equivalence of every block option, in float64 with randomized BN statistics."""
import itertools

import pytest
import torch
from torch import nn

from qarep_dense.layers import BLOCK_TYPES, ConvAct, ConvBNAct, RepVGGBlock, make_block, reparameterize
from qarep_dense.layers.kernels import identity_kernel

SHAPES = [  # (in, out, stride, groups)
    (8, 8, 1, 1), (8, 8, 2, 1), (8, 16, 1, 1), (8, 16, 2, 1),
    (8, 8, 1, 2), (8, 16, 2, 2), (8, 8, 1, 4), (8, 8, 2, 4), (8, 16, 1, 4),
]


@pytest.mark.parametrize("block", sorted(BLOCK_TYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "i{}o{}s{}g{}".format(*s))
def test_block_fusion_is_exact(block, shape, bn_randomizer):
    c_in, c_out, stride, groups = shape
    module = bn_randomizer(make_block(block, c_in, c_out, stride, groups).double()).eval()
    x = torch.randn(2, c_in, 7, 9, dtype=torch.float64)  # odd sizes catch padding mistakes
    with torch.no_grad():
        expected = module(x)
        for fold_bn in (True, False):
            fused = reparameterize(module, fold_bn=fold_bn)
            assert not any(isinstance(m, RepVGGBlock) for m in fused.modules())
            assert (fused(x) - expected).abs().max().item() < 1e-10
    assert isinstance(reparameterize(module), ConvAct)
    assert fused.conv.groups == groups and fused.conv.stride == (stride, stride)


DILATED = [(8, 8, 1, 1, 2), (8, 16, 1, 2, 2), (8, 8, 1, 4, 4), (8, 8, 2, 1, 2), (8, 16, 2, 2, 3)]


@pytest.mark.parametrize("block", sorted(b for b, spec in BLOCK_TYPES.items() if not spec.avg_pool))
@pytest.mark.parametrize("shape", DILATED, ids=lambda s: "i{}o{}s{}g{}d{}".format(*s))
def test_dilated_block_fusion_is_exact(block, shape, bn_randomizer):
    # A fused dilated 3x3 must pad by the dilation, or its output shifts and shrinks.
    c_in, c_out, stride, groups, dilation = shape
    module = bn_randomizer(make_block(block, c_in, c_out, stride, groups, dilation=dilation).double()).eval()
    x = torch.randn(2, c_in, 11, 13, dtype=torch.float64)
    with torch.no_grad():
        expected = module(x)
        assert expected.shape[-2:] == ((11 - 1) // stride + 1, (13 - 1) // stride + 1)
        for fold_bn in (True, False):
            fused = reparameterize(module, fold_bn=fold_bn)
            assert fused(x).shape == expected.shape
            assert (fused(x) - expected).abs().max().item() < 1e-10
    assert reparameterize(module).conv.dilation == (dilation, dilation)


def test_avg_pool_branch_only_at_stride_1_and_never_dilated():
    # YOLOv6's QARepVGGBlockV2 has the pool only where the identity could be: stride 1, in == out.
    assert make_block("qarepvgg_v2", 8, 8, stride=2).branch_avg is None
    assert make_block("qarepvgg_v2", 8, 16).branch_avg is None
    with pytest.raises(ValueError, match="avg-pool branch cannot be dilated"):
        make_block("qarepvgg_v2", 8, 8, dilation=2)


def test_fuse_does_not_mutate_and_keeps_post_bn_for_qat(bn_randomizer):
    block = bn_randomizer(make_block("qarepvgg", 8, 8)).eval()
    before = {k: v.clone() for k, v in block.state_dict().items()}
    qat_form = reparameterize(block, fold_bn=False)
    assert isinstance(qat_form, ConvBNAct) and qat_form.conv.bias is not None
    assert isinstance(reparameterize(block, fold_bn=True), ConvAct)
    for k, v in block.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert block.training is False and any(isinstance(m, nn.BatchNorm2d) for m in block.modules())


def test_training_mode_block_differs_but_walker_uses_eval(bn_randomizer):
    # The classic trap: comparing against a train-mode BN. reparameterize always returns eval-mode copies.
    block = bn_randomizer(make_block("repvgg", 4, 4).double())
    block.train()
    x = torch.randn(4, 4, 5, 5, dtype=torch.float64)
    fused = reparameterize(block)
    assert block.training  # the original is untouched
    with torch.no_grad():
        assert (block.eval()(x) - fused(x)).abs().max() < 1e-10


@pytest.mark.parametrize("channels,groups", [(8, 1), (8, 2), (8, 4), (6, 3)])
def test_grouped_identity_kernel_copies_input(channels, groups):
    x = torch.randn(1, channels, 5, 5, dtype=torch.float64)
    k = identity_kernel(channels, groups, 3, x)
    y = nn.functional.conv2d(x, k, padding=1, groups=groups)
    assert torch.equal(y, x)


def test_ablation_rows_have_the_papers_branches():
    def branches(name):
        b = make_block(name, 8, 8)
        return (b.branch_1x1.bn is not None, type(b.branch_identity).__name__, b.post_bn is not None)
    assert branches("repvgg") == (True, "BatchNorm2d", False)
    assert branches("qarepvgg_s2") == (True, "Identity", False)
    assert branches("qarepvgg_s3") == (False, "Identity", False)
    assert branches("qarepvgg") == (False, "Identity", True)
    assert branches("qarepvgg_m4") == (True, "BatchNorm2d", True)
    assert make_block("qarepvgg", 8, 8).branch_1x1.conv.bias is None  # M3: no BN and no bias
    assert make_block("qarepvgg_bn1x1_noaffine", 8, 8).branch_1x1.bn.affine is False
    assert make_block("qarepvgg_v2", 8, 8).branch_avg is not None
    # identity needs in == out and stride 1
    assert make_block("repvgg", 8, 8, stride=2).branch_identity is None
    assert make_block("repvgg", 8, 16).branch_identity is None


def test_unknown_block_names_the_choices():
    with pytest.raises(ValueError, match="unknown block type 'repvg'.*qarepvgg"):
        make_block("repvg", 4, 4)


@pytest.mark.parametrize("block", ["repvgg", "qarepvgg", "hs"])
def test_block_backward_runs(block):
    b = make_block(block, 4, 8, 2, 2)
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    b(x).sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in b.parameters())
