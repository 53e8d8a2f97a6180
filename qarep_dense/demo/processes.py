"""Each stage of the main job in a process of its own, in a session of its own, that the main job ends whole.

:func:`run_in_process` runs ``fn(*args)`` (a module-level function and picklable arguments) in a fresh Python
started with ``start_new_session=True``: the stage and everything it starts (DataLoader workers, ONNX Runtime
threads) form one process group, which Ctrl-C at the terminal does not reach on its own. The stage's stdout and
stderr go to its log; its result (or its error, as one line and the traceback in the log) comes back.

While :func:`stop_on_signals` is active, SIGINT or SIGTERM to the main job ends every running stage's group
(SIGTERM, then SIGKILL after ``GRACE_S``) and raises :class:`Interrupted`: one message, a non-zero exit, no
traceback, and no stage left behind. A stage also ends when the main job is killed outright (SIGKILL):
it asks the kernel for SIGHUP when its parent dies (``PR_SET_PDEATHSIG``, Linux), ends its group, and removes
the hand-over folder the dead main job can no longer remove.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

GRACE_S = 5.0  # between SIGTERM and SIGKILL: a stage may finish writing a checkpoint atomically
# glibc's heap for the stage processes: allocations under 32 MiB (glibc's own ceiling for its moving mmap threshold)
# come from the heap, and the heap keeps up to 1 GiB free instead of giving it back to the kernel. With the
# defaults every training step's activations came back as fresh pages, faulted and zeroed by the kernel (about
# a million page faults per minute of a segmentor); the same trainings, bit for bit, faster
# (benchmarks/bench_allocator.py; BENCHMARKS.md "The stage processes' heap"). Ignored where libc is not glibc; a
# GLIBC_TUNABLES of the user's own is kept as it is.
HEAP_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"
# The signal a stage asks the kernel for when the main job dies. Not SIGTERM, which the main job itself sends
# (stop_all): the stage must know which one came, because the kernel sends it when the *thread* that started
# the stage exits, and while a SIGKILLed main job's threads go one by one the stage is handed to a surviving
# thread of the same process, so os.getppid() still names the dying main job. SIGHUP has no other sender
# here: a stage leads a session of its own and has no terminal.
MAIN_JOB_DIED = signal.SIGHUP
ROOT = Path(__file__).resolve().parents[2]  # the checkout (or site-packages): the package must import from it

_running: dict[int, subprocess.Popen] = {}
_lock = threading.Lock()


class Interrupted(RuntimeError):
    """The main job was stopped by a signal; its stages were ended."""


class StageFailed(RuntimeError):
    """A stage process raised (the message is its error's first line) or died."""


def run_in_process(fn: Callable[..., Any], args: tuple, log_path: Path, threads: int = 1) -> Any:
    """``fn(*args)`` in a new session, its output appended to ``log_path``; returns what ``fn`` returned."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {"GLIBC_TUNABLES": HEAP_TUNABLES, **os.environ, "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # The hand-over folder: the main job removes it when the stage ends, the stage when the main job died first.
    with tempfile.TemporaryDirectory(prefix="qarep-stage-") as tmp, open(log_path, "ab") as log:
        job, result = Path(tmp) / "job.pkl", Path(tmp) / "result.pkl"
        job.write_bytes(pickle.dumps((fn, args, threads)))
        proc = subprocess.Popen([sys.executable, "-m", __name__, str(job), str(result), str(os.getpid())],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        with _lock:
            _running[proc.pid] = proc
        try:
            code = proc.wait()
        finally:
            with _lock:
                _running.pop(proc.pid, None)
        if not result.is_file():
            raise StageFailed(f"the stage process ended without a result (exit {code}); see {log_path}")
        ok, value = pickle.loads(result.read_bytes())  # written by our own child, from our own job file
    if not ok:
        raise StageFailed(value)
    return value


def stop_all(grace_s: float = GRACE_S) -> int:
    """End every running stage's process group: SIGTERM, then SIGKILL after ``grace_s``; returns how many."""
    with _lock:
        procs = list(_running.values())
    for proc in procs:
        _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        _signal_group(proc.pid, signal.SIGKILL)  # also the group's other members, even if the leader is gone
    return len(procs)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT / SIGTERM end the running stages and raise :class:`Interrupted` (main thread
    only; elsewhere the block runs without handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: Any) -> None:
        n = stop_all()
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}: ended {n} running stage process(es) "
                          "and their children; rerun the same command to continue (finished stages are reused)")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _die_with(parent: int) -> None:
    """Ask for MAIN_JOB_DIED when the main job dies (Linux); if it is already gone, stop now."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, MAIN_JOB_DIED)  # 1 = PR_SET_PDEATHSIG
    if _main_job_gone(parent):
        raise SystemExit(f"the main job (pid {parent}) is gone; not starting the stage")


_main_job_died = False  # set in a stage when MAIN_JOB_DIED arrives


def _note_main_job_died(signum: int, frame: Any) -> None:
    global _main_job_died
    _main_job_died = True


def _main_job_gone(parent: int) -> bool:
    return _main_job_died or os.getppid() != parent


def _stop_exiting_on_signals() -> None:
    """From now on SIGTERM is ignored and MAIN_JOB_DIED only noted: the stage is already ending."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(MAIN_JOB_DIED, _note_main_job_died)


def _end_group(signum: int, frame: Any) -> None:
    """SIGTERM (from the main job) or MAIN_JOB_DIED (from the kernel) to a stage: pass SIGTERM to what the stage
    started (its process group), then exit through ``finally`` blocks (claims are released, writes atomic)."""
    if signum == MAIN_JOB_DIED:
        _note_main_job_died(signum, frame)
    _stop_exiting_on_signals()
    _signal_group(os.getpgid(0), signal.SIGTERM)
    sys.exit(143)


def _child(job: Path, result: Path, parent: int) -> None:
    outcome: tuple = (False, "the stage was stopped before it finished")
    try:
        # The handlers come first, so that a signal during the imports below also exits through the hand-over.
        for sig in (signal.SIGTERM, MAIN_JOB_DIED):
            signal.signal(sig, _end_group)
        _die_with(parent)
        fn, args, threads = pickle.loads(job.read_bytes())  # written by the main job, not a user's file
        import logging

        import torch

        torch.set_num_threads(threads)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            stream=sys.stdout, force=True)
        outcome = (True, fn(*args))
    except BaseException as err:  # reported to the main job as one line; the traceback stays in the log
        if not isinstance(err, SystemExit):
            traceback.print_exc()
        first = str(err).splitlines()[0] if str(err) else ""
        outcome = (False, f"{type(err).__name__}: {first}")
    finally:  # also when a signal's exit comes while the error above is reported
        sys.stdout.flush()
        _hand_over(outcome, job, result, parent)


def _hand_over(outcome: tuple, job: Path, result: Path, parent: int) -> None:
    """Write the result for the main job; or, if the main job died, remove its hand-over folder: a main job
    killed outright (SIGKILL) never reaches the end of its ``TemporaryDirectory``, and nothing else would."""
    _stop_exiting_on_signals()  # the work is done: no exit midway through the hand-over
    if not _main_job_gone(parent):
        result.write_bytes(pickle.dumps(outcome))
    if _main_job_gone(parent):  # asked again: the main job may have died during the write
        for path in (result, job):  # the two files of this hand-over, then the folder if nothing else is in it
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            job.parent.rmdir()


if __name__ == "__main__":
    _child(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
