"""The baseline of the status-poll benchmarks (bench/polls.py): a minimal Flask app doing only what
any endpoint answering ``GET /api/v1/jobs/{id}`` (and ``GET /api/v1/jobs``) must do.

It hashes the bearer token, looks the hash up joined with its user (one query, in autocommit: no
BEGIN), reads the job row(s) joined with the owner's name (one query) and their attempts (one
query, for the timeline), and returns the same JSON
as the service (tests/unit/api/test_minimal_app.py compares the two), built by hand instead of by
marshmallow, and encoded as the service encodes (orjson). No ORM, no schemas, no rate limits, no per-request session. It reads the service's
store (the same SQLite file or PostgreSQL database) and runs under the same gunicorn settings, so
the ratio of the service's req/s to this app's is what the service's own layers cost.

    gunicorn -c python:common.apps.gunicorn_conf -w 2 -k gthread --threads 8 "bench.minimal_app:create_app()"

The store is ``TEACHER_DATABASE_URL`` (or the ``database_url`` argument).
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from typing import Any

from flask import Flask, request
from sqlalchemy import Engine, bindparam, create_engine, event, text
from sqlalchemy.engine import make_url

from api.json_provider import OrjsonProvider

# Every column the service's JobSchema dumps from (plus the owner's name).
_JOB_COLUMNS = ("j.pk, j.id, j.name, u.name AS owner, j.status, j.queue, j.priority, j.attempts, j.max_attempts, "
                "j.interruptions, j.failures, j.run_seconds, j.cancel_requested, j.after_id, j.init_from, j.created_at, "
                "j.updated_at, j.started_at, j.heartbeat_at, j.finished_at, j.exit_code, j.failure_reason, "
                "j.progress, j.result, j.config")
_AUTH = text("SELECT u.id, u.is_admin FROM tokens t JOIN users u ON u.id = t.user_id "
             "WHERE t.token_hash = :h AND NOT t.revoked")
_JOB = text(f"SELECT {_JOB_COLUMNS} FROM jobs j JOIN users u ON u.id = j.user_id "
            "WHERE j.id = :id AND j.deleted_at IS NULL AND (j.user_id = :uid OR :admin)")
_PAGE = text(f"SELECT {_JOB_COLUMNS} FROM jobs j JOIN users u ON u.id = j.user_id "
             "WHERE j.deleted_at IS NULL AND (j.user_id = :uid OR :admin) ORDER BY j.pk DESC LIMIT :n")
_ATTEMPTS = ("SELECT job_id, number, worker, started_at, ended_at, cause, stop, exit_code, reason, resumed_from, "
             "lost_s FROM attempts WHERE job_id IN :ids ORDER BY job_id, number")
_ATTEMPTS_OF = text(_ATTEMPTS).bindparams(bindparam("ids", expanding=True))
_LINKS = (("self", ""), ("cancel", "/cancel"), ("logs", "/logs"), ("metrics", "/metrics"),
          ("checkpoints", "/checkpoints"), ("report", "/report"), ("plots", "/plots"), ("export", "/export"))
_ENDED = {"succeeded": "succeeded", "failed": "failed"}


def make_engine(url: str) -> Engine:
    """Autocommit reads (each SELECT its own implicit transaction), WAL and a busy timeout on SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = str(parsed.set(drivername="postgresql+psycopg"))
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, isolation_level="AUTOCOMMIT")
    engine = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA busy_timeout=30000")

    return engine


def _when(value: Any) -> str | None:
    """A stored UTC timestamp as the service writes it (ISO 8601 with +00:00)."""
    if value is None:
        return None
    if isinstance(value, str):  # SQLite: naive UTC text
        value = dt.datetime.fromisoformat(value)
    value = value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
    return value.isoformat()


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value  # SQLite: text; PostgreSQL: parsed


