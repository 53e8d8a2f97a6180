"""Official QARepVGG checkpoints (github.com/cxxgtxy/QARepVGG), written by its own code
(tests/data/official/qarepvgg/README.md says how): train and deploy forms of its QARepVGGBlockV2 (our
``qarepvgg``) and QARepVGGBlock (our ``qarepvgg_no_bn3x3_post_bn``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from qarep_dense.convert import ConversionError
from qarep_dense.tasks.registry import convert_checkpoint
from qarep_dense.convert.common import load_state_file
from qarep_dense.layers import reparameterize
from qarep_dense.tasks.registry import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = Path(__file__).parent / "data" / "official" / "qarepvgg"
V2_TRAIN, V2_DEPLOY = DATA / "qarepvgg_v2_test_train.pth", DATA / "qarepvgg_v2_test_deploy.pth"
V0_TRAIN, V0_DEPLOY = DATA / "qarepvgg_v0_test_train.pth", DATA / "qarepvgg_v0_test_deploy.pth"


@pytest.fixture(scope="module")
def official():
    return torch.load(DATA / "outputs.pt", weights_only=True)


# The reference logits were computed on one machine with one thread; the same network on the same
# values gives them bit for bit there (0.0 measured), and differs in the last bits on another CPU (1.06e-6 of
# the largest logit on an AVX2-only AMD EPYC, whose kernels sum in another order). 5e-6 is about 40 float32 ulps
# of that logit; a wrong conversion (a missing post-BN, the wrong block) is off by 1e-1 or more.
EXACT = 5e-6


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _logits(path: Path, x: torch.Tensor, fuse: bool = False) -> tuple[torch.Tensor, dict]:
    model, meta = load_model(path, "cls")
    with torch.no_grad():
        return (reparameterize(model) if fuse else model)(x), meta


@pytest.mark.parametrize("src, block, stem, expected_block", [
    (V2_TRAIN, None, "v2_test", "qarepvgg"),
    (V2_TRAIN, "qarepvgg", "v2_test", "qarepvgg"),
    (V0_TRAIN, None, "v0_test", "qarepvgg_no_bn3x3_post_bn"),
])
def test_train_forms_convert_exactly(src, block, stem, expected_block, official, tmp_path):
    """Their training checkpoint (``args`` pickled next to ``model``) converts; logits identical; our
    deploy form matches theirs (their convert.py) to float rounding."""
    out, meta = convert_checkpoint(src, tmp_path / "ours.pt", "repvgg", block=block)
    assert (meta["arch"], meta["block"], meta["num_classes"], meta["fused"]) == ("test", expected_block, 10, False)
    x = official["input"]
    logits, _ = _logits(out, x)
    assert _rel(logits, official[f"{stem}_train"]) < EXACT
    fused, _ = _logits(out, x, fuse=True)
    assert _rel(fused, official[f"{stem}_deploy"]) < 1e-5


@pytest.mark.parametrize("src", [V2_TRAIN, V2_DEPLOY])
def test_our_qarepvgg_v2_is_refused_for_their_qarepvgg_v2(src, tmp_path):
    """Their QARepVGGBlockV2 is our qarepvgg; our qarepvgg_v2 (YOLOv6's, with an avg-pool branch) has the
    same keys and computes something else."""
    with pytest.raises(ConversionError, match=r"YOLOv6's QARepVGGBlockV2.*average-pool.*is our 'qarepvgg'"):
        convert_checkpoint(src, tmp_path / "ours.pt", "repvgg", block="qarepvgg_v2")
    assert not (tmp_path / "ours.pt").exists()


@pytest.mark.parametrize("src, stem, block", [(V2_DEPLOY, "v2_test", "qarepvgg"),
                                              (V0_DEPLOY, "v0_test", "qarepvgg_no_bn3x3_post_bn")])
def test_deploy_forms_record_the_block_the_user_names(src, stem, block, official, tmp_path):
    """Post-BN folded: the keys are a RepVGG deploy form's, so the block must be named, and is recorded."""
    with pytest.raises(ConversionError, match="cannot tell which block was trained"):
        convert_checkpoint(src, tmp_path / "ours.pt", "repvgg")
    assert not (tmp_path / "ours.pt").exists()
    out, meta = convert_checkpoint(src, tmp_path / "ours.pt", "repvgg", block=block)
    assert (meta["block"], meta["fused"], meta["fold_bn"], meta["arch"]) == (block, True, True, "test")
    logits, saved = _logits(out, official["input"])
    assert saved["block"] == block
    assert _rel(logits, official[f"{stem}_deploy"]) < EXACT


def test_wrong_block_for_the_keys_is_named(tmp_path):
    with pytest.raises(ConversionError, match="--block 'qarepvgg' but the keys are those of block "
                                              "'qarepvgg_no_bn3x3_post_bn'"):
        convert_checkpoint(V0_TRAIN, tmp_path / "ours.pt", "repvgg", block="qarepvgg")


class _Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_objects_pickled_next_to_the_state_dict_are_not_run(tmp_path):
    """A training checkpoint's extra objects are read as inert records, never called."""
    marker = tmp_path / "ran"
    state = load_state_file(V2_TRAIN)
    torch.save({"model": state, "args": _Payload(os.system, f"touch {marker}")}, tmp_path / "ckpt.pth")
    out, meta = convert_checkpoint(tmp_path / "ckpt.pth", tmp_path / "ours.pt", "repvgg")
    assert not marker.exists() and meta["block"] == "qarepvgg"
