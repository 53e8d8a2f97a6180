"""Every zoo row builds, trains a step, fuses exactly, and matches the paper's deploy sizes."""
import math

import pytest
import torch
from torch import nn

from qarep_dense.analysis.complexity import count_macs, count_params
from qarep_dense.deploy import remaining_multi_branch
from qarep_dense.layers import reparameterize
from qarep_dense.models import CLASSIFIER_ARCHS, build_classifier
from qarep_dense.engine import CheckpointError, load_model_state

BLOCKS = ["repvgg", "qarepvgg", "qarepvgg_v2", "repopt", "hs"]


def count_params_and_macs(model: nn.Module, size: int) -> tuple[int, int]:
    return count_params(model), count_macs(model, torch.zeros(1, 3, size, size))


# Paper Table 5 (deploy models at 224x224): params (M, 2 decimals, truncated) and multiply-adds (G).
TABLE5 = {"A0": (8.30, 1.4), "B0": (14.33, 3.1), "B1g4": (36.12, 7.3), "B1g2": (41.36, 8.8),
          "B1": (51.82, 11.8), "B2g4": (55.77, 11.3), "B2": (80.31, 18.4)}


@pytest.mark.parametrize("arch", sorted(TABLE5))
def test_deploy_size_matches_paper_table5(arch):
    deploy = reparameterize(build_classifier(arch, "qarepvgg"))
    params, macs = count_params_and_macs(deploy, 224)
    want_params, want_gmacs = TABLE5[arch]
    assert math.floor(params / 1e4) / 100 == pytest.approx(want_params, abs=1e-9)
    assert round(macs / 1e9, 1) == pytest.approx(want_gmacs, abs=1e-9)


@pytest.mark.parametrize("block", BLOCKS)
def test_deploy_size_is_block_independent(block):
    # Every block type fuses to the same plain 3x3 network.
    ref = count_params_and_macs(reparameterize(build_classifier("A0", "qarepvgg")), 64)
    assert count_params_and_macs(reparameterize(build_classifier("A0", block)), 64) == ref


# Fusion does not depend on the widths: the widest rows (B2, B3 and their groups, 20-60 s each in double
# precision) run with -m slow (the B2 sizes are still checked against Table 5 above).
FUSE_ROWS = [pytest.param(a, marks=pytest.mark.slow) if a.startswith(("B2", "B3")) else a
             for a in sorted(CLASSIFIER_ARCHS)]


@pytest.mark.parametrize("arch", FUSE_ROWS)
def test_every_row_fuses_exactly(arch, bn_randomizer):
    model = bn_randomizer(build_classifier(arch, "qarepvgg", num_classes=7).double()).eval()
    x = torch.randn(1, 3, 33, 33, dtype=torch.float64)
    deploy = reparameterize(model)
    assert remaining_multi_branch(deploy) == []
    with torch.no_grad():
        expected = model(x)
        # Random BN statistics blow activations up through 20+ layers: compare relative to the output scale.
        assert (expected - deploy(x)).abs().max() / expected.abs().max() < 1e-10


@pytest.mark.parametrize("block", BLOCKS + ["qarepvgg_s3", "qarepvgg_m4"])
def test_test_row_trains_fuses_and_round_trips(block, bn_randomizer):
    model = build_classifier("test", block, num_classes=5)
    x = torch.randn(4, 3, 32, 32)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    bn_randomizer(model).eval()
    deploy = reparameterize(model)
    with torch.no_grad():
        assert (model(x) - deploy(x)).abs().max() < 1e-4
    clone = build_classifier("test", block, num_classes=5)
    load_model_state(clone, model.state_dict())
    clone.eval()
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))


def test_grouped_layers_follow_the_zoo_rule():
    model = build_classifier("B1g4", "qarepvgg")
    convs = [m.branch_3x3.conv for m in model.modules() if hasattr(m, "branch_3x3")]
    grouped = [i for i, c in enumerate(convs) if c.groups == 4]
    assert grouped == list(range(2, 27, 2))


def test_checkpoint_of_another_arch_is_refused():
    a0 = build_classifier("test", "qarepvgg", num_classes=5)
    with pytest.raises(CheckpointError, match="does not fit the model.*(missing|unexpected|shape)"):
        load_model_state(a0, build_classifier("test", "repvgg", num_classes=5).state_dict())
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model_state(a0, build_classifier("test", "qarepvgg", num_classes=6).state_dict())


def test_unknown_arch_names_the_choices():
    with pytest.raises(ValueError, match="unknown classifier arch 'A9'.*A0"):
        build_classifier("A9")
