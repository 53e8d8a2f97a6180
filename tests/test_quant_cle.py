"""Cross-layer equalization: exact in FP32 (checked in float64), groups respected, dead channels safe."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from qarep_dense.deploy import reparameterize
from qarep_dense.models.classifier import build_classifier
from qarep_dense.quant.cle import equalize, find_relu_pairs, input_ranges, output_ranges, pair_scales


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-looking BN statistics, so the fused kernels have uneven per-channel ranges."""
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            mod.running_var.copy_(torch.rand(n, generator=g) * 3 + 0.01)
            if mod.affine:
                mod.weight.data.copy_(torch.rand(n, generator=g) * 3 + 0.1)
                mod.bias.data.copy_(torch.rand(n, generator=g) * 2 - 1)
    return model.eval()


def _fused_classifier(block: str) -> nn.Module:
    torch.manual_seed(0)
    model = _randomize_bn(build_classifier("test", block, 6, stem_stride=1))  # "test" has groups=2 layers
    return reparameterize(model).double().eval()


class _Chain(nn.Module):
    """conv(stride 2) -> relu -> conv(groups 4) -> relu -> conv(groups 2) -> relu -> pool -> fc."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, 2, 1)
        self.c2 = nn.Conv2d(16, 16, 3, 1, 1, groups=4)
        self.c3 = nn.Conv2d(16, 8, 3, 2, 1, groups=2)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.relu(self.c1(x))
        x = self.relu(self.c2(x))
        x = self.relu(self.c3(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _uneven_chain() -> nn.Module:
    torch.manual_seed(1)
    model = _Chain().double().eval()
    with torch.no_grad():  # per-channel ranges spread over two decades, like a fused RepVGG
        for conv in (model.c1, model.c2, model.c3):
            conv.weight.mul_(torch.logspace(-1, 1, conv.out_channels, dtype=torch.float64).view(-1, 1, 1, 1))
    return model


@pytest.mark.parametrize("block", ["repvgg", "qarepvgg", "qarepvgg_v2", "qarepvgg_s2", "repopt"])
def test_cle_is_exact_in_float64_on_fused_classifiers(block):
    fused = _fused_classifier(block)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    cle, report = equalize(fused)
    assert report.skipped is None and len(report.pairs) == 6  # 5 conv-conv pairs and the last conv with the fc
    assert any(p.through for p in report.pairs)
    with torch.no_grad():
        ref, out = fused(x), cle(x)
    assert torch.allclose(out, ref, rtol=0, atol=1e-10 * float(ref.abs().max()))
    assert report.spread_after < report.spread_before
    assert sum(p.rescaled for p in report.pairs) > 0


def test_cle_exact_with_groups_stride2_and_linear_head():
    model = _uneven_chain()
    pairs, untraced = find_relu_pairs(model)
    assert untraced == []
    assert [(a, b) for a, b, _ in pairs] == [("c1", "c2"), ("c2", "c3"), ("c3", "fc")]
    cle, report = equalize(model)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(cle(x), model(x), rtol=0, atol=1e-10)
    assert report.converged
    assert report.spread_after < 0.8 * report.spread_before
    # After convergence each pair's ranges meet: conv1's output range i equals conv2's input range i.
    for conv1, conv2 in ((cle.c1, cle.c2), (cle.c2, cle.c3)):
        assert torch.allclose(output_ranges(conv1), input_ranges(conv2), rtol=1e-2)


def test_grouped_input_ranges_follow_the_groups():
    conv = nn.Conv2d(4, 4, 1, groups=2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]).view(4, 2, 1, 1))
    # Group 0: outputs 0,1 read inputs 0,1 (weights [1,2],[3,4]); group 1: outputs 2,3 read inputs 2,3.
    assert input_ranges(conv).tolist() == [3.0, 4.0, 7.0, 8.0]


def test_cle_returns_a_copy():
    model = _uneven_chain()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cle, _ = equalize(model)
    assert cle is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_dead_channels_keep_scale_one_without_nan():
    model = _uneven_chain()
    with torch.no_grad():
        model.c1.weight[3].zero_()
        model.c1.bias[3] = 0.0          # a dead filter: output range 0
        model.c2.weight[:, 1].zero_()   # input channel 1 read by no weight of its group (0..3)
        model.c2.weight[4:8, 1].zero_()
    s = pair_scales(model.c1, model.c2)
    assert torch.isfinite(s).all() and s[3] == 1 and s[1] == 1
    cle, _ = equalize(model)
    assert all(torch.isfinite(p).all() for p in cle.parameters())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(cle(x), model(x), rtol=0, atol=1e-10)


class _Branching(nn.Module):
    """The ReLU output feeds two convs (and one conv output feeds an add): not a simple chain."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.b(y) + self.c(y)


def test_branching_values_are_not_equalized():
    assert find_relu_pairs(_Branching()) == ([], [])
    _, report = equalize(_Branching())
    assert report.pairs == [] and report.skipped


@pytest.mark.parametrize("block", ["repvgg", "qarepvgg"])
def test_cle_exact_on_a_fused_detector_backbone_and_neck(block):
    from qarep_dense.models.detector import build_detector

    torch.manual_seed(0)
    fused = reparameterize(_randomize_bn(build_detector("test", block, 3))).double().eval()
    cle, report = equalize(fused)
    # The head does not trace (shape-dependent control flow): it is searched child by child.
    assert report.pairs and all(p.conv1.startswith(("backbone.", "neck.")) for p in report.pairs)
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        ref, out = fused(x), cle(x)
    flat = lambda o: [o] if torch.is_tensor(o) else [t for item in o for t in flat(item)]  # noqa: E731
    for a, b in zip(flat(out), flat(ref)):
        assert torch.allclose(a, b, rtol=0, atol=1e-10 * max(1.0, float(b.abs().max())))
