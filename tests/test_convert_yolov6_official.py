"""YOLOv6 checkpoints written by the official code (tests/data/official/yolov6_v2/README.md says how):
v2-era files convert exactly, DFL included, and a v3 file is refused as v3."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qarep_dense.convert import ConversionError
from qarep_dense.tasks.registry import convert_checkpoint
from qarep_dense.layers import reparameterize
from qarep_dense.models.postprocess import decode
from qarep_dense.tasks.registry import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = Path(__file__).parent / "data" / "official" / "yolov6_v2"
# file -> (--block, block the file records, use_dfl)
FILES = {
    "yolov6_v2_repvgg.pt": (None, "repvgg", False),
    "yolov6_v2_qarepvgg.pt": (None, "qarepvgg", False),
    "yolov6_v2_qarepvgg_v2.pt": (None, "qarepvgg_v2", False),
    "yolov6_v2_repvgg_dfl_state_dict.pt": ("repvgg", "repvgg", True),
}


@pytest.fixture(scope="module")
def official():
    return torch.load(DATA / "outputs.pt", weights_only=True)


def _flat(levels: list[torch.Tensor]) -> torch.Tensor:
    """Per-level (N, C, H, W) conv outputs -> (N, A, C), levels in stride order, cells row-major."""
    return torch.cat([t.flatten(2).transpose(1, 2) for t in levels], 1)


def _official_xyxy(decoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """YOLOv6 eval output (N, A, xywh + objectness 1 + class scores) -> (xyxy boxes, scores)."""
    xy, wh = decoded[..., :2], decoded[..., 2:4]
    assert torch.all(decoded[..., 4] == 1)
    return torch.cat([xy - wh / 2, xy + wh / 2], -1), decoded[..., 5:]


# The same float32 network on two CPUs (see the first test): a margin of 5x over the largest difference seen.
FLOAT32_ACROSS_CPUS = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _decoded(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        cls, reg = model(x)
    points, strides = model.anchors(*x.shape[-2:])
    return decode(cls, reg, points, strides, model.reg_max)


@pytest.mark.parametrize("name", FILES)
def test_official_v2_files_convert_exactly(name, official, tmp_path):
    block, expected_block, use_dfl = FILES[name]
    ref = official[name.removeprefix("yolov6_v2_").removesuffix("_state_dict.pt").removesuffix(".pt")]
    out, meta = convert_checkpoint(DATA / name, tmp_path / "ours.pt", "yolov6", block=block)
    assert (meta["scale"], meta["block"], meta["num_classes"]) == ("test", expected_block, 3)
    assert (meta["use_dfl"], meta["reg_max"]) == (use_dfl, 16)
    model, _ = load_model(out, "det")
    x = official["input"]
    with torch.no_grad():
        cls, reg = model(x)
    # raw head outputs: the same convs on the same values. Bit for bit on the machine that wrote the
    # references (one thread); another CPU's conv kernels accumulate float32 in another order, measured up to
    # 2e-6 of the output's range on an AVX512 Xeon. A wrong key, branch or BN eps moves it by more than 1e-3.
    assert _rel(cls, _flat(ref["cls"])) < FLOAT32_ACROSS_CPUS and _rel(reg, _flat(ref["reg"])) < FLOAT32_ACROSS_CPUS
    boxes, scores = _official_xyxy(ref["decoded"])
    ours_boxes, ours_scores = _decoded(model, x)
    # scores are sigmoids of logits of several hundred: a 2e-6 relative logit difference moves one by ~1e-5
    assert _rel(ours_boxes, boxes) < FLOAT32_ACROSS_CPUS and (ours_scores - scores).abs().max() < 1e-4
    # our deploy form against YOLOv6's fuse_model + switch_to_deploy: both round differently while
    # fusing (YOLOv6's own deploy form differs from its train form by ~1e-5 here), a wrong fusion by >1e-2
    boxes, scores = _official_xyxy(ref["decoded_deploy"])
    ours_boxes, ours_scores = _decoded(reparameterize(model), x)
    assert _rel(ours_boxes, boxes) < 1e-4 and (ours_scores - scores).abs().max() < 1e-4


def test_official_v2_file_without_dfl_ignores_the_stored_projection():
    """0.2.x stores Detect's default 17 bins although the head has no DFL: it is dropped, not checked."""
    from qarep_dense.convert.unpickle import module_state, read_pickled_checkpoint

    state, _ = module_state(read_pickled_checkpoint(DATA / "yolov6_v2_repvgg.pt")["model"])
    assert state["detect.reg_preds.0.weight"].shape[0] == 4
    assert torch.equal(state["detect.proj"].float(), torch.linspace(0, 16, 17))


def test_dfl_head_with_other_bins_is_refused(tmp_path):
    state = torch.load(DATA / "yolov6_v2_repvgg_dfl_state_dict.pt", weights_only=True)
    state["detect.proj"] = torch.linspace(0, 8, 17)
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(ConversionError, match=r"detect\.proj is not linspace\(0, 16\)"):
        convert_checkpoint(tmp_path / "odd.pt", tmp_path / "out.pt", "yolov6", block="repvgg")
    assert not (tmp_path / "out.pt").exists()


def test_v3_file_is_refused_as_v3(tmp_path):
    for block in (None, "repvgg"):
        with pytest.raises(ConversionError, match=r"YOLOv6 v3 checkpoint .*RepBiFPAN.* is not supported") as err:
            convert_checkpoint(DATA / "yolov6_v3_n_tiny.pt", tmp_path / "out.pt", "yolov6", block=block)
        assert "proj" not in str(err.value)
    # the same keys as a plain state dict (no class names): still v3, before --block is asked for
    from qarep_dense.convert.unpickle import module_state, read_pickled_checkpoint

    state, _ = module_state(read_pickled_checkpoint(DATA / "yolov6_v3_n_tiny.pt")["model"])
    torch.save(state, tmp_path / "v3_sd.pt")
    with pytest.raises(ConversionError, match="YOLOv6 v3 checkpoint"):
        convert_checkpoint(tmp_path / "v3_sd.pt", tmp_path / "out.pt", "yolov6")
    assert not (tmp_path / "out.pt").exists()
