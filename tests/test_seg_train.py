"""End to end on synthetic Cityscapes: tools/train_seg.py (2 iterations, then --resume to 3), tools/eval_seg.py,
tools/ptq_eval.py --task seg with --repair and --ort, and the bad-input errors of the training tool."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from support import tool_module

from qarep_dense.tasks import ptq_study

pytest.importorskip("qarep_dense.integrations.mmseg")
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # OpenMP spin-waits crawl on shared cores
CONFIG = ROOT / "configs" / "seg" / "fcn_qarepvgg-test_1xb2-2it_synthetic-cityscapes-64x128.py"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-iteration run, then --resume with max_iters=3 from its iter_2.pth."""
    base = tmp_path_factory.mktemp("seg")
    work, data = base / "run", base / "data"
    data.mkdir()  # the synthetic scenes are generated into a given --data-root only when it exists
    args = [str(CONFIG), "--work-dir", str(work), "--data-root", str(data), "--no-progress"]
    train = tool_module("train_seg")
    assert train.main(args) == 0
    first = json.loads((work / "results.json").read_text())
    assert train.main(args + ["--resume", "--cfg-options", "train_cfg.max_iters=3"]) == 0
    return work, data, first, json.loads((work / "results.json").read_text())


def test_train_then_resume_continues_at_iteration_3(trained):
    work, _, first, resumed = trained
    assert (first["start_iter"], first["end_iter"]) == (0, 2)
    assert (resumed["start_iter"], resumed["end_iter"]) == (2, 3)  # iteration 3 was the only one trained
    assert (work / "iter_3.pth").is_file()
    ckpt = torch.load(work / "iter_3.pth", weights_only=True)  # mmengine's own file, allow-listed globals only
    assert ckpt["meta"]["iter"] == 3


def test_the_runs_own_iter_checkpoint_is_accepted_by_the_tools(trained, tmp_path, capsys):
    from qarep_dense.tasks.registry import load_model

    work, _, _, _ = trained
    from_iter, meta = load_model(work / "iter_3.pth", "seg")
    from_last, _ = load_model(work / "last.pt", "seg")
    assert meta["task"] == "seg" and meta["mmseg_config"]
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert torch.equal(from_iter(x), from_last(x))  # last.pt holds the weights of the last iteration
    assert tool_module("export_onnx").main([str(work / "iter_3.pth"), "--out", str(tmp_path / "s.onnx")]) == 0
    assert "never" not in capsys.readouterr().err


def test_our_miou_is_mmseg_miou_and_fusion_is_exact(trained):
    _, _, _, results = trained
    assert abs(results["train_form"]["mIoU"] - results["mmseg_val"]["mIoU"]) < 0.011
    assert results["train_form"]["mIoU"] == results["deploy"]["mIoU"]
    assert results["max_logit_diff"] < 1e-4


@pytest.mark.slow  # ~30 s of CPU: four PTQ rows, each exported and run in ONNX Runtime
def test_eval_seg_and_ptq_eval_through_the_registry(trained, tmp_path):
    work, data, _, results = trained
    deploy = tmp_path / "deploy.pt"
    assert tool_module("eval_seg").main([str(work / "last.pt"), "--no-progress", "--save-deploy", str(deploy)]) == 0
    ptq_eval = tool_module("ptq_eval")
    rows, _ = ptq_study.run_study(ptq_eval.study_of(ptq_eval.parse_args([
        "--task", "seg", "--checkpoints", str(work / "last.pt"), str(deploy), "--calibrator", "max", "entropy",
        "--calib-batches", "1", "--batch-size", "4", "--repair", "--ort", "--out", str(tmp_path / "ptq"),
        "--no-progress"])))
    assert len(rows) == 4 and all(r["fp32"] == pytest.approx(results["deploy"]["mIoU"]) for r in rows)
    assert all(0 <= r["int8"] <= 100 and 0 <= r["ort_int8"] <= 100 for r in rows)
    done, total = rows[0]["ort_integer_convs"].split("/")
    assert done == total  # every conv of the fused segmentor runs as an integer kernel in ORT
    assert (tmp_path / "ptq" / "ptq_table.md").read_text().startswith("mIoU")


def test_training_tool_names_the_bad_input(trained, tmp_path, capsys):
    train = tool_module("train_seg")
    assert train.main([str(CONFIG), "--work-dir", str(tmp_path / "w"), "--data-root", str(tmp_path / "missing"),
                       "--cfg-options", "synthetic_cityscapes=None"]) == 2
    assert "missing: folder not found" in capsys.readouterr().err
    assert train.main([str(tmp_path / "nope.py")]) == 2
    assert "nope.py: config file not found" in capsys.readouterr().err
    work, data, _, _ = trained
    assert train.main([str(CONFIG), "--work-dir", str(work), "--data-root", str(data)]) == 2  # no --resume
    assert "already holds iter_" in (err := capsys.readouterr().err) and "of an earlier run" in err


def test_allow_qat_fine_tunes_a_segmentor_with_its_decode_head_loss(trained, tmp_path, penalised, monkeypatch):
    """tools/quantize.py --allow-qat on a segmentor: the budget is missed (penalised evaluator), so the best PTQ
    model is fine-tuned with the decode head's loss; the weights move, and the shipped model is all INT8."""
    from qarep_dense.tasks import quantize_pipeline
    from qarep_dense.tasks.quantize_pipeline import QuantizeOptions, quantize_checkpoint

    work, data, _, _ = trained
    opts = QuantizeOptions(work / "deploy.pt", data, tmp_path / "q", int8_only=True, allow_qat=True,
                           calibrators=("max",), transforms=("none",), bias_correction="off", calib_batches=1,
                           batch_size=2, selection_images=2, progress=False, latency_repeats=1, diagnose=False,
                           qat_epochs=1)
    tuned, losses = [], []
    real_step, real_loss = quantize_pipeline.qat_step, quantize_pipeline.get_task("seg").qat_loss

    def recording_loss(*args):
        loss = real_loss(*args)
        return lambda m, batch: losses.append(loss(m, batch)) or losses[-1]

    row = dataclasses.replace(quantize_pipeline.get_task("seg"), qat_loss=recording_loss)  # a frozen row
    real_get = quantize_pipeline.get_task
    monkeypatch.setattr(quantize_pipeline, "get_task", lambda task: row if task == "seg" else real_get(task))
    monkeypatch.setattr(quantize_pipeline, "qat_step", lambda *a, **k: tuned.append(real_step(*a, **k)) or tuned[-1])
    report = quantize_checkpoint(opts)
    assert report["task"] == "seg" and report["qat"] is not None and len(tuned) == 1
    assert losses and all(torch.isfinite(v) and v > 0 for v in losses)  # the decode head's loss, every batch
    assert report["chosen"]["qat"] == report["qat"]["kept"] == ("QAT" in report["how"])  # shipped only if better
    assert report["integer_convs"] == report["convs"] > 0 and (opts.out / "model_int8.onnx").is_file()
    trained_state = tuned[0].state_dict()
    deploy = torch.load(work / "deploy.pt", weights_only=False)["model"]
    assert any(not torch.equal(trained_state[k], v) for k, v in deploy.items() if k in trained_state and "weight" in k)
