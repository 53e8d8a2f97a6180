"""Resumable stages: a stage that finished leaves ``<out>/.stages/<name>.json`` (written atomically after
it succeeded), and a rerun returns that record instead of running the stage again.

Nothing here deletes files: a stage that failed half-way leaves its partial outputs for the next run's
tools (which resume or overwrite only what they wrote) and no marker.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

from ..fileio import write_json_atomic

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


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

    def mark(self, name: str, record: Any, seconds: float) -> None:
        """Write the done-marker atomically (tmp file + rename): a crash never leaves half a marker."""
        path = self.marker(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"stage": name, "seconds": seconds, "record": record}, indent=1, default=str)

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.done(name):
            record = self.load(name)
            self.reused.append(name)
            log.info("stage %s: done earlier, reused (%s)", name, self.marker(name))
        else:
            start = time.perf_counter()
            record = fn()
            self.mark(name, record, time.perf_counter() - start)
        self.records[name] = record
        return record
