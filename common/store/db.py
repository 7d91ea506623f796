"""Engine, sessions and versioned migrations of the job store.

SQLite (the default, one file on the data volume) runs in WAL mode with a busy timeout, and every
transaction starts with ``BEGIN IMMEDIATE``: the API's gunicorn workers and the Celery worker all
write, and a deferred transaction that upgrades from a read to a write lock can fail with
"database is locked" regardless of the busy timeout. PostgreSQL uses row locks instead.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy import Engine, Float, create_engine, event, inspect, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

from common.settings import DEFAULT_DATABASE_URL, absolute_database_url, database_url
from common.store.models import Base, Job, SchemaVersion

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000


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
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = str(parsed.set(drivername="postgresql+psycopg"))  # psycopg 3 is what we ship
    return create_engine(url, pool_pre_ping=True, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: rows are read after the transaction that loaded them ends.
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as session, session.begin():
        yield session


# ---------------------------------------------------------------------------------- migrations
# Each entry upgrades the schema from version N-1 to N. Never edit an applied migration; append.
def _v1_initial(conn: Connection) -> None:
    # The v1 tables exactly as the models define them today; later migrations must ALTER.
    tables = [Base.metadata.tables[n] for n in ("users", "tokens", "jobs", "idempotency_keys", "worker_beats")]
    Base.metadata.create_all(conn, tables=tables)


def _v2_job_run_seconds(conn: Connection) -> None:
    # A store created at v1 by today's models already has the column (v1 creates the tables
    # as the models define them), so add it only where it is missing.
    if "run_seconds" in {c["name"] for c in inspect(conn).get_columns("jobs")}:
        return
    column_type = Float().compile(dialect=conn.dialect)
    conn.execute(text(f"ALTER TABLE jobs ADD COLUMN run_seconds {column_type} DEFAULT 0 NOT NULL"))


def _v3_job_deleted_at(conn: Connection) -> None:
    # As in v2: a store created at v1 by today's models already has the column.
    if "deleted_at" in {c["name"] for c in inspect(conn).get_columns("jobs")}:
        return
    column_type = Job.__table__.c.deleted_at.type.compile(dialect=conn.dialect)
    conn.execute(text(f"ALTER TABLE jobs ADD COLUMN deleted_at {column_type}"))


def _v4_job_interruptions(conn: Connection) -> None:
    # As in v2: a store created at v1 by today's models already has the columns.
    present = {c["name"] for c in inspect(conn).get_columns("jobs")}
    if "interruptions" not in present:
        conn.execute(text("ALTER TABLE jobs ADD COLUMN interruptions INTEGER DEFAULT 0 NOT NULL"))
    if "claimed_at" not in present:
        column_type = Job.__table__.c.claimed_at.type.compile(dialect=conn.dialect)
        conn.execute(text(f"ALTER TABLE jobs ADD COLUMN claimed_at {column_type}"))


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial schema", _v1_initial),
    (2, "jobs.run_seconds: training time summed over attempts", _v2_job_run_seconds),
    (3, "jobs.deleted_at: a deleted job's row stays, unlisted", _v3_job_deleted_at),
    (4, "jobs.interruptions and jobs.claimed_at: interruptions counted apart from failures", _v4_job_interruptions),
]
LATEST_VERSION = MIGRATIONS[-1][0]


def current_version(conn: Connection) -> int:
    if not inspect(conn).has_table("schema_version"):
        return 0
    return conn.execute(select(text("max(version)")).select_from(SchemaVersion.__table__)).scalar() or 0


def upgrade(engine: Engine) -> int:
    """Apply pending migrations; safe to call from several processes at once."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # One migrator at a time across hosts; released at commit.
            conn.execute(text("SELECT pg_advisory_xact_lock(7263201)"))
        # (SQLite: BEGIN IMMEDIATE already serialises this transaction.)
        SchemaVersion.__table__.create(conn, checkfirst=True)
        version = current_version(conn)
        for number, description, apply in MIGRATIONS:
            if number > version:
                log.info("job store: applying migration %d (%s)", number, description)
                apply(conn)
                conn.execute(SchemaVersion.__table__.insert().values(version=number))
                version = number
    return version
