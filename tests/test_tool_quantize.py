"""tools/quantize.py end to end on tiny models: files, report keys, refusals, --int8-only."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_quantization")
pytest.importorskip("onnxruntime")

from conftest import Penalised  # noqa: E402
from support import tool  # noqa: E402

from qarep_dense.data.imagefolder import make_cls_loader  # noqa: E402
from qarep_dense.data.preprocess import IMAGENET  # noqa: E402
from qarep_dense.data.synthetic.imagefolder import generate_imagefolder  # noqa: E402
from qarep_dense.engine.checkpoint import CheckpointError, save_checkpoint  # noqa: E402
from qarep_dense.evaluation import evaluate_classifier  # noqa: E402
from qarep_dense.models import build_classifier  # noqa: E402
from qarep_dense.tasks import quantize_pipeline  # noqa: E402
from qarep_dense.tasks.quantize_pipeline import QuantizeOptions, quantize_checkpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 16
FAST = ["--calib-batches", "2", "--batch-size", "8", "--selection-images", "16", "--no-progress"]
REPORT_KEYS = {"fp32", "int8", "int8_ort", "drop", "chosen", "candidates", "integer_convs", "convs", "budget_met"}


@pytest.fixture(scope="module")
def cls_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quantize_tool")
    root = generate_imagefolder(tmp / "data", num_classes=3, per_class_train=16, per_class_val=5, size=SIZE)
    torch.manual_seed(0)
    model = build_classifier("test", "repvgg", 3, stem_stride=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for images, labels in make_cls_loader(root, SIZE, 8, train=True):
        loss = nn.functional.cross_entropy(model(IMAGENET(images)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    meta = {"task": "cls", "arch": "test", "block": "repvgg", "num_classes": 3, "stem_stride": 1, "fused": False,
            "fold_bn": True, "image_size": SIZE, "preprocess": IMAGENET.as_dict()}
    return tmp, root, save_checkpoint(tmp / "cls.pt", model.eval().state_dict(), meta)


def test_quantize_classifier_end_to_end(cls_setup, capsys):
    tmp, root, ckpt = cls_setup
    out = tmp / "out"
    code = tool("quantize")([str(ckpt), "--data", str(root), "--out", str(out), "--calibrators", "max", "percentile",
                             *FAST])
    report = json.loads((out / "report.json").read_text())
    assert code == (0 if report["budget_met"] else 1)
    assert REPORT_KEYS <= set(report)
    for name in ("report.md", "model_int8.onnx", "model_fakequant.pt", "diagnosis/report.md"):
        assert (out / name).is_file(), name
    # 2 calibrators x 5 float transforms, then the 3 best of them again with bias correction
    names = [c["name"] for c in report["candidates"]]
    assert len(names) == 13 and not any(n.endswith("+bc") for n in names[:10])
    best3 = sorted(report["candidates"][:10], key=lambda c: c["selection"]["score"])[:3]
    assert names[10:] == [c["name"] + "+bc" for c in best3]
    best = min(report["candidates"], key=lambda c: c["selection"]["score"])
    assert report["chosen"]["candidate"] == best["name"]
    assert {"calibrator", "repair", "cle", "bias_correction", "float_layers", "qat"} <= set(report["chosen"])
    assert report["integer_convs"] == report["convs"] > 0
    assert report["drop"] == pytest.approx(report["fp32"] - report["int8"])
    assert report["budget_met"] == (report["drop"] <= 1.0)
    assert all(c["validation"] is not None for c in report["candidates"])
    assert "not used" in (out / "report.md").read_text()
    assert "top1: FP32" in capsys.readouterr().out
    # The saved fake-quant model loads back without calibration data and gives the reported INT8 accuracy.
    loaded, meta = quantize_pipeline.load_fakequant(out / "model_fakequant.pt")
    assert meta["fake_quant"]["bias_correction"] == report["chosen"]["bias_correction"]
    val = make_cls_loader(root, SIZE, 8, train=False)
    assert evaluate_classifier(loaded, val, IMAGENET)["top1"] == report["int8"]
    with pytest.raises(CheckpointError, match="not a fake-quant checkpoint"):
        quantize_pipeline.load_fakequant(ckpt)
    # A second run into the folder it wrote is allowed (it replaces its own files). With bias correction
    # forced on, the chosen model is a corrected one, and the ORT check re-made it from its config alone.
    assert tool("quantize")([str(ckpt), "--data", str(root), "--out", str(out), "--calibrators", "max",
                             "--bias-correction", "on", *FAST]) in (0, 1)
    report = json.loads((out / "report.json").read_text())
    assert len(report["candidates"]) == 5 and all(c["name"].endswith("+bc") for c in report["candidates"])
    assert report["chosen"]["bias_correction"] is True
    assert report["ort"]["ort_vs_fakequant_argmax_agreement"] == 1.0
    assert "bias correction on" in (out / "report.md").read_text()


def test_refuses_a_non_empty_out_it_did_not_write(cls_setup, capsys):
    tmp, root, ckpt = cls_setup
    out = tmp / "user_folder"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert tool("quantize")([str(ckpt), "--data", str(root), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "did not write (notes.txt)" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("case", ["missing_ckpt", "garbage_ckpt", "missing_data", "wrong_task", "negative_drop"])
def test_bad_inputs_name_the_file(cls_setup, capsys, case):
    tmp, root, ckpt = cls_setup
    args = [str(ckpt), "--data", str(root), "--out", str(tmp / f"bad_{case}"), *FAST]
    named = str(ckpt)
    if case == "missing_ckpt":
        named = str(tmp / "nope.pt")
        args[0] = named
    elif case == "garbage_ckpt":
        named = str(tmp / "garbage.pt")
        (tmp / "garbage.pt").write_bytes(b"not a checkpoint")
        args[0] = named
    elif case == "missing_data":
        named = str(tmp / "no_data")
        args[2] = named
    elif case == "wrong_task":
        args += ["--task", "det"]
    else:
        args += ["--max-drop", "-1"]
        named = "--max-drop"
    assert tool("quantize")(args) == 2
    assert named in capsys.readouterr().err


def _fast(out, **kw) -> QuantizeOptions:
    return QuantizeOptions(**{**dict(out=out, calibrators=("max",), transforms=("none",), calib_batches=2, batch_size=8,
                                     selection_images=16, progress=False, latency_repeats=1, diagnose=False), **kw})


@pytest.mark.parametrize("int8_only", [True, False])
def test_int8_only_never_keeps_a_float_layer(cls_setup, penalised, int8_only):
    tmp, root, ckpt = cls_setup
    opts = _fast(tmp / f"int8_only_{int8_only}", checkpoint=ckpt, data=root, int8_only=int8_only)
    report = quantize_checkpoint(opts)
    assert report["budget_met"] is False
    if int8_only:
        assert report["chosen"]["float_layers"] == [] and report["partial"] is None
        assert report["int8"] == report["int8_all_int8_choice"]
        assert "--int8-only" in (opts.out / "report.md").read_text()
    else:
        steps = report["partial"]["steps"]
        assert steps and [len(s["float_layers"]) for s in steps] == sorted(len(s["float_layers"]) for s in steps)
        assert report["int8"] == max(report["int8_all_int8_choice"], *(s["validation"] for s in steps))


class _Scripted(Penalised):
    """The real evaluator minus a penalty that depends on how many convs run quantized (``penalty(q)``)."""

    def __init__(self, inner, penalty):
        super().__init__(inner)
        self.penalty = penalty

    def evaluate(self, model):
        scores = dict(self.inner.evaluate(model))
        from qarep_dense.quant.backends import get_backend
        from qarep_dense.quant.swap import quantized_convs

        quantized = any("quantizer" in n for n, _ in model.named_modules())
        scores[self.metric_name] -= self.penalty(quantized_convs(model, get_backend("pytorch_quantization"))) \
            if quantized else 0.0
        return scores


def _scripted(monkeypatch, penalty):
    real = quantize_pipeline.task_data

    def task_data(*args, **kwargs):
        data = real(*args, **kwargs)
        data.evaluator = _Scripted(data.evaluator, penalty)
        return data

    monkeypatch.setattr(quantize_pipeline, "task_data", task_data)


def _convs_first(monkeypatch):
    """Rank the classifier's convs as the most sensitive units, its fc last (the one the ladder never floats)."""
    real = quantize_pipeline.rank_layers

    def rank_layers(*args, **kwargs):
        return sorted(real(*args, **kwargs), key=lambda e: e.name == "fc")

    monkeypatch.setattr(quantize_pipeline, "rank_layers", rank_layers)


