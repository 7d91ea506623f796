"""Reads never take the SQLite write lock, writes still do, and an authenticated status poll costs
two SQL statements (common/store/db.py, common/auth.py, api/extensions.py Services.reads)."""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import event, select

from common.store import Job, User, make_engine, make_sessionmaker, transaction, upgrade
from common.store.db import ReadOnlySession
from tests.support.api import CFG, FakeBroker, mint
from tests.support.procs import wait_until


@pytest.fixture
def statements(quiet_app) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    """The SQL statements the app's engine sends, in order: BEGINs in full, others by verb."""
    sent: list[str] = []
    engine = quiet_app.extensions["teacher"].engine

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement.strip() if statement.startswith("BEGIN") else statement.split()[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    yield sent
    event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
def quiet_app(settings):  # type: ignore[no-untyped-def]
    """The app without per-token rate limits (their token-id lookup is a query of its own)."""
    import dataclasses

    from api import create_app

    app = create_app({"TEACHER_SETTINGS": dataclasses.replace(settings, rate_limit=None, submit_rate_limit=None),
                      "TEACHER_ENQUEUE": FakeBroker(), "TESTING": True})
    yield app
    app.extensions["teacher"].engine.dispose()


def _db_file(app) -> Path:  # type: ignore[no-untyped-def]
    return Path(app.extensions["teacher"].engine.url.database)


def test_a_status_poll_answers_while_another_connection_holds_the_write_lock(quiet_app):
    client = quiet_app.test_client()
    alice = mint(quiet_app, "alice")
    job_id = client.post("/api/v1/jobs", json=CFG, headers=alice).json["id"]
    writer = sqlite3.connect(_db_file(quiet_app), isolation_level=None, timeout=0)
    writer.execute("BEGIN IMMEDIATE")  # the write lock, held (as a worker's heartbeat transaction does)
    writer.execute("UPDATE jobs SET name = 'renamed' WHERE id = ?", (job_id,))
    answers: list[Any] = []
    try:
        # In a thread: were the read waiting for the lock, this test would fail at the deadline
        # instead of hanging for the 30 s busy timeout.
        poll = threading.Thread(target=lambda: answers.append(client.get(f"/api/v1/jobs/{job_id}", headers=alice)))
        poll.start()
        wait_until(lambda: not poll.is_alive(), 20, "the status poll to answer while the write lock is held")
        # ...and the job list too (its own session)
        listing = client.get("/api/v1/jobs", headers=alice)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert answers[0].status_code == 200 and answers[0].json["name"] == "tiny"  # the committed row, not the pending write
    assert listing.status_code == 200 and [j["id"] for j in listing.json["jobs"]] == [job_id]


def test_a_write_needs_the_write_lock_a_read_does_not(tmp_path: Path):
    """transaction() begins with BEGIN IMMEDIATE (it queues behind a writer, here refused at once:
    no busy timeout); a plain session begins deferred and reads past the writer."""
    from sqlalchemy.exc import OperationalError

    engine = make_engine(f"sqlite:///{tmp_path / 'teacher.db'}")
    upgrade(engine)
    engine.dispose()
    event.listen(engine, "connect", lambda dbapi_conn, _rec: dbapi_conn.execute("PRAGMA busy_timeout=0"))
    factory = make_sessionmaker(engine)
    with transaction(factory) as s:
        s.add(User(name="alice"))
    begins: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda _c, _cur, st, *_: begins.append(st) if st.startswith("BEGIN") else None)
    writer = sqlite3.connect(tmp_path / "teacher.db", isolation_level=None, timeout=0)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE users SET name = 'pending'")
    try:
        with factory() as s:  # a read while the lock is held: the committed row
            assert s.scalar(select(User.name)) == "alice"
        with pytest.raises(OperationalError, match="locked"), transaction(factory) as s:
            s.scalar(select(User.name))
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    with transaction(factory) as s:  # the lock is free: the write goes through
        s.scalar(select(User).where(User.name == "alice")).is_admin = True
    assert begins == ["BEGIN", "BEGIN IMMEDIATE", "BEGIN IMMEDIATE"]
    with factory() as s:
        assert s.scalar(select(User.is_admin)) is True
    engine.dispose()


def test_a_read_session_refuses_to_write(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'teacher.db'}")
    upgrade(engine)
    factory = make_sessionmaker(engine)
    with factory() as s:
        s.add(User(name="mallory"))
        with pytest.raises(ReadOnlySession):
            s.flush()
    with factory() as s:
        assert s.scalar(select(User)) is None
    engine.dispose()


