"""Run logs: scalar metrics to CSV files (one per group, e.g. train.csv, val.csv), optionally TensorBoard.

Only rank 0 writes; other ranks get a disabled logger so call sites need no rank checks.
"""
from __future__ import annotations

import csv
import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping

_log = logging.getLogger(__name__)


def _root_prints_to_console() -> bool:
    """Whether the host already prints records on the console (the main job's stage process configures the root
    logger): ours then reach it through propagation, and a console handler of our own would print every line
    twice. A test runner's capturing handlers (their own streams) do not count."""
    return any(isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stdout, sys.stderr)
               for h in logging.getLogger().handlers)


class _ConsoleHandler(logging.StreamHandler):
    """A console handler that writes to ``sys.stderr`` as it is at each record, as logging's last-resort handler
    does. One that kept the stream of its creation would write into a closed file once that stream was swapped
    back (a test runner's capture, ``contextlib.redirect_stderr``)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always follows sys.stderr
        pass


def setup_logging(work_dir: str | os.PathLike | None = None, is_main: bool = True,
                  level: int = logging.INFO) -> None:
    """Console logging for the ``qarep_dense`` loggers, plus ``work_dir/train.log`` on rank 0.

    Non-main ranks log warnings only, so a torchrun console is not printed N times.
    """
    root = logging.getLogger("qarep_dense")
    root.setLevel(level if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    if not _root_prints_to_console() and not any(getattr(h, "_qarep_console", False) for h in root.handlers):
        console = _ConsoleHandler()
        console.setFormatter(fmt)
        console._qarep_console = True  # type: ignore[attr-defined]
        root.addHandler(console)
    for handler in [h for h in root.handlers if getattr(h, "_qarep_file", False)]:
        root.removeHandler(handler)  # one run's log file at a time (train() may be called repeatedly)
        handler.close()
    if work_dir is not None and is_main:
        path = Path(work_dir) / "train.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(fmt)
        handler._qarep_file = True  # type: ignore[attr-defined]
        root.addHandler(handler)


def log_error_to_file(message: str, error: BaseException) -> bool:
    """Write ``message`` and ``error``'s traceback to the run's ``train.log`` (not to the console).

    A run that stops on an error keeps the reason in its log; the console gets the tool's one-line
    message instead. Returns False when no log file is open (non-main ranks, no work dir).
    """
    root = logging.getLogger("qarep_dense")
    handlers = [h for h in root.handlers if getattr(h, "_qarep_file", False)]
    if not handlers:
        return False
    record = root.makeRecord(root.name, logging.ERROR, __file__, 0, message, (),
                             (type(error), error, error.__traceback__))
    for handler in handlers:
        handler.handle(record)
        handler.flush()
    return True


def _scalar(value: Any) -> float | int | str:
    if hasattr(value, "item"):
        value = value.item()
    return value if isinstance(value, (int, float, str)) else float(value)


class MetricLogger:
    """Append rows of scalars to ``work_dir/<group>.csv`` (and TensorBoard, if asked).

    Each row carries ``step`` (and any other keys given); when a later row brings new keys the
    file is rewritten with the wider header, so a CSV always has one consistent header.
    """

    def __init__(self, work_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = False):
        self.work_dir = Path(work_dir)
        self.enabled = enabled
        self._headers: dict[str, list[str]] = {}
        self._tb = None
        if enabled:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                self._tb = self._open_tensorboard()

    def _open_tensorboard(self):
        try:  # lazily: tensorboard is an optional dependency
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            _log.warning("TensorBoard logging requested but unavailable (%s); writing CSV only", err)
            return None
        return SummaryWriter(str(self.work_dir / "tensorboard"))

    def path(self, group: str) -> Path:
        return self.work_dir / f"{group}.csv"

    def _read(self, group: str) -> tuple[list[str], list[dict]]:
        path = self.path(group)
        if not path.is_file():
            return [], []
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)

    def _rewrite(self, group: str, header: list[str], rows: list[dict]) -> None:
        tmp = self.path(group).with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path(group))

    def log(self, group: str, step: int, values: Mapping[str, Any]) -> None:
        """Write one row ``{step, **values}`` to ``<group>.csv`` (tensors become Python scalars)."""
        if not self.enabled:
            return
        row = {"step": step, **{k: _scalar(v) for k, v in values.items()}}
        header = self._headers.get(group)
        if header is None:
            header, _ = self._read(group)
        if not header or any(k not in header for k in row):
            old_header, rows = self._read(group)
            header = list(dict.fromkeys([*old_header, *row]))
            self._rewrite(group, header, rows)
        self._headers[group] = header
        with self.path(group).open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=header).writerow(row)
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{group}/{key}", value, step)

    def truncate(self, group: str, max_step: int) -> None:
        """Drop rows with step > ``max_step`` (rows an interrupted run wrote after its last checkpoint)."""
        if not self.enabled:
            return
        header, rows = self._read(group)
        if header:
            self._rewrite(group, header, [r for r in rows if float(r["step"]) <= max_step])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