def attempt_json(row: Any) -> dict[str, Any]:
    return {"number": row.number, "worker": row.worker, "started_at": _when(row.started_at),
            "ended_at": _when(row.ended_at), "cause": row.cause, "stop": row.stop, "exit_code": row.exit_code,
            "reason": row.reason, "resumed_from": _json(row.resumed_from), "lost_s": row.lost_s}


def attempts_of(conn: Any, job_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The jobs' attempts (their timelines), oldest first: one query for any number of jobs."""
    timelines: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id in job_ids}
    if job_ids:
        for row in conn.execute(_ATTEMPTS_OF, {"ids": job_ids}):
            timelines[row.job_id].append(attempt_json(row))
    return timelines


def job_json(row: Any, timeline: list[dict[str, Any]]) -> dict[str, Any]:
    progress = _json(row.progress)
    if isinstance(progress, dict) and progress.get("status") == "running" and row.status != "running":
        progress = {**progress, "status": _ENDED.get(row.status, "stopped")}
    url = f"/api/v1/jobs/{row.id}"
    return {
        "id": row.id, "name": row.name, "user": row.owner, "status": row.status, "queue": row.queue,
        "priority": row.priority, "attempts": row.attempts, "max_attempts": row.max_attempts,
        "interruptions": row.interruptions or 0, "failures": row.failures or 0,
        "resumed_from": timeline[-1]["resumed_from"] if timeline else None, "timeline": timeline,
        "run_seconds": round(row.run_seconds or 0.0, 3),
        "cancel_requested": bool(row.cancel_requested), "after": row.after_id, "init_from": _json(row.init_from),
        "created_at": _when(row.created_at), "updated_at": _when(row.updated_at),
        "started_at": _when(row.started_at), "heartbeat_at": _when(row.heartbeat_at),
        "finished_at": _when(row.finished_at), "exit_code": row.exit_code, "failure_reason": row.failure_reason,
        "progress": progress, "integrity": (progress or {}).get("integrity"), "result": _json(row.result),
        "config": _json(row.config), "links": {name: url + suffix for name, suffix in _LINKS},
    }


def create_app(database_url: str | None = None) -> Flask:
    engine = make_engine(database_url or os.environ["TEACHER_DATABASE_URL"])
    app = Flask(__name__)
    # The service's JSON encoder (orjson): the limit encodes as fast as the service can, so the
    # ratio does not credit the service for its encoder.
    app.json = OrjsonProvider(app)

    def caller(conn: Any) -> Any:
        _, _, token = request.headers.get("Authorization", "").partition(" ")
        return conn.execute(_AUTH, {"h": hashlib.sha256(token.strip().encode()).hexdigest()}).first()

    @app.get("/api/v1/jobs/<job_id>")
    def job(job_id: str) -> Any:
        with engine.connect() as conn:
            user = caller(conn)
            if user is None:
                return {"code": 401, "message": "invalid or revoked token"}, 401
            row = conn.execute(_JOB, {"id": job_id, "uid": user.id, "admin": bool(user.is_admin)}).first()
            if row is None:
                return {"code": 404, "message": "no such job"}, 404
            timeline = attempts_of(conn, [row.id])[row.id]
        return job_json(row, timeline)

    @app.get("/api/v1/jobs")
    def jobs() -> Any:
        limit = 50
        with engine.connect() as conn:
            user = caller(conn)
            if user is None:
                return {"code": 401, "message": "invalid or revoked token"}, 401
            rows = conn.execute(_PAGE, {"uid": user.id, "admin": bool(user.is_admin), "n": limit + 1}).all()
            timelines = attempts_of(conn, [r.id for r in rows[:limit]])
        next_cursor = None
        if len(rows) > limit:  # the service's cursor: base64url("pk:<pk>") of the page's last job
            next_cursor = base64.urlsafe_b64encode(f"pk:{rows[limit - 1].pk}".encode()).decode().rstrip("=")
        return {"jobs": [job_json(r, timelines[r.id]) for r in rows[:limit]], "next_cursor": next_cursor}

    return app
