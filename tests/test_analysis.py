"""The paper's analyses (qarep_dense.analysis) and tools/analyze.py, on the tiny "test" arch."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from qarep_dense.analysis import (
    ActivationRecorder, Thresholds, analyze_model, bn_scale_stats, branch_decomposition, flag_activations,
    flag_weights, int8_channel_error, layer_weight_stats, weight_stats,
)
from qarep_dense.engine.checkpoint import CheckpointError, save_checkpoint
from qarep_dense.layers import RepVGGBlock, make_block, reparameterize
from qarep_dense.models import build_classifier
from tools.analyze import main as analyze_main

DEAD_BLOCK, DEAD_LAYER, DEAD_CHANNEL = "stages.2.1", "stages.2.1.conv", 5
EPS = 1e-5


def _randomize_bns(model: nn.Module, seed: int = 0) -> None:
    """Trained-looking BN statistics (the defaults make every multiplier exactly 1/sqrt(1+eps))."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))


def planted_repvgg(gamma: float | None = 4.0) -> nn.Module:
    """RepVGG "test" classifier; gamma set: the Fig. 3 mechanism planted in DEAD_BLOCK.

    The previous block's output channel DEAD_CHANNEL is killed by its ReLU (bias -100), and the
    identity BN reading it has the statistics training leaves there: mean 0, running var 1e-16.
    """
    torch.manual_seed(0)
    model = build_classifier("test", "repvgg", num_classes=10, stem_stride=1)
    _randomize_bns(model)
    if gamma is not None:
        modules = dict(model.named_modules())
        bn = modules[DEAD_BLOCK].branch_identity
        with torch.no_grad():
            modules["stages.2.0"].branch_3x3.bn.bias[DEAD_CHANNEL] = -100.0
            bn.running_mean[DEAD_CHANNEL] = 0.0
            bn.running_var[DEAD_CHANNEL] = 1e-16
            bn.weight[DEAD_CHANNEL] = gamma
    return model.eval()