def test_a_missed_budget_ships_the_ladders_best_step_not_its_last(cls_setup, monkeypatch):
    tmp, root, ckpt = cls_setup
    _convs_first(monkeypatch)
    _scripted(monkeypatch, lambda q: 5.0 - 2.0 * (q == 3))  # 3 convs quantized (3 float) is the best step
    report = quantize_checkpoint(_fast(tmp / "best_step", checkpoint=ckpt, data=root))
    steps = report["partial"]["steps"]
    assert report["budget_met"] is False and len(steps) > 3
    best = max(steps, key=lambda s: s["validation"])
    assert best["quantized_convs"] == 3 and best is not steps[-1]
    assert report["int8"] == best["validation"] and report["chosen"]["float_layers"] == best["float_layers"]
    assert steps[report["partial"]["shipped"]] == best


def test_a_model_without_an_integer_conv_never_meets_the_budget(cls_setup, monkeypatch):
    tmp, root, ckpt = cls_setup
    _convs_first(monkeypatch)
    _scripted(monkeypatch, lambda q: 5.0 if q else 0.0)  # only a model with every conv in float is "accurate"
    report = quantize_checkpoint(_fast(tmp / "no_int_conv", checkpoint=ckpt, data=root))
    last = report["partial"]["steps"][-1]
    assert last["quantized_convs"] == 0 and last["drop"] < 1.0  # it would meet the budget by its metric alone
    assert report["budget_met"] is False
    assert report["chosen"]["float_layers"] != last["float_layers"] and report["integer_convs"] > 0


