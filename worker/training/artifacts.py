"""The files of a run directory other than checkpoints: history, step stream, progress, log.

Formats are specified in docs/run-directory.md. JSON is strict: a non-finite number is stored
as ``null`` plus a flag naming what it was, never as a bare ``NaN`` token that half the JSON
parsers in the world reject.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from common import rundir
from common.atomic import atomic_write_text
# Re-exported: the engine and the tests import these from here.
from common.rundir import (CONFIG, HISTORY, HISTORY_FORMAT, LOG, PROGRESS, RESERVE, STEPS,  # noqa: F401
                           History, Progress, StepRecord, finite_or_flag, naming, sanitize)

RESERVE_BYTES = 256 * 1024


class RunFiles:
    """The trainer's writer of its run directory (names and formats: :mod:`common.rundir`)."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.paths = rundir.RunPaths(self.dir)

    # -- config ------------------------------------------------------------------------------
    def write_config(self, cfg: Mapping[str, Any]) -> None:
        rundir.write_config(self.paths.config, cfg)

    # -- history -----------------------------------------------------------------------------
    def write_history(self, history: Mapping[str, Any] | History) -> None:
        rundir.write_history(self.paths.history, history)

    # -- step stream -------------------------------------------------------------------------
    def append_step(self, record: StepRecord | Mapping[str, Any]) -> None:
        rundir.append_step(self.paths.steps, record)

    def truncate_steps(self, last_step: int, last_epoch: int) -> int:
        """Drop records written after the checkpoint being resumed (an interrupted epoch), so
        every epoch appears exactly once. Returns how many records were dropped."""
        path = self.paths.steps
        if not path.exists():
            return 0
        kept, dropped = [], 0
        for line, rec in rundir.iter_step_lines(path):
            # A line that does not parse was cut short by the crash.
            if rec is not None and rec.get("epoch", 0) <= last_epoch and rec.get("step", 0) <= last_step:
                kept.append(line)
            else:
                dropped += 1
        with naming(path):
            atomic_write_text(path, "".join(f"{line}\n" for line in kept))
        return dropped

    # -- room for the last words on a full disk -----------------------------------------------
    def reserve_space(self) -> bool:
        """Set aside a little space (a hidden ballast file) so that when the volume fills up,
        releasing it leaves room to record why the run failed (progress.json, train.log).
        Best effort: on an already full disk there is nothing to reserve."""
        path = self.paths.reserve
        try:
            with open(path, "wb") as fh:
                fh.write(bytes(RESERVE_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
            return True
        except OSError:
            path.unlink(missing_ok=True)
            return False

    def release_reserve(self) -> None:
        try:
            self.paths.reserve.unlink(missing_ok=True)
        except OSError:
            pass

    # -- progress ----------------------------------------------------------------------------
    def write_progress(self, progress: Progress | Mapping[str, Any]) -> None:
        rundir.write_progress(self.paths.progress, progress, now=time.time())

    def read_progress(self) -> Progress | None:
        """What the last write said (None before the first; RunFileCorrupt if damaged)."""
        return Progress.read(self.paths.progress)


def setup_logging(run_dir: Path, *, debug: bool, rank: int = 0) -> logging.Logger:
    """Console and ``train.log`` get the same lines, so the file is the console, as printed.
    With several processes, rank 0 logs as one process does; the others write no file and say
    only warnings and errors, on the console, prefixed with their rank."""
    teardown_logging()
    root = logging.getLogger()
    prefix = f"[rank{rank}] " if rank else ""
    fmt = logging.Formatter(prefix + "%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if rank:
        handlers[0].setLevel(logging.WARNING)
    else:
        handlers.append(logging.FileHandler(rundir.RunPaths(run_dir).log, encoding="utf-8"))
    for h in handlers:
        h.setFormatter(fmt)
        h._teacher = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("PIL", "matplotlib", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger("teacher")


def teardown_logging() -> None:
    """Detach (and close) the handlers :func:`setup_logging` added."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_teacher", False):
            root.removeHandler(h)
            h.close()
