"""A run's log lines are printed once, whether or not the host already configured logging."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import logging, sys
if {host}:  # as the main job's stage process does
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True)
from qarep_dense.engine.logging import setup_logging
setup_logging({work!r})
logging.getLogger("qarep_dense.engine.hooks").info("epoch 1/1 eval: top1 50")
"""


@pytest.mark.parametrize("host", [False, True])
def test_each_record_is_printed_once_and_kept_in_the_run_log(tmp_path, host):
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(host=host, work=str(tmp_path))], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    assert (done.stdout + done.stderr).count("epoch 1/1 eval: top1 50") == 1
    assert (tmp_path / "train.log").read_text().count("epoch 1/1 eval: top1 50") == 1


SWAPPED = """
import contextlib, io, logging
from qarep_dense.engine.logging import setup_logging
first = io.StringIO()
with contextlib.redirect_stderr(first):  # as a test runner's capture of one test
    setup_logging()
first.close()
logging.getLogger("qarep_dense.deploy.ort").info("after the swap")
"""


def test_the_console_follows_stderr_after_it_was_swapped_back():
    """Set up under a redirected stderr that is closed afterwards: later records reach the real stderr, with no
    "--- Logging error ---" from a handler that kept the closed stream."""
    done = subprocess.run([sys.executable, "-c", SWAPPED], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "after the swap" in done.stderr and "Logging error" not in done.stderr