def _c1_flags(model: nn.Module, with_inputs: bool) -> list:
    """C1 flags of the fused model, optionally weighting by input powers measured on random inputs."""
    deploy = reparameterize(model)
    power = None
    if with_inputs:
        with torch.no_grad(), ActivationRecorder(deploy) as rec:
            deploy(torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
        power = rec.channel_power()
    return flag_weights(weight_stats(deploy, power), bn_scale_stats(model))


# --- C1: fused weights and BN multipliers -------------------------------------------------------

@pytest.mark.parametrize("gamma", [1.0, 4.0])
def test_dead_identity_channel_is_flagged_c1(gamma):
    model = planted_repvgg(gamma)
    expected = gamma / math.sqrt(1e-16 + EPS)  # 316.2 * gamma: eps alone bounds the multiplier
    scales = {s.name: s for s in bn_scale_stats(model)}
    identity = scales[DEAD_BLOCK].branches["identity"]
    assert identity.max_abs == pytest.approx(expected, rel=1e-6)
    assert (identity.argmax, identity.near_dead, scales[DEAD_BLOCK].near_dead) == (DEAD_CHANNEL, 1, 1)

    weights_only, with_inputs = _c1_flags(model, False), _c1_flags(model, True)
    assert [f.layer for f in weights_only] == [DEAD_LAYER] == [f.layer for f in with_inputs]
    for flag in (weights_only[0], with_inputs[0]):
        assert flag.block == DEAD_BLOCK and flag.condition == "C1"
        assert flag.numbers["worst_channel"] == DEAD_CHANNEL
        assert flag.numbers["max_multiplier_branch"] == "identity"
        assert flag.numbers["max_multiplier_channel"] == DEAD_CHANNEL
        assert flag.numbers["max_multiplier"] == pytest.approx(expected, rel=1e-6)
        if gamma > 3.2:  # gamma 1 gives 316; the >1e3 of the paper and REFERENCE §8 needs a grown gamma
            assert flag.numbers["max_multiplier"] > 1e3
    # The outlier multiplies the dead input; every other weight of the channel (< 1) is below half the
    # INT8 step (>= 316/254), so INT8 keeps none of the channel's output.
    assert with_inputs[0].numbers["int8_error"] == 1.0
    assert with_inputs[0].numbers["int8_error_channel"] == DEAD_CHANNEL
    assert weights_only[0].numbers["int8_error"] < 1e-3  # without inputs the outlier looks like signal


def test_unplanted_repvgg_and_qarepvgg_with_same_convs_are_not_flagged():
    planted = planted_repvgg(4.0)
    assert _c1_flags(planted_repvgg(None), True) == []

    qa = build_classifier("test", "qarepvgg", num_classes=10, stem_stride=1)
    source = planted.state_dict()
    shared = {k: v for k, v in source.items() if k in qa.state_dict() and qa.state_dict()[k].shape == v.shape}
    qa.load_state_dict(shared, strict=False)  # deliberately partial: the two blocks differ by design
    qa.eval()
    conv = f"{DEAD_BLOCK}.branch_1x1.conv.weight"
    assert conv in shared and torch.equal(qa.state_dict()[conv], source[conv])
    assert "stages.2.0.branch_3x3.bn.bias" in shared  # same dead input channel
    assert _c1_flags(qa, False) == [] and _c1_flags(qa, True) == []
    assert max(s.max_abs for s in weight_stats(reparameterize(qa))) < 10


def test_layer_weight_stats_hand_computed():
    w = torch.tensor([[127.0, 0.4, 0.6, 0.0], [1.0, 1.0, 1.0, 1.0]])
    s = layer_weight_stats("fc", w, "linear")
    # mean = 132/8 = 16.5; E[w^2] = 16133.52/8; population variance = E[w^2] - mean^2
    assert s.std == pytest.approx(math.sqrt(16133.52 / 8 - 16.5**2))
    assert s.max_abs == 127.0
    assert (s.channel_range_median, s.channel_spread, s.worst_channel) == (64.0, 127.0 / 64.0, 0)
    # Channel 0: INT8 step 1, so 0.4 -> 0 and 0.6 -> 1: squared error 0.16 + 0.16 = 0.32.
    assert s.int8_error == pytest.approx(0.32 / (127**2 + 0.16 + 0.36))
    assert s.int8_error_channel == 0 and not s.input_weighted
    # With input 0 silent, the 127 carries nothing and the error is 0.32 of 0.52.
    dead = layer_weight_stats("fc", w, "linear", input_power=torch.tensor([0.0, 1.0, 1.0, 1.0]))
    assert dead.int8_error == pytest.approx(0.32 / 0.52) and dead.input_weighted


def test_int8_channel_error_grouped_input_mapping():
    # groups=2, 2 outputs and 2 inputs per group: outputs 0-1 read inputs 0-1, outputs 2-3 read inputs 2-3.
    w = torch.tensor([[127.0, 0.4]] * 4).view(4, 2, 1, 1)
    err = int8_channel_error(w, torch.tensor([0.0, 1.0, 1.0, 1.0]), groups=2)
    live = 0.16 / (127**2 + 0.16)  # 0.4 rounds to 0 against the step 1 set by 127
    torch.testing.assert_close(err, torch.tensor([1.0, 1.0, live, live], dtype=torch.float64))
    with pytest.raises(ValueError, match="input_power has 3 channels"):
        int8_channel_error(w, torch.ones(3), groups=2)


# --- Fig. 4: branch outputs ----------------------------------------------------------------------

def _set_bn(bn: nn.BatchNorm2d, gamma: float, beta: float, mean: float) -> None:
    with torch.no_grad():
        bn.weight.fill_(gamma)
        bn.bias.fill_(beta)
        bn.running_mean.fill_(mean)
        bn.running_var.fill_(1.0 - bn.eps)  # so the multiplier is exactly gamma


def _one_channel_block(block: str) -> RepVGGBlock:
    blk = make_block(block, 1, 1).eval()
    with torch.no_grad():
        blk.branch_3x3.conv.weight.zero_()
        blk.branch_3x3.conv.weight[0, 0, 1, 1] = 2.0
        blk.branch_1x1.conv.weight.fill_(3.0)
    _set_bn(blk.branch_3x3.bn, 0.5, 1.0, 0.0)  # 0.5 * 2x + 1 = x + 1
    return blk


X = torch.tensor([-1.0, 0.0, 0.25, 0.5, 1.0]).view(1, 1, 1, 5)


def test_branch_decomposition_repvgg_by_hand():
    blk = _one_channel_block("repvgg")
    _set_bn(blk.branch_1x1.bn, 2.0, -1.0, 1.0)   # 2 (3x - 1) - 1 = 6x - 3
    _set_bn(blk.branch_identity, 1.0, 0.0, 0.5)  # x - 0.5
    parts = branch_decomposition(blk, X)
    assert set(parts) == {"3x3", "1x1", "identity", "sum", "out"}
    torch.testing.assert_close(parts["3x3"], X + 1)
    torch.testing.assert_close(parts["1x1"], 6 * X - 3)
    torch.testing.assert_close(parts["identity"], X - 0.5)
    torch.testing.assert_close(parts["sum"], 8 * X - 2.5)
    expected = torch.tensor([0.0, 0.0, 0.0, 1.5, 5.5]).view(1, 1, 1, 5)  # relu(8x - 2.5)
    torch.testing.assert_close(parts["out"], expected)
    torch.testing.assert_close(blk(X), expected)


def test_branch_decomposition_qarepvgg_by_hand():
    blk = _one_channel_block("qarepvgg")
    _set_bn(blk.post_bn, 2.0, 1.0, 0.5)  # 2 (s - 0.5) + 1 with s = (x + 1) + 3x + x = 5x + 1
    parts = branch_decomposition(blk, X)
    assert set(parts) == {"3x3", "1x1", "identity", "sum", "post_bn", "out"}
    torch.testing.assert_close(parts["1x1"], 3 * X)
    torch.testing.assert_close(parts["identity"], X)
    torch.testing.assert_close(parts["sum"], 5 * X + 1)
    torch.testing.assert_close(parts["post_bn"], 10 * X + 2)
    torch.testing.assert_close(parts["out"], torch.relu(10 * X + 2))
    torch.testing.assert_close(blk(X), parts["out"])


# --- C2: layer-input statistics ------------------------------------------------------------------

def test_activation_recorder_matches_direct_and_flags_wide_channel():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)).eval()
    batches = [torch.randn(2, 4, 6, 6) for _ in range(3)]
    for b in batches:
        b[:, 2] *= 1000.0  # one input channel 1000x wider: it sets the per-tensor step for all
    with torch.no_grad(), ActivationRecorder(net) as rec:
        for b in batches:
            net(b)
    summary = rec.summary()
    x = torch.cat(batches).double()
    assert summary["0"]["amax"] == pytest.approx(float(x.abs().max()))
    assert summary["0"]["std"] == pytest.approx(float(x.std(correction=0)))
    assert summary["0"]["mean"] == pytest.approx(float(x.mean()), abs=1e-9)
    assert summary["0"]["count"] == x.numel()
    assert summary["0"]["worst_channel"] == 2
    flags = {f.layer: f for f in flag_activations(summary, Thresholds())}
    assert "0" in flags and flags["0"].numbers["channel_spread"] > 20

    with torch.no_grad(), ActivationRecorder(net) as rec:
        net(torch.randn(2, 4, 6, 6))
    assert "0" not in {f.layer for f in flag_activations(rec.summary())}
    assert not net[0]._forward_pre_hooks  # hooks removed on exit