def test_allow_qat_keeps_ptq_when_qat_made_it_worse(cls_setup, penalised, monkeypatch):
    tmp, root, ckpt = cls_setup
    real = quantize_pipeline.qat_step

    def worse_qat(*args, **kwargs):
        model = real(*args, **kwargs)
        with torch.no_grad():
            model.fc.weight.neg_()  # the argmin becomes the prediction: a fine-tune that went wrong
        return model

    monkeypatch.setattr(quantize_pipeline, "qat_step", worse_qat)
    opts = _fast(tmp / "qat_worse", checkpoint=ckpt, data=root, int8_only=True, allow_qat=True, qat_epochs=1)
    report = quantize_checkpoint(opts)
    assert report["qat"]["kept"] is False and report["qat"]["validation"] < report["int8"]
    assert report["chosen"]["qat"] is False and "QAT" not in report["how"]
    assert "PTQ model" in (opts.out / "report.md").read_text()


def test_report_says_overlap_resolution_and_the_file_ort_scored(cls_setup):
    tmp, root, ckpt = cls_setup
    opts = _fast(tmp / "overlap", checkpoint=ckpt, data=root, selection_images=40, int8_only=True)
    report = quantize_checkpoint(opts)
    text = (opts.out / "report.md").read_text()
    assert report["selection"]["disjoint_from_calibration"] is False and "OVERLAP" in text
    res = report["metric_resolution"]
    assert res["validation_images"] == 15 and res["points_per_image"] == pytest.approx(100 / 15)
    assert res["finer_than_budget"] is True and "no validation prediction may get worse" in text
    assert report["onnx_scored"] in ("model_int8.onnx", "model_int8.pre.onnx")
    assert (opts.out / report["onnx_scored"]).is_file()
    assert report["ort"]["pre_processed"] == (report["onnx_scored"] == "model_int8.pre.onnx")
    json.loads((opts.out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))


@pytest.fixture(scope="module")
def fakequant_file(cls_setup):
    tmp, root, ckpt = cls_setup
    opts = _fast(tmp / "fakequant", checkpoint=ckpt, data=root, int8_only=True)
    quantize_checkpoint(opts)
    return tmp, opts.out / "model_fakequant.pt"


@pytest.mark.parametrize("edit", ["drop_amax", "extra_key", "config_key", "input_shape"])
def test_load_fakequant_is_strict_and_names_the_file(fakequant_file, edit):
    tmp, path = fakequant_file
    payload = torch.load(path, weights_only=True)
    state, meta = dict(payload["model"]), payload["meta"]
    if edit == "drop_amax":
        del state[next(k for k in state if k.endswith("input_quantizer._amax"))]
    elif edit == "extra_key":
        state["stages.0.0.conv.extra"] = torch.zeros(1)
    elif edit == "config_key":
        meta["fake_quant"]["config"]["calibratr"] = "max"
    else:
        del meta["fake_quant"]["config"]["skip_layers"]
    edited = save_checkpoint(tmp / f"edited_{edit}.pt", state, meta)
    with pytest.raises(CheckpointError, match=str(edited)) as err:
        quantize_pipeline.load_fakequant(edited)
    assert {"drop_amax": "_amax", "extra_key": "does not fit", "config_key": "calibratr",
            "input_shape": "skip_layers"}[edit] in str(err.value)
    quantize_pipeline.load_fakequant(path)  # the file as written loads


