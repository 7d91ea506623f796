"""Job-store migrations (Alembic, common/store/migrations): an empty store, a store of the old
numbered scheme at each of its versions, and concurrent starters, on SQLite and PostgreSQL; the
migrated schema matches the models (autogenerate finds nothing to do)."""
from __future__ import annotations

import logging
import threading

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import inspect

from common.store import LATEST_VERSION, current_version, make_engine, upgrade
from common.store.db import REVISIONS, alembic_config, current_revision
from common.store.migrations.helpers import include_object
from common.store.models import Base

STORES = ["sqlite", "postgres"]
JOB_ID = "a" * 32


@pytest.fixture(params=STORES)
def url(request, tmp_path) -> str:
    if request.param == "postgres":
        return request.getfixturevalue("pg_database_url")  # skips when no server is reachable
    return f"sqlite:///{tmp_path / 'teacher.db'}"


@pytest.fixture
def engine(url):
    engine = make_engine(url)
    yield engine
    engine.dispose()


def schema_diff(engine) -> list:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": include_object})
        return compare_metadata(ctx, Base.metadata)


def tables(engine) -> set[str]:
    with engine.connect() as conn:
        return set(inspect(conn).get_table_names())


def legacy_store(engine, version: int) -> None:
    """The store as version ``version`` of the old numbered scheme left it: that schema (the first
    ``version`` revisions are those versions), its schema_version rows, no Alembic table; and a
    job row."""
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), REVISIONS[version - 1])
        conn.exec_driver_sql("DROP TABLE alembic_version")
        conn.exec_driver_sql("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
        for v in range(1, version + 1):
            conn.exec_driver_sql(f"INSERT INTO schema_version (version) VALUES ({v})")
        insert_job(conn)


def insert_job(conn) -> None:
    conn.exec_driver_sql("INSERT INTO users (id, name, is_admin, created_at) VALUES (1, 'a', false, '2025-01-01')")
    conn.exec_driver_sql(
        "INSERT INTO jobs (id, user_id, name, queue, priority, status, config, attempts, max_attempts, "
        f"cancel_requested, created_at, updated_at) VALUES ('{JOB_ID}', 1, 'j', 'default', 5, 'queued', "
        "'{}', 0, 3, false, '2025-01-01', '2025-01-01')")


def test_the_revisions_are_the_old_versions_in_order():
    assert REVISIONS == ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008"] and LATEST_VERSION == 8


def test_an_empty_store_upgrades_to_head_and_matches_the_models(engine):
    assert upgrade(engine) == LATEST_VERSION
    assert upgrade(engine) == LATEST_VERSION  # idempotent
    with engine.connect() as conn:
        assert current_version(conn) == LATEST_VERSION and current_revision(conn) == REVISIONS[-1]
    assert "schema_version" not in tables(engine)
    assert schema_diff(engine) == []


@pytest.mark.parametrize("version", [1, 2, 3, 4])  # the old scheme's versions (0005 on came after it)
def test_a_store_of_the_old_numbered_scheme_is_adopted_and_upgraded(engine, version, caplog):
    legacy_store(engine, version)
    with engine.connect() as conn:
        assert current_version(conn) == version  # doctor reads it before anything is migrated
    with caplog.at_level(logging.INFO, logger="common.store.db"):
        assert upgrade(engine) == LATEST_VERSION
    assert f"adopting schema_version {version} as revision {REVISIONS[version - 1]}" in caplog.text
    assert upgrade(engine) == LATEST_VERSION
    assert "schema_version" not in tables(engine)  # one record of the version: Alembic's
    with engine.connect() as conn:
        assert current_revision(conn) == REVISIONS[-1]
        row = conn.exec_driver_sql(f"SELECT run_seconds, deleted_at, interruptions, claimed_at, failures FROM jobs "
                                   f"WHERE id = '{JOB_ID}'").one()
        timeline = conn.exec_driver_sql("SELECT count(*) FROM attempts").scalar()
        tags = conn.exec_driver_sql("SELECT count(*) FROM job_tags").scalar()
    assert tuple(row) == (0, None, 0, None, 0)  # the job survives; the new columns take their defaults
    assert timeline == 0 and tags == 0
    assert schema_diff(engine) == []


def test_a_version_1_store_created_by_later_models_is_adopted(engine):
    """The old version 1 created the tables as the models of the day defined them, so a store can
    be at version 1 with later columns already there: the revisions add only what is missing."""
    with engine.begin() as conn:
        Base.metadata.create_all(conn, tables=[t for n, t in Base.metadata.tables.items() if n != "schema_version"])
        conn.exec_driver_sql("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
        conn.exec_driver_sql("INSERT INTO schema_version (version) VALUES (1)")
    assert upgrade(engine) == LATEST_VERSION
    assert schema_diff(engine) == []


def test_concurrent_starters_migrate_once(url):
    """The API's gunicorn workers, the worker and `teacher db upgrade` may start together: one
    migrates (under the lock), the others wait and find it done."""
    engines = [make_engine(url) for _ in range(4)]
    results: list[int] = []
    errors: list[BaseException] = []

    def start(e) -> None:
        try:
            results.append(upgrade(e))
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == [] and results == [LATEST_VERSION] * 4
        with engines[0].connect() as conn:
            assert current_version(conn) == LATEST_VERSION
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == [REVISIONS[-1]]
            if conn.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        for e in engines:
            e.dispose()


def test_a_store_migrated_by_newer_code_is_left_alone(engine, caplog):
    upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'f00dcafe0005'")
    with caplog.at_level(logging.WARNING, logger="common.store.db"):
        assert upgrade(engine) == LATEST_VERSION + 1  # no error: an older API keeps serving
    assert "at revision f00dcafe0005, which this code does not know" in caplog.text
    with engine.connect() as conn:
        assert current_revision(conn) == "f00dcafe0005"


def test_teacher_db_upgrade_runs_alembic_upgrade_head(tmp_path, monkeypatch):
    from common.apps.service_cli import db

    db_url = f"sqlite:///{tmp_path / 'state' / 'teacher.db'}"
    monkeypatch.setenv("TEACHER_DATABASE_URL", db_url)
    for _ in range(2):
        result = CliRunner().invoke(db, ["upgrade"], catch_exceptions=False)
        assert result.exit_code == 0 and result.output == f"job store at schema version {LATEST_VERSION} (latest {LATEST_VERSION})\n"
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            assert current_revision(conn) == REVISIONS[-1]
    finally:
        engine.dispose()


@pytest.mark.parametrize("status, attempts, interruptions, reason, failures", [
    ("interrupted", 3, 1, None, 2),        # every ended attempt that was not an interruption failed
    ("queued", 0, 0, None, 0),
    ("running", 3, 1, None, 1),            # the running attempt has not ended
    ("succeeded", 2, 1, None, 0),          # the last attempt finished the job
    ("failed", 2, 0, "no space left on device while writing x", 1),
    ("failed", 3, 0, "worker lost: gave up after 3 attempts whose worker ...", 3),  # failed at a claim
    ("failed", 2, 2, "interrupted too often: gave up after 2 interruptions", 0),
    ("cancelled", 0, 0, None, 0),          # never claimed: not negative
])
def test_0005_counts_the_failures_the_store_knew_of(engine, status, attempts, interruptions, reason, failures):
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0004")
        insert_job(conn)
        conn.exec_driver_sql("UPDATE jobs SET status = ?, attempts = ?, interruptions = ?, failure_reason = ?"
                             if conn.dialect.name == "sqlite" else
                             "UPDATE jobs SET status = %s, attempts = %s, interruptions = %s, failure_reason = %s",
                             (status, attempts, interruptions, reason))
    assert upgrade(engine) == LATEST_VERSION
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT failures FROM jobs").scalar() == failures
    assert schema_diff(engine) == []


def test_0005_downgrades(engine):
    upgrade(engine)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0004")
    assert "attempts" not in tables(engine)
    with engine.connect() as conn:
        assert "failures" not in {c["name"] for c in inspect(conn).get_columns("jobs")}


def test_0006_adds_job_tags_to_a_store_at_0005_keeping_its_jobs(engine):
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0005")
        insert_job(conn)
    assert upgrade(engine) == LATEST_VERSION
    with engine.begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO job_tags (job_id, tag, position) VALUES ('{JOB_ID}', 'exp:1', 0)")
        assert conn.exec_driver_sql("SELECT job_id, tag FROM job_tags").all() == [(JOB_ID, "exp:1")]
        indexes = {ix["name"] for ix in inspect(conn).get_indexes("job_tags")}
    assert "ix_job_tags_tag" in indexes
    assert schema_diff(engine) == []


def test_0007_adds_worker_devices_to_a_store_at_0006_keeping_its_beats(engine):
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0006")
        conn.exec_driver_sql("INSERT INTO worker_beats (name, queues, seen_at) VALUES ('h:1', 'default', '2025-01-01')")
    assert upgrade(engine) == LATEST_VERSION
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT name, devices FROM worker_beats").all() == [("h:1", None)]
    assert schema_diff(engine) == []
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0006")
        assert "devices" not in {c["name"] for c in inspect(conn).get_columns("worker_beats")}


def test_0008_adds_ui_sessions_whose_rows_go_with_their_token(engine):
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0007")
        insert_job(conn)
        conn.exec_driver_sql("INSERT INTO tokens (id, user_id, token_hash, created_at, revoked) "
                             "VALUES (1, 1, 'h', '2025-01-01', false)")
    assert upgrade(engine) == LATEST_VERSION
    assert schema_diff(engine) == []
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO ui_sessions (id, token_id, created_at, expires_at, last_seen_at) "
                             "VALUES ('s', 1, '2025-01-01', '2025-01-02', '2025-01-01')")
        conn.exec_driver_sql("DELETE FROM tokens WHERE id = 1")  # ON DELETE CASCADE
        assert conn.exec_driver_sql("SELECT count(*) FROM ui_sessions").scalar() == 0
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0007")
    assert "ui_sessions" not in tables(engine)
