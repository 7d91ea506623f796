"""Checkpoints: atomic, verified, and never loaded with pickle's full power.

Every epoch writes an immutable ``epoch_NNNN.pt`` first and records its sha256 in
``manifest.json``; ``last.pt`` and ``best.pt`` are copies written after that. A crash at any
point therefore leaves the manifest describing complete files only, and a file whose bytes do
not match the manifest (truncated, half-written, bit-rotted) is skipped with a warning in favour
of the previous good one. Loading always uses ``weights_only=True``: a checkpoint from an
untrusted source cannot execute code.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.atomic import atomic_write_bytes, atomic_write_json, remove_stale_temp_files

from .artifacts import naming

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_EPOCH_FILE = re.compile(r"^epoch_(\d{4,})\.pt$")


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was required, or one failed verification."""


@dataclass
class CheckpointEntry:
    name: str
    epoch: int
    step: int
    size: int
    sha256: str
    metrics: dict[str, Any]
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def serialize(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def load_checkpoint_file(path: Path, *, expected_sha256: str | None = None) -> dict[str, Any]:
    """Verify (when a digest is known) and load with ``weights_only=True``."""
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise CheckpointError(f"{path.name}: sha256 mismatch (file is truncated or corrupt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refused an object (a `__reduce__` payload, a class, a function): the
        # file is not a checkpoint this code wrote. Never retry without weights_only.
        raise CheckpointError(f"{path.name}: cannot be loaded safely: refused by weights-only loading, it holds "
                              f"objects other than tensors and plain data (not a teacher checkpoint; possibly "
                              f"tampered with): {_unpickling_detail(exc)}") from exc
    except Exception as exc:  # translated: truncated zip archives, ...
        raise CheckpointError(f"{path.name}: cannot be loaded safely: {exc}") from exc


def _unpickling_detail(exc: BaseException) -> str:
    """The line of torch's weights_only error that names what was refused (its other lines
    suggest loading with weights_only=False, which is exactly what must not happen)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the documentation"))]
    return " ".join(useful or lines)[:500]


def manifest_sha256(path: Path) -> str | None:
    """The sha256 that the manifest beside ``path`` records for it, if there is one."""
    manifest = path.parent / MANIFEST
    if not manifest.is_file():
        return None
    entries = json.loads(manifest.read_text()).get("checkpoints", [])
    return next((e["sha256"] for e in entries if e.get("name") == path.name), None)


def _maybe_fault(name: str, data: bytes, path: Path) -> None:
    """Test-only fault injection (``TEACHER_FAULT=kill_in_checkpoint:EPOCH``): write half the
    file's bytes to its temp name, then SIGKILL this process, as a power cut would."""
    fault = os.environ.get("TEACHER_FAULT", "")
    m = re.search(r"kill_in_checkpoint:(\d+)", fault)
    if m and name == f"epoch_{int(m.group(1)):04d}.pt":
        with open(path.parent / f".tmp-{name}.partial", "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


class CheckpointManager:
    def __init__(self, directory: Path, *, keep_last: int, every_epochs: int, best_metric: str, best_mode: str):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep_last, self.every_epochs = keep_last, every_epochs
        self.best_metric, self.best_mode = best_metric, best_mode
        removed = remove_stale_temp_files(self.dir)
        if removed:
            log.warning("removed %d incomplete checkpoint temp file(s) left by an interrupted write", len(removed))
        self.entries: dict[str, CheckpointEntry] = {}
        self.best: dict[str, Any] | None = None
        self._read_manifest()

    # -- manifest ---------------------------------------------------------------------------
    def _read_manifest(self) -> None:
        path = self.dir / MANIFEST
        if not path.exists():
            return
        try:
            data = json.loads(path.read_text())
            self.entries = {e["name"]: CheckpointEntry(**e) for e in data.get("checkpoints", [])}
            self.best = data.get("best")
        except (ValueError, TypeError, KeyError) as exc:
            # The manifest is written atomically, so this means outside damage: say so loudly.
            log.warning("checkpoint manifest unreadable (%s); falling back to scanning files", exc)
            self.entries = {}

    def _write_manifest(self) -> None:
        ordered = sorted(self.entries.values(), key=lambda e: (e.step, e.name))
        with naming(self.dir / MANIFEST):
            atomic_write_json(self.dir / MANIFEST, {
                "format": "teacher-checkpoints/1",
                "best_metric": self.best_metric,
                "best": self.best,
                "checkpoints": [e.to_dict() for e in ordered],
            })

    # -- saving -----------------------------------------------------------------------------
    def is_better(self, value: float | None) -> bool:
        if value is None or value != value:  # None or NaN never wins
            return False
        if self.best is None:
            return True
        return value > self.best["value"] if self.best_mode == "max" else value < self.best["value"]

    def save(self, state: dict[str, Any], *, epoch: int, step: int, metrics: dict[str, Any]) -> list[str]:
        """Write this epoch's checkpoints. If a write fails (a full disk), it raises with the
        file's name, leaves no temp file, and every file the manifest lists stays intact: the
        manifest is only rewritten after the files it describes are complete."""
        try:
            return self._save(state, epoch=epoch, step=step, metrics=metrics)
        except BaseException:
            try:
                remove_stale_temp_files(self.dir)  # atomic writes clean up after themselves; belt and braces
            except OSError:
                pass
            raise

    def _save(self, state: dict[str, Any], *, epoch: int, step: int, metrics: dict[str, Any]) -> list[str]:
        data = serialize(state)
        digest, now = sha256_bytes(data), time.time()

        def write(name: str) -> None:
            _maybe_fault(name, data, self.dir / name)
            with naming(self.dir / name):
                atomic_write_bytes(self.dir / name, data)
            self.entries[name] = CheckpointEntry(name, epoch, step, len(data), digest, metrics, now)

        epoch_name = f"epoch_{epoch:04d}.pt"
        write(epoch_name)
        self._write_manifest()  # the immutable epoch file is now durable and described
        written = [epoch_name, "last.pt"]
        write("last.pt")
        value = metrics.get(self.best_metric)
        if self.is_better(value):
            write("best.pt")
            self.best = {"metric": self.best_metric, "value": value, "epoch": epoch}
            written.append("best.pt")
        self._prune(epoch)
        self._write_manifest()
        return written

    def _prune(self, current_epoch: int) -> None:
        """Keep the newest epoch file, the newest ``keep_last`` periodic ones, last and best."""
        epoch_files = sorted(
            (e for e in self.entries.values() if _EPOCH_FILE.match(e.name)), key=lambda e: e.epoch
        )
        periodic = [e for e in epoch_files if e.epoch % self.every_epochs == 0][-self.keep_last:]
        keep = {e.name for e in periodic} | {f"epoch_{current_epoch:04d}.pt"}
        for e in epoch_files:
            if e.name not in keep:
                (self.dir / e.name).unlink(missing_ok=True)
                del self.entries[e.name]

    # -- loading ----------------------------------------------------------------------------
    def candidates(self) -> list[CheckpointEntry]:
        """Manifest entries, newest first; ``last.pt`` before an epoch file of the same step."""
        return sorted(self.entries.values(), key=lambda e: (e.step, e.name == "last.pt", e.name != "best.pt"), reverse=True)

    def load_latest(self) -> tuple[dict[str, Any], CheckpointEntry] | None:
        """The newest checkpoint that verifies and loads; warn about each one skipped."""
        for entry in self.candidates():
            if entry.name == "best.pt":
                continue  # best is not necessarily the latest state to resume from
            path = self.dir / entry.name
            if not path.exists():
                log.warning("checkpoint %s listed in the manifest is missing; trying an older one", entry.name)
                continue
            try:
                state = load_checkpoint_file(path, expected_sha256=entry.sha256)
            except CheckpointError as exc:
                log.warning("%s; trying an older checkpoint", exc)
                continue
            return state, entry
        return None
