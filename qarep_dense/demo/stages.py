"""Resumable stages: a stage that finished leaves ``<out>/.stages/<name>.json`` (written atomically after
it succeeded), and a rerun returns that record instead of running the stage again.

:meth:`StageRunner.run_all` runs a list of :class:`Stage` s, up to ``workers`` at a time, each once the
stages it comes ``after`` are done: independent trainings go side by side, one thread each, which keeps
both cores of a small machine busy where one small model would use two threads poorly.

Nothing here deletes files: a stage that failed half-way leaves its partial outputs for the next run's
tools (which resume or overwrite only what they wrote) and no marker.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from ..fileio import write_json_atomic

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Stage:
    """One unit of the main job: ``fn()`` returns its JSON-serialisable record.

    after: stages whose outputs it reads (a name not in the list being run counts as done: the stage then
    fails by itself if its input is missing); alone: runs with nothing beside it (latency measurements).
    """

    name: str
    fn: Callable[[], Any]
    after: tuple[str, ...] = ()
    alone: bool = False


class StageRunner:
    """Runs named stages once per output folder.

    ``run(name, fn)`` calls ``fn()`` (which returns a JSON-serialisable record) unless ``name`` is
    already done; either way it returns the record. ``records`` holds every record seen in this run.
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.marker_dir = self.out_dir / ".stages"
        self.records: dict[str, Any] = {}
        self.reused: list[str] = []
        self._lock = threading.Lock()  # run() may be called from worker threads

    def marker(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"stage name {name!r}: use letters, digits, '_', '-' and '.' only")
        return self.marker_dir / f"{name}.json"

    def done(self, name: str) -> bool:
        return self.marker(name).is_file()

    def load(self, name: str) -> Any:
        path = self.marker(name)
        try:
            return json.loads(path.read_text())["record"]
        except (OSError, json.JSONDecodeError, KeyError) as err:
            raise ValueError(f"{path}: unreadable stage marker ({err}); delete that file to rerun the stage") from err

    def mark(self, name: str, record: Any, seconds: float, start: float | None = None) -> None:
        """Write the done-marker atomically (tmp file + rename): a crash never leaves half a marker.
        ``start``: when the stage began (epoch seconds), so that the wall time of stages run side by side
        can be told from the sum of their times."""
        path = self.marker(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        end = time.time()
        write_json_atomic(path, {"stage": name, "seconds": seconds, "start": end - seconds if start is None else start,
                                 "end": end, "record": record}, indent=1, default=str)

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.done(name):
            record = self.load(name)
            with self._lock:
                self.reused.append(name)
            log.info("stage %s: done earlier, reused (%s)", name, self.marker(name))
        else:
            start, wall_start = time.perf_counter(), time.time()
            record = fn()
            self.mark(name, record, time.perf_counter() - start, wall_start)
        with self._lock:
            self.records[name] = record
        return record

    def run_all(self, stages: Iterable[Stage], workers: int = 1,
                on_done: Callable[[str, BaseException | None], None] | None = None) -> dict[str, str]:
        """Run ``stages``, at most ``workers`` at once, each after its ``after`` stages, in list order
        among the ready ones (put long stages first). A failed stage is recorded and the others go on;
        a stage after a failed one is not started. Returns {failed stage: why}; ``on_done(name, error)``
        is called as each one ends (error None on success)."""
        pending = list(stages)
        names = {s.name for s in pending}
        if len(names) != len(pending):
            raise ValueError("run_all: stage names must be unique")
        finished: set[str] = set()
        failed: dict[str, str] = {}
        running: dict[Future, Stage] = {}

        def ready(st: Stage) -> bool:
            return all(d in finished or d not in names for d in st.after)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            while pending or running:
                for st in list(pending):
                    blocked = next((d for d in st.after if d in failed), None)
                    if blocked:
                        pending.remove(st)
                        failed[st.name] = f"not run: it needs stage {blocked}, which failed"
                        if on_done:
                            on_done(st.name, RuntimeError(failed[st.name]))
                        continue
                    if len(running) >= max(1, workers) or any(r.alone for r in running.values()):
                        break
                    if ready(st):
                        if st.alone and running:
                            break  # its turn: start nothing else until it ran alone
                        pending.remove(st)
                        running[pool.submit(self.run, st.name, st.fn)] = st
                if not running:
                    if pending:  # nothing can start: a cycle or a wait on a stage that never ends
                        raise ValueError(f"run_all: stages {[s.name for s in pending]} wait on each other")
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    st = running.pop(fut)
                    err = fut.exception()
                    if err is None:
                        finished.add(st.name)
                    else:
                        first = str(err).splitlines()[0] if str(err) else type(err).__name__
                        failed[st.name] = f"{type(err).__name__}: {first}"
                        log.error("stage %s failed: %s", st.name, err)
                    if on_done:
                        on_done(st.name, err)
        return failed
