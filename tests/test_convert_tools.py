"""The point of converting: tools/convert_ckpt.py output runs in ptq_eval (with --repair) and analyze."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import randomize_bn
from qarep_dense.data.imagefolder import make_cls_loader
from qarep_dense.data.preprocess import IMAGENET
from qarep_dense.data.synthetic.imagefolder import generate_imagefolder
from qarep_dense.config import load_config
from qarep_dense.engine.checkpoint import load_checkpoint
from qarep_dense.tasks.detection import DetConfig, data_paths
from test_convert_yolov6 import _release, _save_release, yolov6_names  # noqa: F401 (fixture)

pytest.importorskip("pytorch_quantization")
timm = pytest.importorskip("timm")

pytestmark = pytest.mark.usefixtures("one_thread")
from support import REPO, tool  # noqa: E402



def test_converted_timm_model_runs_in_ptq_eval_with_repair_and_analyze(tmp_path, capsys):
    root = generate_imagefolder(tmp_path / "data", num_classes=3, per_class_train=4, per_class_val=3, size=32)
    ref = randomize_bn(timm.create_model("repvgg_a0", pretrained=False, num_classes=3)).eval()
    torch.save(ref.state_dict(), tmp_path / "repvgg_a0.pth")
    dst = tmp_path / "a0.pt"
    assert tool("convert_ckpt")([str(tmp_path / "repvgg_a0.pth"), "--from", "timm", "--out", str(dst),
                                 "--image-size", "32"]) == 0
    assert '"arch": "A0"' in capsys.readouterr().out
    assert tool("convert_ckpt")([str(tmp_path / "repvgg_a0.pth"), "--from", "timm", "--out", str(dst)]) == 2
    assert "already exists" in capsys.readouterr().err

    out = tmp_path / "ptq"
    assert tool("ptq_eval")(["--task", "cls", "--checkpoints", str(dst), "--data", str(root), "--calib-batches", "1",
                             "--batch-size", "8", "--repair", "--out", str(out), "--no-progress"]) == 0
    row = json.loads((out / "ptq_table.json").read_text())["rows"][0]
    # FP32 top-1 of the converted model is timm's own top-1 on the same images and preprocessing
    correct = total = 0
    with torch.no_grad():
        for images, labels in make_cls_loader(root, 32, 8, train=False):
            correct += (ref(IMAGENET(images)).argmax(1) == labels).sum().item()
            total += len(labels)
    assert row["fp32"] == pytest.approx(100 * correct / total)
    assert "repaired_channels" in row and row["arch"] == "A0"

    report = tool("analyze")([str(dst), "--data", str(root), "--num-batches", "1", "--batch-size", "4",
                              "--out", str(tmp_path / "analysis"), "--no-progress"])
    assert set(report["flags"]) >= {"C1", "C2"} and (tmp_path / "analysis" / "report.json").exists()


def test_converted_yolov6_detector_runs_in_ptq_eval(tmp_path, yolov6_names):  # noqa: F811
    model = _release("test", "qarepvgg", num_classes=6)
    _save_release(model, tmp_path / "yolov6_test.pt")
    dst = tmp_path / "det.pt"
    config = REPO / "configs" / "det" / "synthetic_test.toml"
    assert tool("convert_ckpt")([str(tmp_path / "yolov6_test.pt"), "--from", "yolov6", "--out", str(dst),
                                 "--image-size", "64", "--data-config", str(config)]) == 0
    meta = load_checkpoint(dst)["meta"]
    assert meta["config"]["data"]["kind"] == "synthetic" and meta["config"]["model"]["bn_eps"] == 1e-3
    cfg = load_config(config, DetConfig)
    cfg.data.root = str(tmp_path / "data")
    data_paths(cfg.data)  # the synthetic export the config describes
    out = tmp_path / "ptq"
    assert tool("ptq_eval")(["--task", "det", "--checkpoints", str(dst), "--data", str(tmp_path / "data"),
                             "--calib-batches", "1", "--batch-size", "4", "--out", str(out), "--no-progress"]) == 0
    row = json.loads((out / "ptq_table.json").read_text())["rows"][0]
    assert row["block"] == "qarepvgg" and row["fp32"] is not None and row["int8"] is not None
