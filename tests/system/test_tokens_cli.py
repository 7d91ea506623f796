"""`teacher tokens create/list/revoke` against a real job store, checked through the API."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.settings import Settings

from tests.support.api import FakeBroker
from tests.support.procs import free_port
from tests.support.training import ROOT

TEACHER = [sys.executable, "-m", "common.apps.cli"]


@pytest.fixture
def store_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    env["TEACHER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'state' / 'teacher.db'}"
    return env


def teacher(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TEACHER, "tokens", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_revoked_tokens_get_401_from_the_next_request(tmp_path: Path, store_env: dict[str, str]):
    alice1 = teacher(store_env, "create", "--user", "alice").stdout.strip()
    alice2 = teacher(store_env, "create", "--user", "alice").stdout.strip()
    bob = teacher(store_env, "create", "--user", "bob").stdout.strip()
    assert len({alice1, alice2, bob}) == 3 and all(t.startswith("tch_") for t in (alice1, alice2, bob))

    from api import create_app

    settings = Settings(database_url=store_env["TEACHER_DATABASE_URL"],
                        redis_url=f"redis://127.0.0.1:{free_port()}/0", jobs_root=tmp_path / "jobs",
                        data_root=tmp_path / "data", torch_home=tmp_path / "torch")
    app = create_app({"TEACHER_SETTINGS": settings, "TEACHER_ENQUEUE": FakeBroker(), "TESTING": True})
    client = app.test_client()

    def status(token: str) -> int:
        return client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code

    assert [status(t) for t in (alice1, alice2, bob)] == [200, 200, 200]

    listing = teacher(store_env, "list").stdout.splitlines()
    assert listing[0].split("\t")[:2] == ["id", "user"]
    rows = [line.split("\t") for line in listing[1:]]
    assert [(r[0], r[1], r[-1]) for r in rows] == [("1", "alice", "live"), ("2", "alice", "live"), ("3", "bob", "live")]
    assert not any(t in "\n".join(listing) for t in (alice1, alice2, bob))  # secrets are never shown

    # by id: only that token dies
    r = teacher(store_env, "revoke", "1")
    assert r.returncode == 0 and "revoked 1 token(s): 1" in r.stdout
    assert [status(t) for t in (alice1, alice2, bob)] == [401, 200, 200]
    body = client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {alice1}"}).get_json()
    assert "revoked" in body["message"]

    # by value, then a user's remaining tokens
    r = teacher(store_env, "revoke", "--token", bob)
    assert r.returncode == 0 and status(bob) == 401
    r = teacher(store_env, "revoke", "--user", "alice")
    assert r.returncode == 0 and "revoked 1 token(s): 2" in r.stdout and status(alice2) == 401
    assert [line.split("\t")[-1] for line in teacher(store_env, "list").stdout.splitlines()[1:]] == ["revoked"] * 3
    assert teacher(store_env, "list", "--user", "bob").stdout.count("\n") == 2

    # nothing left to revoke, or nothing named: clear errors; both are bad input (exit 2)
    r = teacher(store_env, "revoke", "--user", "alice")
    assert r.returncode == 2 and "no live token matches" in r.stderr
    r = teacher(store_env, "revoke")
    assert r.returncode == 2 and "exactly one of" in r.stderr
    r = teacher(store_env, "revoke", "3", "--user", "bob")
    assert r.returncode == 2 and "exactly one of" in r.stderr
    app.extensions["teacher"].engine.dispose()
