"""The files of a run directory other than checkpoints: history, step stream, progress, log.

Formats are specified in docs/run-directory.md. JSON is strict: a non-finite number is stored
as ``null`` plus a flag naming what it was, never as a bare ``NaN`` token that half the JSON
parsers in the world reject.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from common.atomic import TMP_PREFIX, append_line, atomic_write_json, atomic_write_text

HISTORY = "history.json"
STEPS = "steps.jsonl"
PROGRESS = "progress.json"
CONFIG = "config.yaml"
LOG = "train.log"
RESERVE = ".space-reserve"
RESERVE_BYTES = 256 * 1024
HISTORY_FORMAT = "teacher-history/1"


def finite_or_flag(name: str, value: float, flags: dict[str, str]) -> float | None:
    """``value`` if finite; else ``None`` and ``flags[name]`` = 'nan' / 'inf' / '-inf'."""
    if value is None or math.isfinite(value):
        return value
    flags[name] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return None


def sanitize(obj: Any, flags: dict[str, str], prefix: str = "") -> Any:
    """Replace every non-finite float in a nested structure, recording its dotted name."""
    if isinstance(obj, float):
        return finite_or_flag(prefix, obj, flags)
    if isinstance(obj, dict):
        return {k: sanitize(v, flags, f"{prefix}.{k}" if prefix else k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [sanitize(v, flags, f"{prefix}[{i}]") for i, v in enumerate(obj)]
    return obj


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Name ``path`` in an OSError raised while writing it. A failed write(2) or fsync(2)
    reports no file name, and an atomic write's temp file is an internal name; so a full disk
    would otherwise say only "No space left on device", not what was being written."""
    try:
        yield
    except OSError as exc:
        if exc.errno is not None and (exc.filename is None or Path(str(exc.filename)).name.startswith(TMP_PREFIX)):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


class RunFiles:
    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)

    # -- config ------------------------------------------------------------------------------
    def write_config(self, cfg: dict[str, Any]) -> None:
        with naming(self.dir / CONFIG):
            atomic_write_text(self.dir / CONFIG, yaml.safe_dump(cfg, sort_keys=False))

    # -- history -----------------------------------------------------------------------------
    def write_history(self, history: dict[str, Any]) -> None:
        with naming(self.dir / HISTORY):
            atomic_write_json(self.dir / HISTORY, history)

    # -- step stream -------------------------------------------------------------------------
    def append_step(self, record: dict[str, Any]) -> None:
        flags: dict[str, str] = {}
        clean = sanitize(record, flags)
        if flags:
            clean["nonfinite"] = flags
        with naming(self.dir / STEPS):
            append_line(self.dir / STEPS, json.dumps(clean, allow_nan=False))

    def truncate_steps(self, last_step: int, last_epoch: int) -> int:
        """Drop records written after the checkpoint being resumed (an interrupted epoch), so
        every epoch appears exactly once. Returns how many records were dropped."""
        path = self.dir / STEPS
        if not path.exists():
            return 0
        kept, dropped = [], 0
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                dropped += 1  # a line cut short by the crash
                continue
            if rec.get("epoch", 0) <= last_epoch and rec.get("step", 0) <= last_step:
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
        path = self.dir / RESERVE
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
            (self.dir / RESERVE).unlink(missing_ok=True)
        except OSError:
            pass

    # -- progress ----------------------------------------------------------------------------
    def write_progress(self, progress: dict[str, Any]) -> None:
        flags: dict[str, str] = {}
        clean = sanitize({**progress, "updated_at": time.time()}, flags)
        if flags:
            clean["nonfinite"] = flags
        with naming(self.dir / PROGRESS):
            atomic_write_json(self.dir / PROGRESS, clean)


def setup_logging(run_dir: Path, *, debug: bool) -> logging.Logger:
    """Console and ``train.log`` get the same lines, so the file is the console, as printed."""
    teardown_logging()
    root = logging.getLogger()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout), logging.FileHandler(run_dir / LOG, encoding="utf-8")]
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
