"""Profile the API's read path in-process: the WSGI app called directly (no HTTP, no gunicorn),
on the store bench/polls.py measures (10,000 jobs of one user), under cProfile, with the SQL
statements each request sends counted (SQLAlchemy's ``before_cursor_execute``).

    python -m bench.profile_reads [--path list|job|/api/v1/...] [--requests 200] [--top 30]
                                  [--store sqlite|postgresql] [--sort tottime|cumulative]

Prints the CPU per request (process time, without the profiler, then with it), the statements
of one request, and the profile's top functions. What docs/performance.md's "What bounds it" says
comes from this.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._load import create_pg_database, drop_pg_database, seed
from bench.polls import JOBS, PG_SERVER, job_config, server_env


def make_app(base: Path, database_url: str) -> Any:
    os.environ.update(server_env(base, database_url))
    from api import create_app

    return create_app()


def call(app: Any, path: str, token: str) -> bytes:
    """One request through the WSGI interface, as gunicorn makes it (the body consumed)."""
    from werkzeug.test import EnvironBuilder

    environ = EnvironBuilder(path=path, headers={"Authorization": f"Bearer {token}"}).get_environ()
    status: list[str] = []
    body = b"".join(app(environ, lambda s, _h, _e=None: status.append(s)))
    if not status or not status[0].startswith("200"):
        raise AssertionError(f"{path}: {status} {body[:300]!r}")
    return body


def statements_of(app: Any, path: str, token: str) -> list[str]:
    from sqlalchemy import event

    sent: list[str] = []
    engine = app.extensions["teacher"].engine

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(" ".join(statement.split())[:160])

    event.listen(engine, "before_cursor_execute", record)
    try:
        call(app, path, token)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return sent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--path", default="list", help="list (a page of 50), job (the poll) or a path")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--sort", default="tottime")
    ap.add_argument("--store", default="sqlite", choices=["sqlite", "postgresql"],
                    help="a SQLite file, or a fresh database on 127.0.0.1:5432 (dropped after)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="teacher-profile-") as tmp:
        base = Path(tmp)
        url = create_pg_database(PG_SERVER) if args.store == "postgresql" else f"sqlite:///{base / 'teacher.db'}"
        try:
            prof, plain_ms, profiled_ms, path, sent = _profile(base, url, args)
        finally:
            if args.store == "postgresql":
                drop_pg_database(url)
    print(f"{path}: {plain_ms:.2f} ms CPU/request ({profiled_ms:.2f} under cProfile), {len(sent)} statements:")
    for statement in sent:
        print("   ", statement)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats(args.sort).print_stats(args.top)
    print(out.getvalue())
    return 0


def _profile(base: Path, url: str, args: argparse.Namespace) -> tuple[cProfile.Profile, float, float, str, list[str]]:
    """Seed, warm up, count one request's statements, then time and profile ``args.requests``."""
    seeded = seed(url, JOBS, job_config())
    app = make_app(base, url)
    path = {"list": "/api/v1/jobs?limit=50", "job": f"/api/v1/jobs/{seeded.job_id}"}.get(args.path, args.path)
    for _ in range(20):  # warm-up: imports, statement caches, the connection pool
        call(app, path, seeded.token)
    sent = statements_of(app, path, seeded.token)
    t0 = time.process_time()
    for _ in range(args.requests):
        call(app, path, seeded.token)
    plain_ms = (time.process_time() - t0) * 1000 / args.requests
    prof = cProfile.Profile()
    t0 = time.process_time()
    prof.enable()
    for _ in range(args.requests):
        call(app, path, seeded.token)
    prof.disable()
    profiled_ms = (time.process_time() - t0) * 1000 / args.requests
    app.extensions["teacher"].engine.dispose()
    return prof, plain_ms, profiled_ms, path, sent


if __name__ == "__main__":
    sys.exit(main())
