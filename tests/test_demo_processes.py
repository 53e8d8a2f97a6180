"""The main job's stage processes: Ctrl-C, SIGTERM or SIGKILL of the main job ends every stage and what the
stage started; the main job says so in one line, exits non-zero, without a traceback."""
from __future__ import annotations

import os
import pickle
import platform
import signal
import subprocess
import sys
import time

import pytest

from qarep_dense.demo.processes import HEAP_TUNABLES, StageFailed, run_in_process

from support import REPO  # noqa: E402

# A main job in miniature: one stage that starts a grandchild (sleep) and waits for it, run the way
# Demo.run runs its stages (a worker thread; the main thread waits under stop_on_signals).
MAIN_JOB = """
import subprocess, sys, threading, time
from pathlib import Path
from qarep_dense.demo import processes as p

def stage():
    try:
        p.run_in_process(subprocess.call, (["sleep", "300"],), Path(sys.argv[1]))
    except p.StageFailed:
        pass

worker = threading.Thread(target=stage)
try:
    with p.stop_on_signals():
        worker.start()
        while not p._running:
            time.sleep(0.05)
        print(*p._running, flush=True)
        worker.join()
except RuntimeError as err:
    raise SystemExit(f"demo: error: {err}")
"""


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _started(job: subprocess.Popen) -> int:
    """The stage's process group, once the stage has started its grandchild (a group of two)."""
    stage = int(job.stdout.readline())
    for _ in range(400):
        if len(subprocess.run(["pgrep", "-g", str(stage)], capture_output=True, text=True).stdout.split()) >= 2:
            break
        time.sleep(0.05)
    return stage


def test_ctrl_c_sigterm_or_sigkill_of_the_main_job_ends_every_stage_group(tmp_path):
    """Three main jobs at once (their start-up dominates): SIGINT, SIGTERM, SIGKILL. None leaves its stage's
    hand-over folder behind, not even the one killed outright (its stage removes it)."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
    tmp = {sig: tmp_path / f"tmp_{sig.name}" for sig in sigs}
    for folder in tmp.values():
        folder.mkdir()
    jobs = [subprocess.Popen([sys.executable, "-c", MAIN_JOB, str(tmp_path / f"{sig.name}.log")], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp[sig])}) for sig in sigs]
    stages = [_started(job) for job in jobs]
    for job, sig in zip(jobs, sigs):
        job.send_signal(sig)
    for job, sig in zip(jobs[:2], sigs):
        _, err = job.communicate(timeout=60)
        assert job.returncode != 0 and "Traceback" not in err
        assert err.strip() == (f"demo: error: interrupted by {sig.name}: ended 1 running stage process(es) and "
                               "their children; rerun the same command to continue (finished stages are reused)")
    jobs[2].wait(timeout=60)  # SIGKILL: no handler ran; the stage hears of it from the kernel
    for _ in range(200):
        if not any(map(_alive, stages)):
            break
        time.sleep(0.05)
    assert not any(map(_alive, stages))  # each stage and its grandchild
    assert {sig.name: sorted(p.name for p in tmp[sig].iterdir()) for sig in sigs} == {sig.name: [] for sig in sigs}


@pytest.mark.parametrize("stranger", [False, True])
def test_a_stage_whose_main_job_is_gone_removes_its_hand_over_files_and_nothing_else(tmp_path, stranger):
    """The stage is told a main job that is not its parent (pid 1): it does not run, writes no result, and removes
    the two hand-over files, then the folder only if nothing else is in it."""
    folder = tmp_path / "qarep-stage-x"
    folder.mkdir()
    job, result = folder / "job.pkl", folder / "result.pkl"
    job.write_bytes(pickle.dumps((print, ("ran",), 1)))
    if stranger:
        (folder / "notes.txt").write_text("not the stage's")
    done = subprocess.run([sys.executable, "-m", "qarep_dense.demo.processes", str(job), str(result), "1"], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert "ran" not in done.stdout
    if stranger:
        assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    else:
        assert not folder.exists()


def test_a_stage_error_comes_back_as_one_line_and_its_traceback_stays_in_the_log(tmp_path):
    log = tmp_path / "stage.log"
    with pytest.raises(StageFailed, match=r"^ValueError: invalid literal for int\(\) with base 10: 'x'$"):
        run_in_process(int, ("x",), log)
    assert "Traceback" in log.read_text()


def test_stage_processes_run_with_the_heap_settings_unless_the_user_chose_their_own(tmp_path, monkeypatch):
    """Every stage process gets HEAP_TUNABLES in its environment; a GLIBC_TUNABLES of the user's own wins."""
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert run_in_process(os.getenv, ("GLIBC_TUNABLES",), tmp_path / "a.log") == HEAP_TUNABLES
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=1")
    assert run_in_process(os.getenv, ("GLIBC_TUNABLES",), tmp_path / "b.log") == "glibc.malloc.arena_max=1"


# Rounds of ten 4 MB buffers, all freed at the end of each round, as a training step frees its activations:
# glibc's defaults give the freed top of the heap back to the kernel, so every round faults its pages in again.
ALLOCATION_ROUNDS = """
import resource
for _ in range(40):
    buffers = [bytearray(4 << 20) for _ in range(10)]
    del buffers
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="GLIBC_TUNABLES is glibc's")
def test_the_heap_settings_take_effect_in_glibc():
    """A misspelt tunable is ignored without a word: count the page faults of freed-and-reallocated buffers."""
    def faults(tunables: str | None) -> int:
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        if tunables:
            env["GLIBC_TUNABLES"] = tunables
        return int(subprocess.run([sys.executable, "-c", ALLOCATION_ROUNDS], env=env, capture_output=True,
                                  text=True, check=True).stdout)

    default, kept = faults(None), faults(HEAP_TUNABLES)
    assert default > 40 * 10 * 1024 / 2  # most rounds fault their 40 MB in again (1024 pages per 4 MB)
    assert kept < default / 5, (default, kept)