def test_an_authenticated_status_poll_is_two_queries_and_takes_no_write_lock(quiet_app, statements):
    client = quiet_app.test_client()
    alice = mint(quiet_app, "alice")
    job_id = client.post("/api/v1/jobs", json=CFG, headers=alice).json["id"]
    statements.clear()
    r = client.get(f"/api/v1/jobs/{job_id}", headers=alice)
    assert r.status_code == 200 and r.json["user"] == "alice"
    # the token joined with its user; the job joined with its owner and attempts
    assert [s for s in statements if not s.startswith("BEGIN")] == ["SELECT", "SELECT"]
    assert "BEGIN IMMEDIATE" not in statements and statements.count("BEGIN") == 2


def test_an_admin_reading_another_users_running_job_is_two_queries(quiet_app, statements):
    from common.store import lifecycle
    from common.store.jobs import lock_job
    from common.store.models import AttemptCause

    client = quiet_app.test_client()
    job_id = client.post("/api/v1/jobs", json=CFG, headers=mint(quiet_app, "alice")).json["id"]
    with transaction(quiet_app.extensions["teacher"].sessions) as s:  # two attempts: a timeline to dump
        for _ in range(2):
            job = lock_job(s, job_id)
            lifecycle.claim(job, "host:1")
            s.flush()
            if job.attempts == 1:
                lifecycle.interrupt(job, "worker shutdown", cause=AttemptCause.preempted)
                s.flush()
    root = mint(quiet_app, "root", admin=True)
    statements.clear()
    r = client.get(f"/api/v1/jobs/{job_id}", headers=root)
    assert r.status_code == 200 and r.json["user"] == "alice" and r.json["status"] == "running"
    assert r.json["attempts"] == 2  # (their rows: joined into the job's SELECT, not a selectin query of their own)
    assert [s for s in statements if not s.startswith("BEGIN")] == ["SELECT", "SELECT"]


@pytest.mark.parametrize("caller", ["alice", "root"])
def test_a_page_of_jobs_is_four_queries_whatever_its_size_and_takes_no_write_lock(quiet_app, statements, caller):
    """The token with its user; the page with each job's owner joined in (common/store/jobs.py
    list_jobs); the page's attempts; its tags. An admin's page of several users' jobs too."""
    from common.store import lifecycle
    from common.store.jobs import lock_job

    client = quiet_app.test_client()
    owners = {"alice": mint(quiet_app, "alice"), "bob": mint(quiet_app, "bob")}
    ids = [client.post("/api/v1/jobs", json={**CFG, "tags": [f"t{i}", "x"]}, headers=owners[name]).json["id"]
           for i, name in enumerate(["alice", "bob", "alice", "bob", "alice"])]
    with transaction(quiet_app.extensions["teacher"].sessions) as s:  # attempts: a timeline to dump for each
        for job_id in ids:
            lifecycle.claim(lock_job(s, job_id), "host:1")
    headers = owners["alice"] if caller == "alice" else mint(quiet_app, "root", admin=True)
    statements.clear()
    r = client.get("/api/v1/jobs", headers=headers)
    expected_owners = ["alice", "alice", "alice"] if caller == "alice" else ["alice", "bob", "alice", "bob", "alice"]
    assert r.status_code == 200 and [j["user"] for j in r.json["jobs"]] == expected_owners[::-1]
    assert all(len(j["timeline"]) == 1 and j["tags"][1] == "x" for j in r.json["jobs"])
    assert [s for s in statements if not s.startswith("BEGIN")] == ["SELECT"] * 4
    assert "BEGIN IMMEDIATE" not in statements and statements.count("BEGIN") == 2


def test_a_revoked_token_is_refused_on_its_next_request(quiet_app):
    """Nothing about a token is kept between requests: the request's read session is closed at the
    end of each request, and the token is looked up again on the next one."""
    from common.auth import revoke_tokens

    client = quiet_app.test_client()
    alice = mint(quiet_app, "alice")
    job_id = client.post("/api/v1/jobs", json=CFG, headers=alice).json["id"]
    assert [client.get(f"/api/v1/jobs/{job_id}", headers=alice).status_code for _ in range(3)] == [200] * 3
    with transaction(quiet_app.extensions["teacher"].sessions) as s:
        revoke_tokens(s, token=alice["Authorization"].split()[1])
    r = client.get(f"/api/v1/jobs/{job_id}", headers=alice)
    assert r.status_code == 401 and "revoked" in r.json["message"]
    assert client.get("/api/v1/jobs", headers=alice).status_code == 401


