"""End-to-end: tools/train_cls.py on synthetic shapes -> checkpoints, results.json, a loadable deploy model."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support import tool_module

from qarep_dense.config import config_to_dict, load_config
from qarep_dense.data.imagefolder import make_cls_loader
from qarep_dense.data.preprocess import IMAGENET
from qarep_dense.deploy import remaining_multi_branch
from qarep_dense.engine.checkpoint import CheckpointError, load_checkpoint
from qarep_dense.evaluation import evaluate_classifier
from qarep_dense.tasks.registry import load_model
from qarep_dense.tasks.classification import ClsConfig, train

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "cls" / "synthetic_test.toml"


def run_tool(*args: str, cwd: Path = REPO, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2", **(extra_env or {})}
    return subprocess.run([sys.executable, str(REPO / "tools" / "train_cls.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run of the tool, shared by the checks below."""
    base = tmp_path_factory.mktemp("e2e")
    work, data = base / "run", base / "data"
    proc = run_tool(str(CONFIG), "--work-dir", str(work), "--set", f"data.root={data}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, data, proc


def test_tool_writes_checkpoints_logs_and_results(trained):
    work, _, proc = trained
    for name in ("last.pt", "best.pt", "deploy.pt", "results.json", "train.csv", "val.csv", "config.json"):
        assert (work / name).is_file(), name
    results = json.loads((work / "results.json").read_text())
    assert abs(results["train_form"]["top1"] - results["deploy"]["top1"]) <= 0.5
    assert results["max_logit_diff"] < 1e-3
    assert results["train_form"]["n"] == results["deploy"]["n"] == 6 * 8
    assert results["weights"] == "ema" and results["epochs"] == 2
    assert json.loads(proc.stdout)["deploy"]["top1"] == results["deploy"]["top1"]
    val_rows = (work / "val.csv").read_text().strip().splitlines()
    assert val_rows[0].startswith("step,top1,top5") and len(val_rows) == 3  # header + 2 epochs


def test_checkpoint_meta_and_resume_state(trained):
    work, data, _ = trained
    last = load_checkpoint(work / "last.pt")
    assert last["epoch"] == 1 and {"optimizer", "ema", "rng", "hooks", "scaler"} <= set(last)
    meta = last["meta"]
    assert (meta["task"], meta["arch"], meta["block"], meta["fused"]) == ("cls", "test", "qarepvgg", False)
    assert meta["preprocess"] == IMAGENET.as_dict()
    cfg = load_config(CONFIG, ClsConfig, [f"data.root={data}"])
    assert meta["config"] == config_to_dict(cfg)
    best = load_checkpoint(work / "best.pt")
    assert best["metrics"]["top1"] == last["hooks"]["checkpoint"]["best"]


def test_deploy_checkpoint_loads_fused_and_reproduces_its_accuracy(trained):
    work, data, _ = trained
    model, meta = load_model(work / "deploy.pt")
    assert meta["fused"] is True and remaining_multi_branch(model) == []
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # fold_bn=True
    loader = make_cls_loader(data, meta["image_size"], batch_size=16, train=False)
    top1 = evaluate_classifier(model, loader, IMAGENET)["top1"]
    assert top1 == pytest.approx(json.loads((work / "results.json").read_text())["deploy"]["top1"])


def test_resume_of_finished_run_and_mismatched_config(trained, tmp_path):
    work, data, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(work, copy)
    overrides = [f"data.root={data}", "train.deterministic=false"]
    cfg = load_config(CONFIG, ClsConfig, overrides)
    results = train(cfg, copy, resume=True, device="cpu")  # nothing left to train: re-fuses and reports
    assert results["deploy"] == json.loads((work / "results.json").read_text())["deploy"]
    other = load_config(CONFIG, ClsConfig, [*overrides, "model.block=repvgg"])
    with pytest.raises(CheckpointError, match=r"last\.pt was written for block='qarepvgg' but this config has "
                                              r"block='repvgg'"):
        train(other, copy, resume=True, device="cpu")
    with pytest.raises(FileNotFoundError, match=r"--resume: .*empty/last\.pt not found"):
        train(cfg, tmp_path / "empty", resume=True, device="cpu")


def test_evaluating_less_often_trains_the_same_model_bit_for_bit(trained, tmp_path):
    """The main job evaluates its classifiers every 10th epoch only: that must not change what is trained (the
    loaders draw from their own seeded generators, evaluation draws no global random number)."""
    _, data, _ = trained
    states = {}
    for interval in (1, 2):  # every epoch, or only after the last of the 2
        work = tmp_path / f"every_{interval}"
        train(load_config(CONFIG, ClsConfig, [f"data.root={data}", f"train.eval_interval={interval}"]), work,
              device="cpu")
        assert len((work / "val.csv").read_text().strip().splitlines()) == 1 + 2 // interval
        last = load_checkpoint(work / "last.pt")
        states[interval] = {**{f"model.{k}": v for k, v in last["model"].items()},
                            **{f"ema.{k}": v for k, v in last["ema"]["model"].items()},
                            **{f"deploy.{k}": v for k, v in load_checkpoint(work / "deploy.pt")["model"].items()}}
    assert states[1].keys() == states[2].keys() and len(states[1]) > 100
    assert all(torch.equal(states[1][k], states[2][k]) for k in states[1])


def test_tool_reports_config_errors_with_file_and_key(tmp_path, capsys):
    tool = vars(tool_module("train_cls"))  # in-process: fast
    main = tool["main"]
    args = tool["parse_args"]([str(CONFIG), "--set", "a=1", "b=2", "--set", "c=3", "--work-dir", "w", "--resume"])
    assert (args.overrides, args.work_dir, args.resume) == (["a=1", "b=2", "c=3"], Path("w"), True)
    assert main([str(CONFIG), "--work-dir", str(tmp_path), "--set", "optim.lrr=0.1"]) == 2
    assert "--set optim.lrr=0.1: unknown key 'optim.lrr' (did you mean 'optim.lr'?)" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('base = "%s"\n[optim]\nepochs = "two"\n' % CONFIG)
    assert main([str(bad)]) == 2
    assert "bad.toml: key 'optim.epochs' expects int; got str 'two'" in capsys.readouterr().err
    assert not any(tmp_path.glob("*.pt"))


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    """DDP over Gloo: two processes split the global batch; rank 0 writes the results."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(REPO / "tools" / "train_cls.py"),
           str(CONFIG), "--work-dir", str(tmp_path / "run"), "--set", f"data.root={tmp_path / 'data'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert abs(results["train_form"]["top1"] - results["deploy"]["top1"]) <= 0.5
    assert len(load_checkpoint(tmp_path / "run" / "last.pt")["rng"]) == 2  # one RNG state per rank
