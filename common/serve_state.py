"""The endpoints file of ``teacher serve``: where the local stack listens while it runs.

``teacher serve`` starts a private Redis on a free port and the API on ``--port``; it writes
``<state root>/serve.json`` (atomically) once everything is up and removes it when it stops.
``teacher doctor`` and the CLI client read it when no variable (``TEACHER_URL``,
``TEACHER_REDIS_URL``, ``TEACHER_DATABASE_URL``) says otherwise, so the commands of the README
find the stack that ``make run`` started without the user copying ports around.

A file left behind by a stack that was SIGKILLed is ignored: it counts only while the ``serve``
process it names is alive. The Redis URL carries the private Redis's password (a fresh one each
start; that Redis binds to 127.0.0.1 only), so the file is created readable by its owner only
(0600), like the database it sits next to. No API token is ever written here.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.atomic import atomic_write_json
from common.settings import state_root

FILE_NAME = "serve.json"


@dataclass(frozen=True)
class ServeState:
    api_url: str                     # e.g. http://127.0.0.1:8000 (no /api/v1)
    redis_url: str
    database_url: str
    pid: int                         # the `teacher serve` process
    pids: dict[str, int] = field(default_factory=dict)  # redis, worker, reconciler, api
    logs_dir: str | None = None
    started_at: float = field(default_factory=time.time)


def path(root: Path | None = None) -> Path:
    return (root or state_root()) / FILE_NAME


def write(state: ServeState, root: Path | None = None) -> Path:
    target = path(root)
    atomic_write_json(target, asdict(state))  # mode 0600: the Redis URL carries a password
    return target


def remove(root: Path | None = None, *, pid: int | None = None) -> None:
    """Remove the file (only if it is ours, when ``pid`` is given)."""
    current = read(root, require_alive=False)
    if current is None or pid is None or current.pid == pid:
        path(root).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read(root: Path | None = None, *, require_alive: bool = True) -> ServeState | None:
    """The running stack's endpoints, or None (no file, unreadable, or its serve is gone)."""
    try:
        raw = json.loads(path(root).read_text())
        state = ServeState(**raw)
    except (OSError, ValueError, TypeError):
        return None
    if require_alive and not _alive(state.pid):
        return None
    return state


__all__ = ["ServeState", "FILE_NAME", "path", "read", "write", "remove"]
