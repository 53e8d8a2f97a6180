"""tools/ptq_eval.py end to end on a tiny synthetic ImageFolder: numbers come from real evaluation."""
import csv
import json

import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_quantization")
pytest.importorskip("onnxruntime")

from qarep_dense.data.imagefolder import make_cls_loader  # noqa: E402
from qarep_dense.data.preprocess import IMAGENET  # noqa: E402
from qarep_dense.data.synthetic.imagefolder import generate_imagefolder  # noqa: E402
from qarep_dense.engine.checkpoint import CheckpointError, save_checkpoint  # noqa: E402
from qarep_dense.evaluation import evaluate_classifier  # noqa: E402
from qarep_dense.layers import reparameterize  # noqa: E402
from qarep_dense.models import build_classifier  # noqa: E402
from qarep_dense.quant import QuantConfig, quantize_ptq  # noqa: E402
from tools import ptq_eval  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16


def _meta(arch, block, num_classes):
    return {"task": "cls", "arch": arch, "block": block, "num_classes": num_classes, "stem_stride": 1,
            "fused": False, "fold_bn": True, "image_size": SIZE, "preprocess": IMAGENET.as_dict()}


def _train_briefly(model, root, steps=15):
    loader = make_cls_loader(root, SIZE, 8, train=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(steps):
        for images, labels in loader:
            loss = nn.functional.cross_entropy(model(IMAGENET(images)), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ptq_eval")
    root = generate_imagefolder(tmp / "data", num_classes=3, per_class_train=8, per_class_val=5, size=SIZE)
    ckpts, models = [], {}
    for block in ("repvgg", "qarepvgg"):
        torch.manual_seed(0)
        model = _train_briefly(build_classifier("test", block, 3, stem_stride=1), root, steps=3)
        ckpts.append(save_checkpoint(tmp / f"{block}.pt", model.state_dict(), _meta("test", block, 3)))
        models[block] = model
    return tmp, root, ckpts, models


def test_ptq_eval_writes_table_from_real_evaluation(setup):
    tmp, root, ckpts, models = setup
    out = tmp / "out"
    rc = ptq_eval.main(["--task", "cls", "--checkpoints", *map(str, ckpts), "--data", str(root),
                        "--calibrator", "max", "percentile", "--calib-batches", "2", "--batch-size", "8",
                        "--ort", "--out", str(out), "--no-progress"])
    assert rc == 0
    payload = json.loads((out / "ptq_table.json").read_text())
    rows = payload["rows"]
    assert [(r["model"], r["calibrator"]) for r in rows] == [
        ("repvgg", "max"), ("repvgg", "percentile"), ("qarepvgg", "max"), ("qarepvgg", "percentile")]
    val = make_cls_loader(root, SIZE, 8, train=False)
    calib = make_cls_loader(root, SIZE, 8, train=False, split="train", shuffle=True)
    for row in rows[:1] + rows[2:3]:
        fused = reparameterize(models[row["block"]])
        assert row["fp32"] == evaluate_classifier(fused, val, IMAGENET)["top1"]
        qmodel, _ = quantize_ptq(fused, calib, IMAGENET, QuantConfig(num_calib_batches=2), progress=False)
        assert row["int8"] == evaluate_classifier(qmodel, val, IMAGENET)["top1"]
        assert row["drop"] == pytest.approx(row["fp32"] - row["int8"])
    for row in rows:
        assert row["ort_all_convs_integer"] and row["ort_integer_convs"] == "6/6"
        assert abs(row["ort_int8"] - row["int8"]) <= 100 / 15 + 1e-9  # at most one of 15 images flips
    table = (out / "ptq_table.md").read_text()
    assert "| model | block | calibrator | FP32 | INT8 | drop | ORT INT8 |" in table
    with open(out / "ptq_table.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert len(list((out / "onnx").glob("*_qdq.onnx"))) == 4


def test_ptq_eval_refuses_mismatched_checkpoints(setup, capsys):
    tmp, root, ckpts, _ = setup
    other = save_checkpoint(tmp / "a0h.pt", build_classifier("A0h", "qarepvgg", 3, stem_stride=1).state_dict(),
                            _meta("A0h", "qarepvgg", 3))
    args = ["--checkpoints", str(ckpts[0]), str(other), "--data", str(root), "--out", str(tmp / "bad"),
            "--no-progress"]
    assert ptq_eval.main(args) == 2
    err = capsys.readouterr().err
    assert "a0h.pt: checkpoint is of a different network" in err and "arch: 'test' vs 'A0h'" in err
    five = save_checkpoint(tmp / "five.pt", build_classifier("test", "qarepvgg", 5, stem_stride=1).state_dict(),
                           _meta("test", "qarepvgg", 5))
    with pytest.raises(CheckpointError, match="model has 5 classes but .* has 3"):
        ptq_eval.run(ptq_eval.parse_args(["--checkpoints", str(five), "--data", str(root), "--no-progress"]))
    assert ptq_eval.main(["--checkpoints", str(tmp / "missing.pt"), "--data", str(root)]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ptq_eval.parse_args(["--checkpoints", str(ckpts[0]), "--data", str(root), "--calibrator", "kl"])
