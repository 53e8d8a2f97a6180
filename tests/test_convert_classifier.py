"""Converters for classifiers: real timm models, and official RepVGG / RepOptimizer key layouts."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from conftest import randomize_bn
from qarep_dense.convert import ConversionError, convert_state
from qarep_dense.tasks.registry import convert_checkpoint
from qarep_dense.convert.classifier import infer_arch
from qarep_dense.layers import reparameterize
from qarep_dense.models.classifier import build_classifier
from qarep_dense.tasks.registry import load_model

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.usefixtures("one_thread")
X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _timm(name: str) -> nn.Module:
    model = timm.create_model(name, pretrained=False, num_classes=10)  # random init, no download
    return randomize_bn(model, torch.Generator().manual_seed(7)).eval()


def _timm_reparameterized(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if hasattr(m, "reparameterize"):
            m.reparameterize()
    return model


@pytest.mark.parametrize("name, arch", [("repvgg_a0", "A0"), ("repvgg_b1g4", "B1g4"), ("repvgg_b0", "B0")])
def test_timm_train_form_logits_identical_and_fused_within_rounding(name, arch, tmp_path):
    ref = _timm(name)
    path = tmp_path / f"{name}.pth"
    torch.save(ref.state_dict(), path)
    out, meta = convert_checkpoint(path, tmp_path / "ours.pt", "timm")
    assert (meta["arch"], meta["block"], meta["num_classes"], meta["fused"]) == (arch, "repvgg", 10, False)
    model, _ = load_model(out, "cls")
    with torch.no_grad():
        expected = ref(X)
        assert torch.equal(model(X), expected)  # renaming only: same ops in the same order
        fused = reparameterize(model)(X)
    assert (fused - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())


def test_timm_reparameterized_form_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    ref = _timm("repvgg_a0")
    with torch.no_grad():
        expected = ref(X)
    deploy = _timm_reparameterized(ref)
    path = tmp_path / "a0_deploy.safetensors"
    save_file({k: v.contiguous() for k, v in deploy.state_dict().items()}, str(path))
    out, meta = convert_checkpoint(path, tmp_path / "ours.pt", "timm")
    assert meta["fused"] and meta["fold_bn"] and meta["arch"] == "A0"
    model, _ = load_model(out)
    with torch.no_grad():
        assert torch.equal(model(X), deploy(X))  # timm's fused convs, unchanged
        assert (model(X) - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())


# --- official RepVGG / RepOptimizer layouts -----------------------------------------------------

def _official_keys(ours: dict[str, torch.Tensor], block_map: dict[str, str]) -> dict[str, torch.Tensor]:
    """Our classifier state under the official layout's names (stage{k}.{j}, linear, rbr_*): a hand
    inverse of the converter's table, so the test checks the table instead of reusing it."""
    out = {}
    for key, value in ours.items():
        if key.startswith("fc."):
            out["linear." + key[3:]] = value
            continue
        _, s, b, rest = key.split(".", 3)
        for ours_prefix, theirs in block_map.items():
            if rest.startswith(ours_prefix):
                rest = theirs + rest[len(ours_prefix):]
                break
        out[("stage0." if s == "0" else f"stage{s}.{b}.") + rest] = value
    return out


OFFICIAL = {
    "repvgg": {"branch_3x3.conv.": "rbr_dense.conv.", "branch_3x3.bn.": "rbr_dense.bn.",
               "branch_1x1.conv.": "rbr_1x1.conv.", "branch_1x1.bn.": "rbr_1x1.bn.",
               "branch_identity.": "rbr_identity."},
    "repopt": {},  # RepOpt-VGG target: conv / bn, as ours
    "hs": {"conv_3x3.": "conv.", "scale_3x3.": "scale_conv."},
    # the RepOptimizers repo's RepVGG baseline
    "repvgg_baseline": {"branch_3x3.conv.": "conv_3x3.", "branch_3x3.bn.": "bn_3x3.",
                        "branch_1x1.conv.": "conv_1x1.", "branch_1x1.bn.": "bn_1x1.",
                        "branch_identity.": "bn_identity."},
}


