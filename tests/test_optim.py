"""Weight-decay schemes and RepOptimizer equivalence."""
import pytest
import torch
from torch import nn

from qarep_dense.layers import ConvBNAct, make_block
from qarep_dense.layers.kernels import identity_kernel, pad_to
from qarep_dense.models import build_classifier
from qarep_dense.optim import (RepOptimizerSGD, build_repopt_sgd, custom_l2_penalty, extract_scales,
                               gradient_masks, init_target_from_scales, param_groups)


def test_custom_l2_matches_hand_computation(bn_randomizer):
    block = bn_randomizer(make_block("repvgg", 2, 2))
    k3 = block.branch_3x3.conv.weight.detach()
    k1 = block.branch_1x1.conv.weight.detach()
    bn3, bn1 = block.branch_3x3.bn, block.branch_1x1.bn
    wd = 1e-4
    expected = 0.0
    for o in range(2):
        t3 = (bn3.weight[o] / (bn3.running_var[o] + bn3.eps).sqrt()).item()
        t1 = (bn1.weight[o] / (bn1.running_var[o] + bn1.eps).sqrt()).item()
        for i in range(2):
            ring = sum(k3[o, i, r, c].item() ** 2 for r in range(3) for c in range(3) if (r, c) != (1, 1))
            eq = k3[o, i, 1, 1].item() * t3 + k1[o, i, 0, 0].item() * t1
            expected += ring + eq ** 2 / (t3 ** 2 + t1 ** 2)
    assert custom_l2_penalty(block, wd).item() == pytest.approx(0.5 * wd * expected, rel=1e-5)
    # Eq. 5 drops the denominator
    eq5 = custom_l2_penalty(block, wd, denominator=False).item()
    assert eq5 != pytest.approx(custom_l2_penalty(block, wd).item(), rel=1e-3)


def test_custom_l2_gradient_does_not_reach_bn():
    block = make_block("repvgg", 4, 4)
    custom_l2_penalty(block, 1.0).backward()
    assert block.branch_3x3.bn.weight.grad is None  # t is detached
    assert block.branch_3x3.conv.weight.grad.abs().sum() > 0


def test_param_groups_cover_every_parameter_once():
    model = build_classifier("test", "repvgg", num_classes=3)
    for l2 in ("normal", "custom", "eq5"):
        groups = param_groups(model, 1e-4, l2)
        ids = [id(p) for g in groups for p in g["params"]]
        assert len(ids) == len(set(ids)) == len(list(model.parameters()))
        by_name = {g["name"]: g for g in groups}
        assert by_name["no_decay"]["weight_decay"] == 0 and by_name["bias"]["weight_decay"] == 0
        assert by_name["decay"]["weight_decay"] == 1e-4
        if l2 != "normal":
            assert by_name["custom_l2"]["weight_decay"] == 0
    with pytest.raises(ValueError, match="needs RepVGG blocks"):
        param_groups(build_classifier("test", "qarepvgg"), 1e-4, "custom")
    with pytest.raises(ValueError, match="unknown l2 mode"):
        param_groups(model, 1e-4, "l3")


class CSLABlock(nn.Module):
    """The multi-branch block RepOptimizer claims to emulate: constant scales, trainable K3, K1 and identity delta."""

    def __init__(self, target: ConvBNAct, s3, s1, s_id, k1):
        super().__init__()
        c = target.conv.out_channels
        self.s3, self.s1, self.s_id = s3, s1, s_id
        self.k3 = nn.Parameter(target.conv.weight.detach().clone())
        self.k1 = nn.Parameter(k1.clone())
        self.delta = nn.Parameter(torch.zeros(c, dtype=k1.dtype))
        self.bn = nn.BatchNorm2d(c).to(k1.dtype)
        self.bn.load_state_dict(target.bn.state_dict())

    def kernel(self):
        eye = identity_kernel(self.k3.shape[0], 1, 3, self.k3)
        return (self.k3 * self.s3.view(-1, 1, 1, 1) + pad_to(self.k1, 3) * self.s1.view(-1, 1, 1, 1)
                + eye * (self.s_id + self.delta).view(-1, 1, 1, 1))

    def forward(self, x):
        return torch.relu(self.bn(nn.functional.conv2d(x, self.kernel(), padding=1)))


