"""End-to-end detection: tools/train_det.py (2 iterations) -> eval_det -> export_onnx -> ptq_eval, and exact resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qarep_dense.config import load_config
import qarep_dense.tasks.det_recipe as det_task
from qarep_dense.engine.checkpoint import load_checkpoint
from qarep_dense.engine.hooks import Hook
from qarep_dense.tasks.detection import DetConfig, data_paths, train

from support import REPO, tool  # noqa: E402
CONFIG = REPO / "configs" / "det" / "synthetic_test.toml"



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("det_e2e")
    work, data = base / "run", base / "data"
    code = tool("train_det")([str(CONFIG), "--work-dir", str(work), "--device", "cpu", "--set", f"data.root={data}"])
    assert code == 0
    return work, data


def test_train_writes_checkpoints_and_results(trained):
    work, _ = trained
    results = json.loads((work / "results.json").read_text())
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert key in results["train_form"] and key in results["deploy"]
    # fusion is exact, so the deploy form scores what the train form scores
    assert results["deploy"]["AP50"] == pytest.approx(results["train_form"]["AP50"], abs=1e-6)
    last = load_checkpoint(work / "last.pt")
    assert last["meta"]["task"] == "det" and last["epoch"] == 0 and "optimizer" in last
    assert load_checkpoint(work / "deploy.pt")["meta"]["fused"] is True
    assert last["iteration"] == 2  # 8 images, batch 4, drop_last: 2 iterations
    assert len((work / "train.csv").read_text().splitlines()) == 2  # header + epoch 1


def test_eval_export_and_ptq_tools_run_on_the_trained_model(trained, tmp_path, capsys):
    work, data = trained
    assert tool("eval_det")([str(work / "best.pt"), "--fuse", "--out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    results = json.loads((work / "results.json").read_text())
    assert metrics["AP50"] == pytest.approx(results["deploy"]["AP50"], abs=1e-6)
    assert tool("export_onnx")([str(work / "best.pt"), "--out", str(tmp_path / "det.onnx")]) == 0
    assert (tmp_path / "det.onnx").stat().st_size > 10_000
    code = tool("ptq_eval")(["--task", "det", "--checkpoints", str(work / "deploy.pt"), "--calib-batches", "1",
                             "--batch-size", "4", "--out", str(tmp_path / "ptq"), "--no-progress"])
    assert code == 0
    table = json.loads((tmp_path / "ptq" / "ptq_table.json").read_text())
    row = table["rows"][0]
    assert table["metric"] == "AP" and row["block"] == "qarepvgg"
    assert row["fp32"] == pytest.approx(results["deploy"]["AP"], abs=1e-6)  # the same evaluation, in percent
    assert results["metrics_unit"] == metrics["metrics_unit"] == "percent" and table["metric"] == "AP"
    assert "| deploy | qarepvgg | max |" in (tmp_path / "ptq" / "ptq_table.md").read_text()


class _Kill(Hook):
    """Stops the run after the first epoch's checkpoint, like a killed job."""

    priority = 95  # after the checkpoint hook (90)

    def after_epoch(self, trainer):
        raise KeyboardInterrupt("simulated kill")


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch):
    overrides = [f"data.root={tmp_path / 'data'}", "optim.epochs=2", "train.deterministic=true", "train.ema_tau=2.0"]
    cfg = load_config(CONFIG, DetConfig, overrides)
    train(cfg, tmp_path / "full", device="cpu")

    build = det_task.build_det_trainer

    def build_then_kill(cfg, work_dir, dist, device, resume):
        trainer, evaluate = build(cfg, work_dir, dist, device, resume)
        if not resume:
            trainer.hooks.append(_Kill())
        return trainer, evaluate

    monkeypatch.setattr(det_task, "build_det_trainer", build_then_kill)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", device="cpu")
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 0
    train(cfg, tmp_path / "cut", resume=True, device="cpu")

    full, cut = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert full["epoch"] == cut["epoch"] == 1
    for part in ("model", "ema"):
        state_full = full[part] if part == "model" else full[part]["model"]
        state_cut = cut[part] if part == "model" else cut[part]["model"]
        for key, value in state_full.items():
            assert torch.equal(value, state_cut[key]), f"{part}.{key}"


def test_missing_coco_data_is_named(tmp_path):
    cfg = load_config(REPO / "configs" / "det" / "yolov6s_qarepvgg_coco.toml", DetConfig,
                      [f"data.root={tmp_path / 'coco'}"])
    with pytest.raises(FileNotFoundError, match=r"coco: missing .*instances_train2017\.json.*COCO 2017 layout"):
        data_paths(cfg.data)


def test_config_errors_name_the_key(tmp_path, capsys):
    assert tool("train_det")([str(CONFIG), "--work-dir", str(tmp_path), "--set", "model.scal=n"]) == 2
    assert "unknown key 'model.scal' (did you mean 'model.scale'?)" in capsys.readouterr().err
    assert tool("train_det")([str(CONFIG), "--work-dir", str(tmp_path), "--set", "model.scale=xl"]) == 2
    assert "model.scale 'xl' is not one of" in capsys.readouterr().err
