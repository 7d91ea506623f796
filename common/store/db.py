"""Engine, sessions and migrations (Alembic) of the job store.

SQLite (the default, one file on the data volume) runs in WAL mode with a busy timeout. Reads and
writes start differently:

- a write, ``with transaction(factory) as s``, starts with ``BEGIN IMMEDIATE``: it takes the write
  lock first (waiting up to the busy timeout). A deferred transaction that upgrades from a read to
  a write lock can fail with "database is locked" at once, whatever the busy timeout, when another
  connection committed since it began reading; taking the lock first is also what makes each
  read-check-write in common/store exclusive on SQLite (PostgreSQL uses ``SELECT ... FOR UPDATE``).
- a read, a plain ``with factory() as s`` session, starts with a deferred ``BEGIN``: in WAL mode
  it reads a snapshot and never waits for a writer, nor makes one wait (the API's status polls
  and the worker's heartbeats run side by side). Such a session must not write: a flush in it
  raises :class:`ReadOnlySession` (on PostgreSQL too, so that a misuse shows in the SQLite tests).

``engine.begin()``/``engine.connect()`` outside a session (migrations, ``teacher doctor``) keep
``BEGIN IMMEDIATE``.
"""
from __future__ import annotations

import logging
import sqlite3
import time
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Engine, Integer, MetaData, Table, create_engine, event, func, inspect, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

from common.settings import DEFAULT_DATABASE_URL, absolute_database_url, database_url

log = logging.getLogger(__name__)


class _NoContextBanner(logging.Filter):
    """Alembic announces its dialect at every configure (each process start, several times);
    its "Running upgrade a -> b" lines are the ones worth keeping."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Context impl ", "Will assume "))


logging.getLogger("alembic.runtime.migration").addFilter(_NoContextBanner())

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option of a read session's connection: its SQLite transaction begins deferred.
READ_ONLY = "teacher_read_only"
_WRITE = "teacher_write"  # Session.info key: opened by transaction(), may flush


class ReadOnlySession(RuntimeError):
    """A plain (read) session tried to write: writes go through ``transaction(factory)``."""


def make_engine(url: str | None = None, **kwargs: Any) -> Engine:
    url = absolute_database_url(url) if url else database_url()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "isolation_level": None}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            _journal_mode_wal(cur)
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = str(parsed.set(drivername="postgresql+psycopg"))  # psycopg 3 is what we ship
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _journal_mode_wal(cur: Any) -> None:
    """``PRAGMA journal_mode=WAL``, waiting out other connections. Switching a new database to
    WAL needs it to itself, and SQLite answers "database is locked" at once instead of calling
    the busy handler: two gunicorn workers booting on a fresh volume (one of them migrating)
    failed a worker's boot, and gunicorn then stops altogether. Once the file is in WAL mode
    the pragma is a no-op that never locks."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that read (deferred BEGIN on SQLite) unless opened by :func:`transaction`.
    expire_on_commit=False: rows are read after the transaction that loaded them ends."""
    factory = sessionmaker(engine, expire_on_commit=False, execution_options={READ_ONLY: True})
    event.listen(factory, "before_flush", _refuse_read_only_flush)
    return factory


def _refuse_read_only_flush(session: Session, _context: Any, _instances: Any) -> None:
    if not session.info.get(_WRITE) and (session.new or session.dirty or session.deleted):
        raise ReadOnlySession("a read session has changes to write; use `with transaction(factory) as s`")


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A write transaction: BEGIN IMMEDIATE on SQLite (the write lock before the first read),
    committed at the end of the block, rolled back on an exception."""
    with factory(info={_WRITE: True}) as session, session.begin():
        session.connection(execution_options={READ_ONLY: False})  # begins it, before any read
        yield session


# ---------------------------------------------------------------------------------- migrations
# Alembic revisions in common/store/migrations/versions/, configured from code (no alembic.ini).
# A store's "schema version" is how many revisions it has applied (0001..0004 were the old
# numbered scheme's versions 1..4), which is what `teacher db upgrade` and `teacher doctor` show.
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# The old scheme's table: a store that has it (and no alembic_version) is adopted by stamping the
# revision of its version, then upgraded like any other.
_LEGACY = Table("schema_version", MetaData(), Column("version", Integer, primary_key=True))
_PG_MIGRATION_LOCK = 7263201  # pg_advisory_xact_lock key: one migrator at a time across hosts


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the job store; env.py runs on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def _revisions() -> list[str]:
    """Revision ids, oldest first (one linear history)."""
    script = ScriptDirectory.from_config(alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions("base", "heads")))]


REVISIONS = _revisions()
LATEST_VERSION = len(REVISIONS)


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def current_version(conn: Connection) -> int:
    """Revisions applied (0: no schema). A store of the old scheme reports its old number; a
    revision this code does not know (newer code migrated the store) counts as
    LATEST_VERSION + 1."""
    revision = current_revision(conn)
    if revision is None:
        return _legacy_version(conn)
    return REVISIONS.index(revision) + 1 if revision in REVISIONS else LATEST_VERSION + 1


def _legacy_version(conn: Connection) -> int:
    if not inspect(conn).has_table(_LEGACY.name):
        return 0
    return conn.execute(select(func.max(_LEGACY.c.version))).scalar() or 0


def upgrade(engine: Engine) -> int:
    """``alembic upgrade head``, under a lock, so that it is safe to call from several processes
    at once (the API's, the worker's, `teacher db upgrade`); returns the schema version."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})"))  # released at commit
        # (SQLite: engine.begin() is BEGIN IMMEDIATE, which already serialises this transaction.)
        if current_revision(conn) is None:
            _adopt_legacy(conn)
        version = current_version(conn)
        if version > LATEST_VERSION:  # newer code migrated it; this code leaves it alone
            log.warning("job store: at revision %s, which this code does not know; not migrating",
                        current_revision(conn))
            return version
        command.upgrade(alembic_config(conn), "head")
        return current_version(conn)


def _adopt_legacy(conn: Connection) -> None:
    """A store of the old numbered scheme at version N: stamp revision N, drop the old table."""
    version = _legacy_version(conn)
    if version:
        revision = REVISIONS[min(version, LATEST_VERSION) - 1]
        log.info("job store: adopting schema_version %d as revision %s", version, revision)
        MigrationContext.configure(conn).stamp(ScriptDirectory.from_config(alembic_config()), revision)
    if inspect(conn).has_table(_LEGACY.name):
        _LEGACY.drop(conn)