@pytest.mark.parametrize("layout", sorted(OFFICIAL))
def test_official_layouts_convert_exactly(layout, tmp_path):
    block = layout.split("_")[0]
    ref = randomize_bn(build_classifier("A0h", block, 7)).eval()
    path = tmp_path / "official.pth"
    state = _official_keys(ref.state_dict(), OFFICIAL[layout])
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    out, meta = convert_checkpoint(path, tmp_path / "ours.pt", "repvgg")
    assert (meta["arch"], meta["block"], meta["num_classes"]) == ("A0h", block, 7)
    model, _ = load_model(out)
    with torch.no_grad():
        assert torch.equal(model(X), ref(X))


def test_official_deploy_form_rbr_reparam(tmp_path):
    ref = randomize_bn(build_classifier("A0h", "repvgg", 5)).eval()
    deploy = reparameterize(ref)
    state = _official_keys(deploy.state_dict(), {"conv.": "rbr_reparam."})
    torch.save(state, tmp_path / "deploy.pth")
    # RepVGG and (official) QARepVGG deploy forms are the same keys: the user says which was trained
    with pytest.raises(ConversionError, match="cannot tell which block was trained"):
        convert_checkpoint(tmp_path / "deploy.pth", tmp_path / "ours.pt", "repvgg")
    out, meta = convert_checkpoint(tmp_path / "deploy.pth", tmp_path / "ours.pt", "repvgg", block="repvgg")
    assert meta["fused"] and meta["block"] == "repvgg"
    model, _ = load_model(out)
    with torch.no_grad():
        assert torch.equal(model(X), deploy(X))


def test_infer_arch_tells_grouped_rows_apart():
    for arch in ("B1", "B1g2", "B1g4", "A1", "B0"):
        state = build_classifier(arch, "repopt", 3).state_dict()
        assert infer_arch(state) == arch


def test_unknown_layout_lists_unmapped_keys_and_writes_nothing(tmp_path):
    state = _timm("repvgg_a0").state_dict()
    state["stages.0.0.attn.fc.weight"] = torch.zeros(4, 48)  # an SE block our RepVGG does not have
    torch.save(state, tmp_path / "se.pth")
    with pytest.raises(ConversionError, match=r"1 source keys that did not map: stages\.0\.0\.attn\.fc\.weight"):
        convert_checkpoint(tmp_path / "se.pth", tmp_path / "out.pt", "timm")
    assert not (tmp_path / "out.pt").exists()
    torch.save({"conv.weight": torch.zeros(1, 3, 3, 3)}, tmp_path / "tiny.pth")
    with pytest.raises(ConversionError, match="no classifier layer"):
        convert_state(tmp_path / "tiny.pth", "repvgg")
    torch.save({k: v for k, v in state.items() if k != "stages.3.0.conv_kxk.bn.bias"}, tmp_path / "cut.pth")
    with pytest.raises(ConversionError, match=r"model keys without a value: stages\.4\.0\.branch_3x3\.bn\.bias"):
        convert_state(tmp_path / "cut.pth", "timm", arch="A0")
    del state["stages.0.0.attn.fc.weight"]
    torch.save(state, tmp_path / "a0.pth")
    with pytest.raises(ConversionError, match="shape mismatches: "):
        convert_state(tmp_path / "a0.pth", "timm", arch="A1")


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(ConversionError, match="file not found"):
        convert_state(tmp_path / "none.pth", "timm")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="junk.pth: not a PyTorch checkpoint .it is a text file"):
        convert_state(tmp_path / "junk.pth", "timm")
    torch.save(_timm("repvgg_a0").state_dict(), tmp_path / "a0.pth")
    (tmp_path / "taken.pt").write_bytes(b"x")
    with pytest.raises(ConversionError, match="already exists"):
        convert_checkpoint(tmp_path / "a0.pth", tmp_path / "taken.pt", "timm")
    assert (tmp_path / "taken.pt").read_bytes() == b"x"
    with pytest.raises(ConversionError, match="timm repvgg_\\* models are RepVGG blocks"):
        convert_state(tmp_path / "a0.pth", "timm", block="qarepvgg")


def test_the_library_imports_neither_timm_nor_yolov6():
    import subprocess
    import sys

    code = ("import sys, qarep_dense.convert, qarep_dense.convert.unpickle; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('timm', 'yolov6', 'safetensors')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
    from pathlib import Path

    sources = Path(__file__).resolve().parents[1].joinpath("qarep_dense").rglob("*.py")
    assert not [p for p in sources if re.search(r"^\s*(import|from)\s+(timm|yolov6)\b", p.read_text(), re.M)]