@pytest.mark.parametrize("nesterov", [False, True])
def test_repoptimizer_steps_equal_csla_training(nesterov):
    torch.manual_seed(0)
    c = 4
    dt = torch.float64
    target = ConvBNAct(c, c, 3).double()
    s3, s1, s_id = (torch.rand(c, dtype=dt) + 0.5 for _ in range(3))
    k1 = torch.randn(c, c, 1, 1, dtype=dt) * 0.3
    csla = CSLABlock(target, s3, s1, s_id, k1)
    with torch.no_grad():  # the target starts at the CSLA's equivalent kernel
        target.conv.weight.copy_(csla.kernel())
    scales = {"": (s3, s1, s_id)}
    wd, lr = 1e-2, 0.05
    opt_target = RepOptimizerSGD([{"params": [target.conv.weight], "weight_decay": wd},
                                  {"params": [target.bn.weight, target.bn.bias], "weight_decay": 0.0}],
                                 lr=lr, momentum=0.9, weight_decay=wd, nesterov=nesterov,
                                 masks=gradient_masks(target, scales))
    opt_csla = torch.optim.SGD([{"params": [csla.k3, csla.k1, csla.delta], "weight_decay": wd},
                                {"params": [csla.bn.weight, csla.bn.bias], "weight_decay": 0.0}],
                               lr=lr, momentum=0.9, nesterov=nesterov)
    for step in range(4):
        x = torch.randn(3, c, 6, 6, dtype=dt)
        for model, opt in ((target, opt_target), (csla, opt_csla)):
            opt.zero_grad()
            (model(x) ** 2).mean().backward()
            opt.step()
        assert (target.conv.weight - csla.kernel()).abs().max() < 1e-12, step
    assert (target.conv.weight - csla.kernel()).abs().max() < 1e-12
    # and the masks actually changed something: plain SGD would diverge from the CSLA trajectory
    assert not torch.allclose(gradient_masks(target, scales)[target.conv.weight][0], torch.ones(1, dtype=dt))


def test_build_repopt_sgd_from_hyper_search_model():
    hs = build_classifier("test", "hs", num_classes=3)
    with torch.no_grad():
        for m in hs.modules():
            if hasattr(m, "scale_3x3"):
                m.scale_3x3.weight.uniform_(0.5, 1.5)
    target = build_classifier("test", "repopt", num_classes=3)
    before = target.stages[1][0].conv.weight.detach().clone()
    opt = build_repopt_sgd(target, hs, lr=0.1, momentum=0.9, weight_decay=1e-4)
    assert not torch.equal(before, target.stages[1][0].conv.weight)
    assert len(opt.masks) == len(extract_scales(hs))
    loss = target(torch.randn(2, 3, 32, 32)).sum()
    loss.backward()
    opt.step()
    with pytest.raises(ValueError, match="no ConvBNAct"):
        init_target_from_scales(build_classifier("test", "qarepvgg"), extract_scales(hs))
    with pytest.raises(ValueError, match="not a Hyper-Search"):
        extract_scales(target)


def test_custom_l2_decays_identity_gamma_like_official_repvgg():
    """RepVGG's training decays every identity-BN gamma but no other BN parameter and no bias."""
    model = build_classifier("test", "repvgg", num_classes=3)
    id_gammas = {id(m.branch_identity.weight) for m in model.modules()
                 if getattr(m, "branch_identity", None) is not None}
    assert id_gammas, "the test arch must have identity branches"
    names = {id(p): n for n, p in model.named_parameters()}
    for l2 in ("custom", "eq5"):
        by_name = {g["name"]: g for g in param_groups(model, 5e-4, l2)}
        decayed = {names[id(p)] for g in by_name.values() if g["weight_decay"] > 0 for p in g["params"]}
        assert {id(p) for p in by_name["identity_decay"]["params"]} == id_gammas
        assert by_name["identity_decay"]["weight_decay"] == 5e-4
        # every decayed 1-D parameter is an identity gamma; no bias, no 3x3/1x1 BN parameter is decayed
        one_d = {n for n in decayed if model.get_parameter(n).ndim == 1}
        assert one_d and all(n.endswith("branch_identity.weight") for n in one_d)
        assert not any(n.endswith("bias") or ".bn." in n for n in decayed)
        # the kernels under the penalty get no plain decay
        assert all(n not in decayed for n in names.values() if "branch_3x3.conv" in n or "branch_1x1.conv" in n)
    # normal L2 (QARepVGG's recipe) leaves them alone; both choices can be forced
    assert "identity_decay" not in {g["name"] for g in param_groups(model, 5e-4, "normal")}
    assert "identity_decay" not in {g["name"] for g in param_groups(model, 5e-4, "custom", identity_decay=False)}
    forced = {g["name"]: g for g in param_groups(model, 5e-4, "normal", identity_decay=True)}
    assert {id(p) for p in forced["identity_decay"]["params"]} == id_gammas


def test_identity_decay_reaches_the_optimizer_through_the_config():
    from qarep_dense.tasks.classification import ClsConfig, build_optimizer

    cfg = ClsConfig()
    cfg.model.arch, cfg.model.block, cfg.model.num_classes = "test", "repvgg", 3
    cfg.optim.l2, cfg.optim.weight_decay = "custom", 1e-3
    model = build_classifier("test", "repvgg", num_classes=3)
    groups = {g["name"]: g for g in build_optimizer(cfg, model).param_groups}
    assert groups["identity_decay"]["weight_decay"] == 1e-3
    cfg.optim.identity_decay = False
    assert "identity_decay" not in {g["name"] for g in build_optimizer(cfg, model).param_groups}
