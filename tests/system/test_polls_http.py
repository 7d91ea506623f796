"""Status polls over real HTTP, against gunicorn with `teacher serve`'s settings (2 workers x 8
threads): a poll answers while another process holds the SQLite write lock, and a revoked token is
refused on its next request, on a kept-alive connection as on new ones."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterator

import pytest
import requests

from bench._load import Seeded, Server, seed, start_gunicorn
from bench.polls import job_config, server_env

pytestmark = pytest.mark.slow


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Seeded, Server]]:
    seeded = seed(f"sqlite:///{tmp_path / 'teacher.db'}", 3, job_config())
    env = server_env(tmp_path, seeded.database_url)
    env.pop("TEACHER_RATE_LIMIT")  # the default limits: their token-id lookup sees the revocation too
    env["TEACHER_REDIS_URL"] = "redis://127.0.0.1:9/0"  # nothing listens there: the limiter fails open
    headers = {"Authorization": f"Bearer {seeded.token}"}
    server = start_gunicorn("service", "api:create_app()", env, tmp_path / "gunicorn.log",
                            f"/api/v1/jobs/{seeded.job_id}", headers)
    yield seeded, server
    server.stop()


def test_a_poll_answers_while_another_process_holds_the_write_lock(served, tmp_path: Path):
    seeded, server = served
    url = f"{server.url}/api/v1/jobs/{seeded.job_id}"
    headers = {"Authorization": f"Bearer {seeded.token}"}
    writer = sqlite3.connect(tmp_path / "teacher.db", isolation_level=None, timeout=0)
    writer.execute("BEGIN IMMEDIATE")  # as a worker's heartbeat transaction holds it
    writer.execute("UPDATE jobs SET name = 'pending' WHERE id = ?", (seeded.job_id,))
    try:
        # timeout 10 s: a poll waiting for the lock would wait out the 30 s busy timeout
        answers = [requests.get(url, headers=headers, timeout=10) for _ in range(4)]
        listing = requests.get(f"{server.url}/api/v1/jobs?limit=50", headers=headers, timeout=10)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert [(r.status_code, r.json()["name"]) for r in answers] == [(200, "polled")] * 4
    assert listing.status_code == 200 and len(listing.json()["jobs"]) == 3


def test_a_revoked_token_is_refused_on_its_next_request(served):
    from common.auth import revoke_tokens
    from common.store import make_engine, make_sessionmaker, transaction

    seeded, server = served
    url = f"{server.url}/api/v1/jobs/{seeded.job_id}"
    headers = {"Authorization": f"Bearer {seeded.token}"}
    kept_alive = requests.Session()
    assert [kept_alive.get(url, headers=headers, timeout=10).status_code for _ in range(20)] == [200] * 20
    engine = make_engine(seeded.database_url)
    with transaction(make_sessionmaker(engine)) as s:
        revoke_tokens(s, token=seeded.token)
    engine.dispose()
    # the very next request on the same connection (the same gunicorn worker), then new
    # connections (either worker)
    assert [kept_alive.get(url, headers=headers, timeout=10).status_code for _ in range(5)] == [401] * 5
    fresh = [requests.get(url, headers={**headers, "Connection": "close"}, timeout=10) for _ in range(10)]
    assert [r.status_code for r in fresh] == [401] * 10 and "revoked" in fresh[0].json()["message"]