@pytest.mark.parametrize("budget", ["inf", "nan"])
def test_a_non_finite_budget_is_refused(cls_setup, capsys, budget):
    tmp, root, ckpt = cls_setup
    out = tmp / f"budget_{budget}"
    assert tool("quantize")([str(ckpt), "--data", str(root), "--out", str(out), "--max-drop", budget, *FAST]) == 2
    assert "--max-drop" in capsys.readouterr().err and not (out / "report.json").exists()


@pytest.mark.slow
def test_quantize_tiny_detector_end_to_end(tmp_path):
    work = tmp_path / "det"
    assert tool("train_det")(["configs/det/synthetic_test.toml", "--work-dir", str(work), "--set",
                              f"data.root={tmp_path / 'coco'}", "--set", "data.synthetic_train=24"]) == 0
    out = tmp_path / "q"
    code = tool("quantize")([str(work / "deploy.pt"), "--out", str(out), "--calibrators", "max", "--calib-batches",
                             "2", "--batch-size", "4", "--selection-images", "8", "--int8-only", "--no-progress"])
    report = json.loads((out / "report.json").read_text())
    assert code in (0, 1) and REPORT_KEYS <= set(report) and report["task"] == "det" and report["metric"] == "AP"
    assert report["chosen"]["float_layers"] == []
    cle = [c for c in report["candidates"] if c["transform"] == "cle"]
    assert cle and cle[0]["cle_pairs"] > 0  # backbone / neck chains equalized though the head does not trace
    assert (out / "model_int8.onnx").is_file()


def test_allow_qat_fine_tunes_after_partial_quantization_misses(cls_setup, penalised):
    tmp, root, ckpt = cls_setup
    opts = _fast(tmp / "qat", checkpoint=ckpt, data=root, int8_only=True, allow_qat=True, qat_epochs=1)
    report = quantize_checkpoint(opts)
    qat = report["qat"]
    assert qat is not None and qat["qat"] is True and report["chosen"]["float_layers"] == []
    assert qat["kept"] == report["chosen"]["qat"] == (qat["validation"] > report["int8_all_int8_choice"])
    assert ("QAT" in report["how"]) == qat["kept"] and (opts.out / "model_int8.onnx").is_file()
    assert report["integer_convs"] == report["convs"] > 0


@pytest.mark.slow
def test_allow_qat_fine_tunes_a_detector_with_its_training_loss(tmp_path, penalised, monkeypatch):
    work = tmp_path / "det"
    assert tool("train_det")(["configs/det/synthetic_test.toml", "--work-dir", str(work), "--set",
                              f"data.root={tmp_path / 'coco'}", "--set", "data.synthetic_train=24"]) == 0
    opts = QuantizeOptions(work / "deploy.pt", None, tmp_path / "q", int8_only=True, allow_qat=True,
                           calibrators=("max",), transforms=("none",), bias_correction="off", calib_batches=2,
                           batch_size=4, selection_images=8, progress=False, latency_repeats=1, diagnose=False,
                           qat_epochs=1)
    tuned = []
    real = quantize_pipeline.qat_step
    monkeypatch.setattr(quantize_pipeline, "qat_step", lambda *a, **k: tuned.append(real(*a, **k)) or tuned[-1])
    report = quantize_checkpoint(opts)
    assert report["task"] == "det" and report["qat"] is not None and len(tuned) == 1
    assert report["chosen"]["qat"] == report["qat"]["kept"] == ("QAT" in report["how"])  # shipped only if better
    assert report["integer_convs"] == report["convs"] > 0 and (opts.out / "model_int8.onnx").is_file()
    loaded, _ = quantize_pipeline.load_fakequant(opts.out / "model_fakequant.pt")
    x = torch.rand(1, 3, 64, 64)
    trained = tuned[0].state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in torch.load(work / "deploy.pt", weights_only=False)["model"].items()
               if k in trained and "weight" in k)  # QAT with the detector's loss changed the weights
    with torch.no_grad():
        assert all(torch.isfinite(t).all() for t in loaded(x) if isinstance(t, torch.Tensor))
