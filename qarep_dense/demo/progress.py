"""The main job's progress line: stages done, and an estimate of the time left that means something.

tqdm's own estimate divides the time so far by the stages done. The main job's stages differ a hundredfold (a
data export takes seconds, a segmentor's training a quarter of an hour), so that estimate said hours while a
40-minute run was 3 minutes in (1:17:22 left after the first three stages, 3:03:04 after seven). Here each stage
weighs what it is expected to cost:

* :data:`REFERENCE_SECONDS`: each kind of stage's time in the default run on the slowest machine measured (the
  AVX2-only AMD EPYC, 2026-12-07, commit c573d8a: its stage records, one thread per stage), scaled to the run's
  recipe (epochs). Only the ratios matter: the *pace* corrects the scale.
* the pace: the seconds the finished stages of this run took per reference second, counting the stages of a
  minute or more (1 until one has finished). A faster machine, or a quieter hour, is seen after the first
  training.
* time left: the pace times what is left (the stages not started, and what is left of the running ones), shared
  by the workers and never less than the longest one of them (a stage runs on one worker), plus the stages that
  run alone (the latency measurements) in full.

It is an estimate for a person watching, shown in the progress line only: nothing is decided or recorded by it.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Iterable

# Seconds per stage kind on the reference run, longest prefix first wins (see the module's docstring).
# cls_train / det_train are per 40 / 10 epochs and scaled by the run's; seg_train is the default's 4000
# iterations. The Hyper-Search trainings are taken as their plain twins (evaluated every epoch: a few % more).
REFERENCE_SECONDS: dict[str, float] = {
    "cls_data": 9, "canvas_data": 12,
    "cls_train_hs": 340, "cls_train": 340, "cls_quant": 16, "cls_analyze": 15, "cls_pipeline": 72, "cls_figures": 8,
    "det_train_hs": 335, "det_train": 335, "det_ptq": 42, "det_pipeline": 115, "det_mechanism": 10,
    "seg_train": 900, "seg_ptq": 26, "seg_pipeline": 88, "seg_mechanism": 12,
    "pictures": 12, "speed": 13,
}
OTHER_SECONDS = 15.0  # a stage kind the table does not know (a test's): a short measurement
# Stages shorter than this (on the reference run) say little about the machine's pace: their time is mostly
# the stage process's start (importing torch), so the pace is measured on the longer ones only.
PACE_FROM_SECONDS = 60.0


def stage_kind(name: str) -> str | None:
    """The key of :data:`REFERENCE_SECONDS` that stage ``name`` is one of (the longest matching prefix)."""
    return max((k for k in REFERENCE_SECONDS if name == k or name.startswith(k + "_")), key=len, default=None)


def reference_seconds(name: str, cls_epochs: int = 40, det_epochs: int = 10) -> float:
    """What stage ``name`` took on the reference run, at the run's recipe (``cls_epochs``, ``det_epochs``)."""
    kind = stage_kind(name)
    if kind is None:
        return OTHER_SECONDS
    seconds = float(REFERENCE_SECONDS[kind])
    if kind.startswith("cls_train"):
        seconds *= cls_epochs / 40
    elif kind.startswith("det_train"):
        seconds *= det_epochs / 10
    return seconds


class TimeLeft:
    """Tracks the stages of one ``run_all`` and estimates the wall time left.

    ``expected``: every stage's reference seconds (:func:`expected_seconds`); ``timed(name, fn)`` wraps a
    stage's function so that its start is seen; ``finished(name)`` is called as
    each stage ends (a stage reused from an earlier run ends without starting: it costs nothing and says
    nothing about the pace). ``clock``: injectable for the tests.
    """

    def __init__(self, expected: dict[str, float], workers: int, alone: Iterable[str] = (),
                 clock: Callable[[], float] = time.monotonic):
        self.expected, self.workers, self.clock = dict(expected), max(1, workers), clock
        self.alone = set(alone)  # stages that run with nothing beside them: their time is not shared
        self.started: dict[str, float] = {}
        self.took: dict[str, float] = {}  # finished stages that ran: seconds
        self.ended: set[str] = set()
        self._lock = threading.Lock()

    def timed(self, name: str, fn: Callable[[], object]) -> Callable[[], object]:
        def run():
            with self._lock:
                self.started[name] = self.clock()
            return fn()
        return run

    def finished(self, name: str) -> None:
        with self._lock:
            self.ended.add(name)
            start = self.started.pop(name, None)
            if start is not None:
                self.took[name] = self.clock() - start

    def pace(self) -> float:
        """Seconds per reference second, from the long stages that finished (1 until one has)."""
        long = [n for n in self.took if self.expected[n] >= PACE_FROM_SECONDS]
        if not long:
            return 1.0
        return sum(self.took[n] for n in long) / sum(self.expected[n] for n in long)

    def seconds_left(self) -> float:
        with self._lock:
            pace, now = self.pace(), self.clock()
            running = [max(pace * self.expected[n] - (now - t), 0.0) for n, t in self.started.items()]
            waiting = {n: pace * s for n, s in self.expected.items() if n not in self.ended and n not in self.started}
        shared = [s for n, s in waiting.items() if n not in self.alone] + running
        alone = sum(s for n, s in waiting.items() if n in self.alone)
        return max(sum(shared) / self.workers, max(shared, default=0.0)) + alone


def describe(seconds: float) -> str:
    """'about 23 min left' (minutes rounded up; under a minute: 'under a minute left')."""
    if seconds < 60:
        return "under a minute left"
    return f"about {int(-(-seconds // 60))} min left"


def expected_seconds(names: Iterable[str], cls_epochs: int, det_epochs: int) -> dict[str, float]:
    return {n: reference_seconds(n, cls_epochs, det_epochs) for n in names}