def test_other_users_and_deleted_jobs_stay_invisible_to_the_prebuilt_lookup(quiet_app):
    from common.store import utcnow

    client = quiet_app.test_client()
    alice, bob = mint(quiet_app, "alice"), mint(quiet_app, "bob")
    job_id = client.post("/api/v1/jobs", json=CFG, headers=alice).json["id"]
    assert client.get(f"/api/v1/jobs/{job_id}", headers=bob).status_code == 404
    with transaction(quiet_app.extensions["teacher"].sessions) as s:
        s.scalar(select(Job).where(Job.id == job_id)).deleted_at = utcnow()
    assert client.get(f"/api/v1/jobs/{job_id}", headers=alice).status_code == 404
    assert client.get(f"/api/v1/jobs/{job_id}", headers=mint(quiet_app, "root", admin=True)).status_code == 404


def test_a_promotion_to_admin_takes_effect_on_the_next_request(quiet_app):
    """The caller is read afresh on each request (one Core query, common.auth.authenticate), not
    kept: a user made admin sees another user's job on the very next poll, and the caller is a
    plain value, not a row of the request's session that a write could go through."""
    from common.auth import Caller, authenticate

    client = quiet_app.test_client()
    alice, bob = mint(quiet_app, "alice"), mint(quiet_app, "bob")
    job_id = client.post("/api/v1/jobs", json=CFG, headers=alice).json["id"]
    assert client.get(f"/api/v1/jobs/{job_id}", headers=bob).status_code == 404
    with transaction(quiet_app.extensions["teacher"].sessions) as s:
        s.scalar(select(User).where(User.name == "bob")).is_admin = True
    assert client.get(f"/api/v1/jobs/{job_id}", headers=bob).status_code == 200
    with quiet_app.extensions["teacher"].sessions() as s:
        caller = authenticate(s, bob["Authorization"])
        assert isinstance(caller, Caller) and caller.is_admin is True and caller.name == "bob"
        assert not list(s.identity_map.values())  # no ORM row was loaded


def test_links_follow_the_mount_point_of_each_request(quiet_app):
    """url_for runs once per mount point (SCRIPT_NAME) and the id is substituted after
    (api/schemas.py _link_templates): a job's links are still the URLs Flask builds for the
    request's own mount point, whichever point was asked for first."""
    from flask import url_for

    client = quiet_app.test_client()
    alice = mint(quiet_app, "alice")
    job_id = client.post("/api/v1/jobs", json=CFG, headers=alice).json["id"]
    for root in ("", "/teacher", "", "/other/mount", "/teacher"):
        r = client.get(f"/api/v1/jobs/{job_id}", headers=alice, base_url=f"http://localhost{root}")
        assert r.status_code == 200, r.json
        with quiet_app.test_request_context(base_url=f"http://localhost{root}"):
            assert r.json["links"]["self"] == url_for("jobs.job", job_id=job_id)
            assert r.json["links"]["cancel"] == url_for("jobs.cancel", job_id=job_id)
        assert r.json["links"]["self"] == f"{root}/api/v1/jobs/{job_id}"


def test_a_poll_reads_the_job_its_attempts_and_tags_not_its_owners_tokens(quiet_app):
    """One SELECT for the job, with its owner, attempts and tags, and none of the owner's token
    rows: a user with many tokens (one per CI runner, say) pays nothing for them on a poll, and
    the poll never loads token hashes it does not need."""
    from common.store.models import JobAttempt

    client = quiet_app.test_client()
    alice = mint(quiet_app, "alice")
    for _ in range(5):
        mint(quiet_app, "alice")
    job_id = client.post("/api/v1/jobs", json={**CFG, "tags": ["a", "b", "c"]}, headers=alice).json["id"]
    with transaction(quiet_app.extensions["teacher"].sessions) as s:
        for n in (1, 2, 3, 4):
            s.add(JobAttempt(job_id=job_id, number=n))
        s.scalar(select(Job).where(Job.id == job_id)).attempts = 4
    engine = quiet_app.extensions["teacher"].engine
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        r = client.get(f"/api/v1/jobs/{job_id}", headers=alice)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert r.status_code == 200 and r.json["tags"] == ["a", "b", "c"] and r.json["attempts"] == 4
    selects = [stmt for stmt in sent if stmt.lstrip().upper().startswith("SELECT")]
    job_select = [stmt for stmt in selects if "FROM jobs" in stmt]
    assert len(selects) == 2 and len(job_select) == 1, selects
    assert "tokens" not in job_select[0], job_select[0]
    with engine.connect() as conn:  # the rows that one SELECT returns: attempts x tags, no tokens
        from api.lookup import _VISIBLE_BY_ID

        user_id = conn.execute(select(User.id).where(User.name == "alice")).scalar_one()
        returned = conn.execute(_VISIBLE_BY_ID, {"job_id": job_id, "user_id": user_id, "admin": False}).all()
    assert len(returned) == 4 * 3
