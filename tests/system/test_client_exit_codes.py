"""The `teacher` HTTP client against a real API (gunicorn, SQLite): job-id prefixes, the exit-code
rule for what the server answers (2 bad input, 1 a refused or failed operation), and the URL
of the running local stack from its endpoints file. The offline cases are in
tests/system/test_cli_exit_codes.py."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.procs import free_port
from tests.support.stack import Stack
from tests.support.training import ROOT

pytestmark = pytest.mark.slow
TEACHER = [sys.executable, "-m", "common.apps.cli"]
PREFIX = "abcdef"


def insert_job(stack: Stack, user: str, job_id: str, status: str = "queued") -> str:
    """A job row with a chosen id (two ids sharing a prefix cannot be had through the API)."""
    from sqlalchemy import select

    from common.store import Job, User, transaction, utcnow
    from common.store.jobs import create_job
    from worker.store import sessions_for

    with transaction(sessions_for(stack.settings.database_url)) as s:
        owner = s.scalar(select(User).where(User.name == user))
        job = create_job(s, user=owner, config={"name": "x"}, name="x", queue="default", priority=0, max_attempts=3)
        job.id, job.status = job_id, status
        if status == "succeeded":
            job.finished_at = utcnow()
    return job_id


@pytest.fixture
def api(stack_factory, tmp_path: Path):  # type: ignore[no-untyped-def]
    stack = stack_factory()
    stack.start_api()
    alice = stack.token("alice")["Authorization"].split()[1]
    bob = stack.token("bob")["Authorization"].split()[1]
    ids = {
        "a1": insert_job(stack, "alice", PREFIX + "0" + uuid.uuid4().hex[7:]),
        "a2": insert_job(stack, "alice", PREFIX + "1" + uuid.uuid4().hex[7:]),
        "done": insert_job(stack, "alice", uuid.uuid4().hex, status="succeeded"),
        "bobs": insert_job(stack, "bob", uuid.uuid4().hex),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    env.update(TEACHER_URL=stack.api_url, TEACHER_TOKEN=alice, TEACHER_STATE_ROOT=str(tmp_path / "client-state"))
    return {"stack": stack, "env": env, "ids": ids, "bob": bob}


def teacher(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TEACHER, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_prefixes_and_server_answers_map_to_one_exit_code_rule(api, tmp_path):
    env, ids = api["env"], api["ids"]

    # the 12 characters the CLI prints are accepted (any unique prefix of 6+)
    r = teacher(env, "status", ids["a1"][:12])
    assert r.returncode == 0 and ids["a1"] in r.stdout, r.stderr
    r = teacher(env, "status", ids["done"][:6].upper())
    assert r.returncode == 0 and ids["done"] in r.stdout, r.stderr

    # an ambiguous prefix: a clear error listing the matches, exit 2, for every command
    for argv in (["status", PREFIX], ["logs", PREFIX], ["cancel", PREFIX], ["download", PREFIX, "--out", str(tmp_path)]):
        r = teacher(env, *argv)
        assert r.returncode == 2, (argv, r.returncode, r.stderr)
        assert "ambiguous" in r.stderr and ids["a1"] in r.stderr and ids["a2"] in r.stderr, (argv, r.stderr)
        assert r.stderr.count(ids["a1"]) == 1, r.stderr  # said once, not repeated per field

    unknown = uuid.uuid4().hex
    cases = [
        (["status", unknown], 2, "404"),                       # unknown job
        (["status", ids["bobs"]], 2, "404"),                   # another user's job: unknown to alice
        (["logs", unknown[:8]], 2, "404"),
        (["download", ids["done"], "--out", str(tmp_path)], 2, "checkpoint"),  # no such checkpoint
        (["submit", "demo", "--set", "optim.lr=-1"], 2, "optim.lr"),        # schema error from the server
        (["submit", "no_such_config"], 2, "no_such_config"),
        (["cancel", ids["done"]], 1, "409"),                   # valid request, refused in the job's state
    ]
    for argv, code, word in cases:
        r = teacher(env, *argv)
        assert r.returncode == code and word in r.stderr, (argv, r.returncode, r.stderr)
    r = teacher({**env, "TEACHER_TOKEN": "tch_bogus"}, "status")
    assert r.returncode == 2 and "401" in r.stderr, r.stderr
    r = teacher({**env, "TEACHER_TOKEN": api["bob"]}, "cancel", ids["a1"])
    assert r.returncode == 2 and "404" in r.stderr  # bob cannot touch alice's job


def test_client_finds_the_running_stack_from_its_endpoints_file(api, tmp_path):
    """No --url, no TEACHER_URL: the API URL that `teacher serve` recorded is used (while the
    serve process it names is alive; here the test process itself stands in for it)."""
    from common import serve_state

    env = {k: v for k, v in api["env"].items() if k != "TEACHER_URL"}
    root = Path(env["TEACHER_STATE_ROOT"])
    serve_state.write(serve_state.ServeState(api_url=api["stack"].api_url, redis_url="redis://127.0.0.1:1/0",
                                             database_url="sqlite://", pid=os.getpid()), root)
    r = teacher(env, "status")
    assert r.returncode == 0 and api["ids"]["a1"][:12] in r.stdout, r.stderr
    # --url still wins over the file
    dead = f"http://127.0.0.1:{free_port()}"
    r = teacher(env, "status", "--url", dead)
    assert r.returncode == 1 and f"cannot reach {dead}" in r.stderr, r.stderr


def test_default_url_falls_back_when_no_stack_is_running(tmp_path, monkeypatch):
    from common import serve_state
    from common.apps.service_cli import DEFAULT_URL, default_url

    monkeypatch.setenv("TEACHER_STATE_ROOT", str(tmp_path))
    assert default_url() == DEFAULT_URL  # no file
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    serve_state.write(serve_state.ServeState(api_url="http://127.0.0.1:1", redis_url="", database_url="",
                                             pid=dead.pid), tmp_path)
    assert default_url() == DEFAULT_URL  # a file left by a serve that is gone
    serve_state.write(serve_state.ServeState(api_url="http://127.0.0.1:1", redis_url="", database_url="",
                                             pid=os.getpid()), tmp_path)
    assert default_url() == "http://127.0.0.1:1"
