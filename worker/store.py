"""Per-process job-store handle for the worker (created lazily, on first use)."""
from __future__ import annotations

import os
import threading

from sqlalchemy.orm import Session, sessionmaker

from common.store import make_engine, make_sessionmaker, upgrade

_lock = threading.Lock()
# Keyed by pid too: a forked process (a test's, a library's) must never reuse its parent's
# pooled connections.
_factories: dict[tuple[int, str], sessionmaker[Session]] = {}


def sessions_for(database_url: str) -> sessionmaker[Session]:
    key = (os.getpid(), database_url)
    with _lock:
        factory = _factories.get(key)
        if factory is None:
            engine = make_engine(database_url)
            upgrade(engine)
            factory = _factories[key] = make_sessionmaker(engine)
        return factory
