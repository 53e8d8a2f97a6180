"""Training runs never replace an earlier run silently, record only what runs, and log why they stopped."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qarep_dense.engine.checkpoint import load_checkpoint
from qarep_dense.tasks import cls_recipe

from support import REPO, tool  # noqa: E402
CONFIG = REPO / "configs" / "cls" / "synthetic_test.toml"



@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished 1-epoch classification run (a few seconds on the tiny synthetic set)."""
    base = tmp_path_factory.mktemp("finished")
    args = ["--set", f"data.root={base / 'data'}", "optim.epochs=1", "--device", "cpu"]
    assert tool("train_cls")([str(CONFIG), "--work-dir", str(base / "run"), *args]) == 0
    return base / "run", args


def copy_run(finished, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished[0], tmp_path / "run"))


def test_rerun_without_resume_refuses_and_keeps_best(finished, tmp_path, capsys):
    run, args = copy_run(finished, tmp_path), finished[1]
    before = {name: (run / name).read_bytes() for name in ("best.pt", "last.pt", "deploy.pt", "results.json")}
    capsys.readouterr()
    assert tool("train_cls")([str(CONFIG), "--work-dir", str(run), *args]) == 2
    err = capsys.readouterr().err
    assert "already holds last.pt, best.pt, deploy.pt of an earlier run" in err
    assert "--resume" in err and "--overwrite" in err
    assert all((run / name).read_bytes() == data for name, data in before.items())


def test_overwrite_starts_over_without_stale_rows(finished, tmp_path):
    run, args = copy_run(finished, tmp_path), finished[1]
    (run / "epoch_1.pt").write_bytes(b"old keep_every copy")
    (run / "notes.txt").write_text("user notes")
    assert tool("train_cls")([str(CONFIG), "--work-dir", str(run), *args, "--overwrite"]) == 0
    assert len((run / "train.csv").read_text().splitlines()) == 2  # header + this run's epoch, not appended
    assert not (run / "epoch_1.pt").exists() and (run / "notes.txt").read_text() == "user notes"
    assert load_checkpoint(run / "last.pt")["epoch"] == 0
    with pytest.raises(SystemExit):  # one or the other
        classification_parser().parse_args([str(CONFIG), "--resume", "--overwrite"])


def classification_parser():
    from qarep_dense.tasks.cli import build_parser

    return build_parser("x", "cls")


def test_resume_refuses_a_change_it_cannot_apply(finished, tmp_path, capsys):
    run, args = copy_run(finished, tmp_path), finished[1]
    config_before = (run / "config.json").read_text()
    capsys.readouterr()
    code = tool("train_cls")([str(CONFIG), "--work-dir", str(run), *args, "--resume",
                              "--set", "optim.lr=0.2", "optim.momentum=0.5", "optim.epochs=2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "this config changes optim.lr (0.05 -> 0.2), optim.momentum (0.9 -> 0.5)" in err
    assert "optim.epochs" not in err.split("Changeable on resume")[0]  # an applied change is not refused
    assert (run / "config.json").read_text() == config_before  # nothing recorded for a run that did not happen


def test_resume_applies_and_records_the_epochs_change(finished, tmp_path):
    run, args = copy_run(finished, tmp_path), finished[1]
    assert tool("train_cls")([str(CONFIG), "--work-dir", str(run), *args, "--resume", "--set", "optim.epochs=2"]) == 0
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 1  # the second epoch ran
    assert last["meta"]["config"]["optim"]["epochs"] == 2
    assert json.loads((run / "config.json").read_text())["optim"]["epochs"] == 2
    assert json.loads((run / "results.json").read_text())["epochs"] == 2
    assert "resuming with optim.epochs changed: 1 -> 2" in (run / "train.log").read_text()


def test_a_run_stopped_by_nan_logs_error_and_traceback(tmp_path, monkeypatch, capsys):
    real = cls_recipe.make_step_fn

    def nan_step(cfg, preprocess, device):
        step = real(cfg, preprocess, device)

        def broken(model, batch):
            loss, items = step(model, batch)
            return loss * float("nan"), items
        return broken

    monkeypatch.setattr(cls_recipe, "make_step_fn", nan_step)
    run = tmp_path / "run"
    code = tool("train_cls")([str(CONFIG), "--work-dir", str(run), "--set", f"data.root={tmp_path / 'data'}",
                              "--device", "cpu"])
    assert code == 1
    assert "error: non-finite loss" in capsys.readouterr().err
    log = (run / "train.log").read_text()
    assert "run stopped by an error: NonFiniteLossError: non-finite loss" in log
    assert "Traceback (most recent call last)" in log and "_check_finite" in log


def test_a_run_stopped_by_bad_data_logs_it(tmp_path, capsys):
    data = tmp_path / "data"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (data / split / cls).mkdir(parents=True)
            (data / split / cls / "0.png").write_bytes(b"not an image")
    run = tmp_path / "run"
    code = tool("train_cls")([str(CONFIG), "--work-dir", str(run), "--device", "cpu", "--set", f"data.root={data}",
                              "data.kind=imagefolder", "model.num_classes=2"])
    assert code == 2
    assert "corrupt or unreadable image" in capsys.readouterr().err
    log = (run / "train.log").read_text()
    assert "ImageReadError" in log and "0.png: not a readable image" in log and "Traceback" in log


def test_resume_reads_an_unrecorded_meta_key_as_what_older_runs_trained_with(tmp_path):
    from qarep_dense.engine.checkpoint import CheckpointError
    from qarep_dense.tasks.common import check_resume_meta

    old_meta = {"task": "det", "scale": "n"}  # written before bn_eps was recorded (trained with 1e-5)
    before = {"bn_eps": 1e-5}
    check_resume_meta(tmp_path / "last.pt", old_meta, {"task": "det", "scale": "n", "bn_eps": 1e-5},
                      ("task", "scale", "bn_eps"), before)
    with pytest.raises(CheckpointError, match=r"last.pt was written for bn_eps=1e-05 but this config has bn_eps=0.001"):
        check_resume_meta(tmp_path / "last.pt", old_meta, {"task": "det", "scale": "n", "bn_eps": 1e-3},
                          ("task", "scale", "bn_eps"), before)
    with pytest.raises(CheckpointError, match="bn_eps=None"):  # no default given: an unrecorded key never matches
        check_resume_meta(tmp_path / "last.pt", old_meta, {"task": "det", "scale": "n", "bn_eps": 1e-5},
                          ("task", "scale", "bn_eps"))
