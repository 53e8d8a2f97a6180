"""benchmarks/gpu_check.sh on the CPU (--dry-run): it runs its steps at tiny sizes, writes its JSON and table
under $OUT, and a failing step is reported loudly with its log and fails the run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
STEPS = ["det_amp", "seg_amp", "cls_amp", "ddp_cls", "ddp_det", "ddp_seg", "ptq_cls", "ptq_det", "ptq_seg",
         "cls_compile"]


def run_check(tmp_path: Path, *args: str, python: str = sys.executable, timeout: int = 900,
              **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": python, "OMP_NUM_THREADS": "1", **env_vars}
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _summary(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / "gpu_check.json").read_text())


def test_bad_arguments_are_refused_before_anything_runs(tmp_path):
    proc = run_check(tmp_path, "--only", "cls_amp,nope")
    assert proc.returncode == 2 and "unknown step nope; steps: det_amp seg_amp" in proc.stderr
    assert not (tmp_path / "out").exists()
    proc = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "--dry-run" in proc.stdout and "gpu_wheels.sh" in proc.stdout


def test_an_environment_failure_still_leaves_its_reason_in_the_results(tmp_path):
    """A package that cannot be imported (and no wheels to install it from) stops the run before any step; the
    reason must reach $OUT/gpu_check.log, since on a GPU machine only $OUT comes back."""
    broken = tmp_path / "broken"
    (broken / "pycocotools").mkdir(parents=True)
    (broken / "pycocotools" / "__init__.py").write_text('raise ImportError("planted: no pycocotools here")\n')
    (tmp_path / "no_wheels").mkdir()
    proc = run_check(tmp_path, "--only", "cls_amp", PYTHONPATH=str(broken), GPU_WHEELS=str(tmp_path / "no_wheels"),
                     GPU_CHECK_BASE=str(tmp_path / "base"))
    assert proc.returncode == 1 and "cannot import: pycocotools (ImportError: planted" in proc.stderr
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "cannot import: pycocotools (ImportError: planted" in log and "gpu_wheels.sh" in log
    assert "stopped before the summary (exit 1)" in proc.stderr


def test_the_environment_check_reports_missing_modules_a_missing_gpu_and_records_the_rest(tmp_path, monkeypatch,
                                                                                           capsys):
    """benchmarks/_gpu_check.py environment: one process for the imports, the device and environment.json."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import _gpu_check
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    out = tmp_path / "environment.json"
    assert _gpu_check.environment(out, "gpu", ["json", "no_such_module_here"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("no_such_module_here (ModuleNotFoundError: ")
    assert not out.exists()  # nothing recorded until every module imports

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _gpu_check.environment(out, "gpu", ["json"]) == _gpu_check.NO_CUDA and not out.exists()
    assert _gpu_check.environment(out, "dry-run", ["json"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == ""  # the last line: nothing missing
    env = json.loads(out.read_text())
    assert env["device"] == "cpu" and env["torch"] == torch.__version__


@pytest.fixture
def failing_python(tmp_path):
    """The real interpreter, except that the classification benchmark dies with a message."""
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/usr/bin/env bash\nif [ "${{1:-}}" = benchmarks/bench_cls_gpu.py ]; then\n'
                       f'  echo "boom: planted failure" >&2; exit 3\nfi\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def test_a_failing_step_stops_the_run_and_shows_its_log(tmp_path, failing_python):
    proc = run_check(tmp_path, "--only", "cls_amp,ptq_cls", python=failing_python)
    assert proc.returncode == 1
    assert "cls_amp FAILED (exit 3" in proc.stderr and "boom: planted failure" in proc.stderr
    summary = _summary(tmp_path)
    assert not summary["ok"] and summary["failed"] == ["cls_amp"]
    assert [s["name"] for s in summary["steps"]] == ["cls_amp"]  # stopped there: ptq_cls never ran
    table = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| cls_amp | FAILED |" in table and "FAILED: cls_amp" in proc.stdout
    assert "boom: planted failure" in (tmp_path / "out" / "gpu_check.log").read_text()

    proc = run_check(tmp_path, "--only", "cls_amp,ptq_cls", "--keep-going", python=failing_python)
    assert proc.returncode == 1
    steps = {s["name"]: s for s in _summary(tmp_path)["steps"]}
    assert steps["cls_amp"]["status"] == "FAILED"
    assert steps["ptq_cls"]["status"] == "skipped" and "was not written" in steps["ptq_cls"]["note"]


def test_steps_that_no_longer_fit_the_time_budget_are_reported_not_run(tmp_path):
    proc = run_check(tmp_path, "--only", "cls_amp,cls_compile", "--keep-going", GPU_CHECK_BUDGET="1")
    assert proc.returncode == 1 and "cls_amp: not run, the 1 s budget (GPU_CHECK_BUDGET) was spent" in proc.stderr
    steps = {s["name"]: s for s in _summary(tmp_path)["steps"]}
    assert steps["cls_amp"]["status"] == "FAILED" and steps["cls_amp"]["note"] == "not run: the 1 s budget was spent"
    assert steps["cls_compile"]["status"] == "skipped"  # the soft step fails nothing, even unrun


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_its_table(tmp_path):
    """All steps at tiny sizes on the CPU (several minutes on 2 busy cores)."""
    proc = run_check(tmp_path, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = _summary(tmp_path)
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == STEPS and summary["ok"] and summary["mode"] == "dry-run"
    assert steps["ddp_seg"]["status"] == "skipped"  # mmengine's pytorch launcher needs CUDA
    assert all(s["status"] == "ok" for n, s in steps.items() if n != "ddp_seg")
    for name in ("det_amp", "seg_amp", "cls_amp", "cls_compile"):
        assert steps[name]["images_per_s"] > 0 and "loss_start" in steps[name], name
    for name in ("ddp_cls", "ddp_det", "ptq_cls", "ptq_det", "ptq_seg"):
        assert steps[name]["metric"], name
    assert "FP32" in steps["ptq_cls"]["metric"] and "INT8" in steps["ptq_cls"]["metric"]
    table = (tmp_path / "out" / "gpu_check.md").read_text()
    assert table in proc.stdout and "all steps passed" in table
    assert all(f"| {name} |" in table for name in STEPS)


def test_a_one_process_torchrun_job_runs_the_ddp_path(monkeypatch):
    """`torchrun --nproc_per_node 1` (what the check runs on one GPU) must join a process group, not fall back
    to a plain single-process run that would leave DDP unchecked."""
    from qarep_dense.engine.distributed import dist_info_from_env

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not dist_info_from_env().distributed  # plain `python tool.py`
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    info = dist_info_from_env()
    assert info.distributed and info.world_size == 1 and info.is_main
