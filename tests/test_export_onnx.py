"""tools/export_onnx.py and qarep_dense.deploy.onnx: classifiers, detectors and segmentors, checked relatively in ORT."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import randomize_bn
from qarep_dense.choices import ONNX_RTOL
from qarep_dense.deploy.equivalence import normalized_max_error
from qarep_dense.deploy.onnx import check_onnx, example_inputs, export_checked
from qarep_dense.engine.checkpoint import save_checkpoint
from qarep_dense.layers import reparameterize
from qarep_dense.models.detector import build_detector

from support import REPO, tool

pytestmark = pytest.mark.usefixtures("one_thread")
DET_META = {"task": "det", "scale": "test", "block": "qarepvgg", "num_classes": 3, "fused": False, "image_size": 64}


def _large_output_detector() -> torch.nn.Module:
    """A tiny detector whose raw class and box outputs are ~1e4 (prediction convs scaled up)."""
    det = randomize_bn(build_detector("test", "qarepvgg", 3))
    with torch.no_grad():
        for name, m in det.named_modules():
            if name.endswith(("cls_pred", "reg_pred")):
                m.weight.mul_(1e4)
                m.bias.fill_(1e4)
    return det.eval()


def _classifier(tmp_path):
    from qarep_dense.models import build_classifier

    meta = {"task": "cls", "arch": "test", "block": "qarepvgg", "num_classes": 3, "stem_stride": 1, "fused": False,
            "image_size": 16}
    return save_checkpoint(tmp_path / "cls.pt", build_classifier("test", "qarepvgg", 3, stem_stride=1).state_dict(),
                           meta)


def _detector(tmp_path):
    return save_checkpoint(tmp_path / "det.pt", build_detector("test", "qarepvgg", 3).state_dict(), DET_META)


def _report(capsys) -> dict:
    out = capsys.readouterr().out
    return json.loads(out[out.index("{"):])


def test_normalized_error_is_scale_free_and_per_output():
    b = [np.array([1.0, -2.0, 4.0]), np.array([1e4, 3e4])]
    a = [b[0] + np.array([0, 4e-3, 0]), b[1] + np.array([3.0, 0])]
    assert normalized_max_error(a, b) == pytest.approx(1e-3)  # output 0: 4e-3 / 4; output 1: 3 / 3e4 = 1e-4
    assert normalized_max_error([x * 1e6 for x in a], [x * 1e6 for x in b]) == pytest.approx(1e-3)
    assert normalized_max_error([np.zeros(3)], [np.zeros(3)]) == 0.0
    assert normalized_max_error([np.ones(3)], [np.zeros(3)]) == float("inf")
    with pytest.raises(ValueError, match="2 outputs vs 1"):
        normalized_max_error(a, b[:1])


def test_detector_with_large_outputs_passes_the_relative_check(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "det.pt", _large_output_detector().state_dict(), DET_META)
    assert tool("export_onnx")([str(ckpt), "--out", str(tmp_path / "det.onnx")]) == 0
    report = _report(capsys)
    assert report["ok"] and len(report["checks"]) == 2 and not report["dynamic_hw"]
    assert [c["input_shape"] for c in report["checks"]] == [[1, 3, 64, 64], [2, 3, 64, 64]]  # free batch
    for check in report["checks"]:
        assert check["normalized_error"] <= ONNX_RTOL
        assert check["max_abs_diff"] > 1e-3  # the former absolute tolerance (1e-3) refused this exact export


@pytest.mark.parametrize("large", [False, True])
def test_a_real_mismatch_is_caught(tmp_path, capsys, large):
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    det = _large_output_detector() if large else randomize_bn(build_detector("test", "qarepvgg", 3)).eval()
    deploy = reparameterize(det)
    examples = example_inputs(1, 64, 64, dynamic_hw=False)
    assert export_checked(deploy, examples, tmp_path / "det.onnx").ok
    graph = onnx.load(str(tmp_path / "det.onnx"))
    weight = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the largest conv kernel
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.1, weight.name))  # 10 % off
    onnx.save(graph, str(tmp_path / "bad.onnx"))
    assert check_onnx(tmp_path / "bad.onnx", deploy, examples[0]).normalized_error > 10 * ONNX_RTOL
    ckpt = save_checkpoint(tmp_path / "det.pt", det.state_dict(), DET_META)
    assert tool("export_onnx")([str(ckpt), "--out", str(tmp_path / "tool.onnx"), "--rtol", "1e-12"]) == 1
    assert "tool.onnx: ONNX Runtime differs from PyTorch by" in capsys.readouterr().err


def test_segmentor_exports_with_free_height_and_width(tmp_path, capsys):
    mm = pytest.importorskip("qarep_dense.integrations.mmseg")
    from qarep_dense.deploy.ort import make_session, run_session

    cfg = mm.load_config(REPO / "configs/seg/deeplabv3plus_qarepvgg-test_1xb8-600it_synthetic-cityscapes-128x256.py")
    meta = mm.seg_meta(cfg)
    model = randomize_bn(mm.model_from_meta(meta)).eval()
    ckpt = save_checkpoint(tmp_path / "seg.pt", model.state_dict(), meta)
    out = tmp_path / "seg.onnx"
    assert tool("export_onnx")([str(ckpt), "--out", str(out), "--image-size", "64", "128"]) == 0
    report = _report(capsys)
    assert report["ok"] and report["dynamic_hw"]
    shapes = [c["input_shape"] for c in report["checks"]]
    assert shapes[0] == [1, 3, 64, 128] and shapes[1][2:] != shapes[0][2:]
    assert all(c["normalized_error"] <= ONNX_RTOL for c in report["checks"])
    # A third size, as a user would feed it: logits at the input's size, equal to the fused model's.
    x = torch.randn(1, 3, 96, 96)
    logits = run_session(make_session(out, 1), x)[0]
    with torch.no_grad():
        expected = reparameterize(model)(x).numpy()
    assert logits.shape == (1, meta["num_classes"], 96, 96)
    assert normalized_max_error([logits], [expected]) <= ONNX_RTOL


def test_out_is_never_a_folder_nor_silently_replaced(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "det.pt", randomize_bn(build_detector("test", "qarepvgg", 3)).state_dict(),
                           DET_META)
    mine = tmp_path / "model.onnx"
    mine.write_text("the user's file")
    assert tool("export_onnx")([str(ckpt), "--out", str(mine)]) == 2
    assert f"error: --out {mine}: already exists; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert mine.read_text() == "the user's file"
    assert tool("export_onnx")([str(ckpt), "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path}: is a folder; --out is the ONNX file to write" in capsys.readouterr().err
    assert tool("export_onnx")([str(ckpt), "--out", str(mine), "--overwrite"]) == 0
    assert mine.read_bytes()[:1] != b"t"  # now an ONNX protobuf


@pytest.mark.parametrize("argv, message", [
    (["--image-size", "0"], "--image-size must be >= 1 pixels, got 0"),
    (["--image-size", "16", "-3"], "--image-size must be >= 1 pixels, got 16 -3"),
    (["--batch", "0"], "--batch must be >= 1"),
])
def test_sizes_and_batch_below_one_are_refused_before_writing(tmp_path, capsys, argv, message):
    ckpt = _classifier(tmp_path)
    out = tmp_path / "m.onnx"
    assert tool("export_onnx")([str(ckpt), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.name]


def test_a_detector_at_a_size_it_cannot_run_is_a_clear_error(tmp_path, capsys):
    ckpt = _detector(tmp_path)
    out = tmp_path / "d.onnx"
    assert tool("export_onnx")([str(ckpt), "--out", str(out), "--image-size", "63"]) == 2
    err = capsys.readouterr().err
    assert "--image-size 63 63" in err and "multiples of 32" in err and str(ckpt) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.name]