# --- bad input -----------------------------------------------------------------------------------

def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="weight_channel_spread"):
        Thresholds(weight_channel_spread=-1.0)
    model = planted_repvgg(None)
    batch = [torch.randn(2, 3, 16, 16)]
    with pytest.raises(ValueError, match="hist_block 'stages.9'"):
        analyze_model(model, batch, tmp_path, hist_block="stages.9", progress=False)
    with pytest.raises(ValueError, match="hist_channel 99 out of range"):
        analyze_model(model, batch, tmp_path, hist_block=DEAD_BLOCK, hist_channel=99, progress=False)
    with pytest.raises(ValueError, match="batches is empty"):
        analyze_model(model, [], tmp_path, progress=False)


# --- tools/analyze.py ----------------------------------------------------------------------------

META = {"task": "cls", "arch": "test", "block": "repvgg", "num_classes": 10, "stem_stride": 1, "fused": False,
        "fold_bn": True, "image_size": 16, "preprocess": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}


@pytest.fixture
def planted_checkpoint(tmp_path):
    model = planted_repvgg(4.0)
    return save_checkpoint(tmp_path / "planted.pt", model.state_dict(), META), model


def test_tool_writes_plots_and_reports(planted_checkpoint, tmp_path):
    ckpt, model = planted_checkpoint
    out = tmp_path / "out"
    report = analyze_main([str(ckpt), "--out", str(out), "--num-batches", "2", "--batch-size", "3",
                           "--no-progress"])
    for name in ("weights_violin.png", "bn_scales.png", "activation_ranges.png", "branch_histogram.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, name
    md = (out / "report.md").read_text()
    assert f"**`{DEAD_LAYER}`**" in md and "RANDOM-NORMAL" in md
    saved = json.loads((out / "report.json").read_text())
    assert saved["flags"]["C1"][0]["layer"] == DEAD_LAYER
    assert saved["flags"] == json.loads(json.dumps(report["flags"]))

    # The JSON numbers against a direct computation on the fused model and the same random inputs.
    fused = dict(reparameterize(model).named_modules())[DEAD_LAYER].weight.detach().double()
    layer = next(w for w in saved["weights"] if w["name"] == DEAD_LAYER)
    assert layer["std"] == pytest.approx(float(fused.std(correction=0)), rel=1e-9)
    assert layer["max_abs"] == pytest.approx(float(fused.abs().max()), rel=1e-9)
    assert (layer["int8_error"], layer["int8_error_channel"], layer["input_weighted"]) == (1.0, DEAD_CHANNEL, True)
    block = next(b for b in saved["bn_scales"] if b["name"] == DEAD_BLOCK)
    assert block["branches"]["identity"]["max_abs"] == pytest.approx(4.0 / math.sqrt(1e-16 + EPS), rel=1e-6)
    gen = torch.Generator().manual_seed(0)  # --seed default: the tool's random inputs
    x = torch.cat([torch.randn(3, 3, 16, 16, generator=gen) for _ in range(2)]).double()
    assert saved["activations"]["stages.0.0.conv"]["amax"] == pytest.approx(float(x.abs().max()))
    assert saved["activations"]["stages.0.0.conv"]["std"] == pytest.approx(float(x.std(correction=0)))
    assert saved["activations"]["fc"]["count"] == 6 * 64


def test_tool_bad_input(tmp_path, planted_checkpoint):
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint file not found"):
        analyze_main([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")])
    ckpt, _ = planted_checkpoint
    with pytest.raises(FileNotFoundError, match="--data .*val"):
        analyze_main([str(ckpt), "--data", str(tmp_path / "nowhere")])
    with pytest.raises(ValueError, match="--threshold 'bogus=1'"):
        analyze_main([str(ckpt), "--threshold", "bogus=1"])
    with pytest.raises(ValueError, match="--num-batches must be at least 1"):
        analyze_main([str(ckpt), "--num-batches", "0"])


def test_tool_on_image_folder(tmp_path, planted_checkpoint):
    imagefolder = pytest.importorskip("qarep_dense.data.imagefolder")
    from PIL import Image

    gen = torch.Generator().manual_seed(1)
    for cls in ("a", "b"):
        (tmp_path / "data" / "val" / cls).mkdir(parents=True)
        for i in range(3):
            pixels = torch.randint(0, 256, (16, 16, 3), generator=gen, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "data" / "val" / cls / f"{i}.png")
    ckpt, _ = planted_checkpoint
    report = analyze_main([str(ckpt), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o"),
                           "--num-batches", "2", "--batch-size", "4", "--no-progress"])
    loader = imagefolder.make_cls_loader(tmp_path / "data", 16, 4, train=False, workers=0, shuffle=False)
    mean, std = torch.tensor(META["preprocess"]["mean"]), torch.tensor(META["preprocess"]["std"])
    x = torch.cat([((imgs.double() / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1)) for imgs, _ in loader])
    assert report["activations"]["stages.0.0.conv"]["amax"] == pytest.approx(float(x.abs().max()), rel=1e-5)
    assert "images from" in report["inputs"] and "6 images" in report["inputs"]


def test_symlog_is_linear_near_zero_logarithmic_beyond_and_odd():
    from qarep_dense.analysis.plots import symlog

    x = torch.tensor([-1000.0, -1.0, 0.0, 1e-4, 1.0, 1000.0])
    y = symlog(x, 1.0)
    assert torch.allclose(y, -symlog(-x, 1.0))
    assert y[2] == 0 and y[4] == pytest.approx(math.log10(2))
    assert y[5] == pytest.approx(math.log10(1001))
    assert y[3] == pytest.approx(1e-4 / math.log(10), rel=1e-3)  # slope 1/ln(10) at zero
    with pytest.raises(ValueError, match="linthresh must be positive"):
        symlog(x, 0.0)


def test_weight_violins_symlog_and_side_by_side_write_figures(tmp_path):
    from qarep_dense.analysis.plots import plot_side_by_side, plot_weight_violins

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3))
    with torch.no_grad():
        model[1].weight[0, 0, 1, 1] = 617.0  # one identity-style outlier
    a = plot_weight_violins(model, tmp_path / "a.png")
    b = plot_weight_violins(model, tmp_path / "b.png", log_scale=False)
    both = plot_side_by_side([a, b], ["symlog", "linear"], tmp_path / "ab.png")
    assert all(p.stat().st_size > 1000 for p in (a, b, both))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        plot_side_by_side([a, tmp_path / "missing.png"], ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="titles"):
        plot_side_by_side([a], [], tmp_path / "x.png")


def test_analysis_out_is_claimed_a_rerun_keeps_a_users_file_and_a_foreign_folder_is_refused(tmp_path):
    model = build_classifier("test", "repvgg", num_classes=3, stem_stride=1).eval()
    batches = [torch.randn(2, 3, 16, 16)]
    out = tmp_path / "analysis"
    analyze_model(model, batches, out, progress=False)
    notes = out / "my_notes.md"
    notes.write_text("mine")
    analyze_model(model, batches, out, progress=False)
    assert notes.read_text() == "mine" and (out / "report.json").is_file()
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "report.md").write_text("someone's report")
    with pytest.raises(FileExistsError, match=r"theirs: holds files this project did not write \(report.md\)"):
        analyze_model(model, batches, tmp_path / "theirs", progress=False)
    assert (tmp_path / "theirs" / "report.md").read_text() == "someone's report"
