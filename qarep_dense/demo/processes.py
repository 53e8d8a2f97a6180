"""Each stage of the main job in a process of its own, in a session of its own, that the main job ends whole.

:func:`run_in_process` runs ``fn(*args)`` (a module-level function and picklable arguments) in a fresh Python
started with ``start_new_session=True``: the stage and everything it starts (DataLoader workers, ONNX Runtime
threads) form one process group, which Ctrl-C at the terminal does not reach on its own. The stage's stdout and
stderr go to its log; its result (or its error, as one line and the traceback in the log) comes back.

While :func:`stop_on_signals` is active, SIGINT or SIGTERM to the main job ends every running stage's group
(SIGTERM, then SIGKILL after ``GRACE_S``) and raises :class:`Interrupted`: one message, a non-zero exit, no
traceback, and no stage left behind. A stage also ends when the main job is killed outright (SIGKILL):
it asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``, Linux).
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
    with tempfile.TemporaryDirectory(prefix="qarep-stage-") as tmp, open(log_path, "ab") as log:
        job, result = Path(tmp) / "job.pkl", Path(tmp) / "result.pkl"
        job.write_bytes(pickle.dumps((fn, args, threads, os.getpid())))
        proc = subprocess.Popen([sys.executable, "-m", __name__, str(job), str(result)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
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
    """Ask for SIGTERM when the main job dies (Linux); if it is already gone, stop now."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:
        raise SystemExit(f"the main job (pid {parent}) is gone; not starting the stage")


def _end_group(signum: int, frame: Any) -> None:
    """SIGTERM to a stage (from the main job, or the kernel when the main job died): pass it to what the stage
    started (its process group), then exit through ``finally`` blocks (claims are released, writes atomic)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _signal_group(os.getpgid(0), signal.SIGTERM)
    sys.exit(143)


def _child(job: Path, result: Path) -> None:
    fn, args, threads, parent = pickle.loads(job.read_bytes())  # written by the main job, not a user's file
    _die_with(parent)
    import logging

    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout, force=True)
    signal.signal(signal.SIGTERM, _end_group)
    try:
        outcome = (True, fn(*args))
    except BaseException as err:  # reported to the main job as one line; the traceback stays in the log
        if not isinstance(err, SystemExit):
            traceback.print_exc()
        first = str(err).splitlines()[0] if str(err) else ""
        outcome = (False, f"{type(err).__name__}: {first}")
    sys.stdout.flush()
    result.write_bytes(pickle.dumps(outcome))


if __name__ == "__main__":
    _child(Path(sys.argv[1]), Path(sys.argv[2]))
