"""`teacher serve` as a process: its endpoints file, its private Redis, one stack per state root."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from common import serve_state

from tests.support.procs import free_port
from tests.support.training import ROOT

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_serve_records_its_endpoints_hides_the_redis_password_and_refuses_a_second_stack(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    env.update(TEACHER_STATE_ROOT=str(tmp_path / "state"), TEACHER_JOBS_ROOT=str(tmp_path / "jobs"),
               TEACHER_DATA_ROOT=str(tmp_path / "data"), TEACHER_DATABASE_URL=f"sqlite:///{tmp_path / 'state' / 't.db'}")
    port = free_port()
    cmd = [sys.executable, "-m", "common.apps.cli", "serve", "--port", str(port)]
    stack = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    pids: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 120
        while (state := serve_state.read(tmp_path / "state")) is None:
            assert stack.poll() is None, stack.stdout.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        pids = state.pids
        assert state.api_url == f"http://127.0.0.1:{port}" and state.pid == stack.pid
        assert set(pids) == {"redis", "worker", "reconciler", "api"}
        password = urlsplit(state.redis_url).password
        assert password and len(password) >= 24
        cmdline = Path(f"/proc/{pids['redis']}/cmdline").read_bytes()
        assert password.encode() not in cmdline  # other local users can read process arguments
        client = redis.Redis.from_url(state.redis_url)
        assert client.ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=urlsplit(state.redis_url).port).ping()

        second = subprocess.run(cmd[:-1] + [str(free_port())], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 1 and "a local stack already runs" in second.stderr, second.stderr
        assert serve_state.read(tmp_path / "state").pid == stack.pid  # the first stack's file is untouched
    finally:
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGINT)  # Ctrl-C
        stack.wait(timeout=180)
    assert not serve_state.path(tmp_path / "state").exists()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [name for name, pid in pids.items() if _alive(pid)]
    logs = tmp_path / "state" / "logs"
    assert {"redis.log", "worker.log", "api.log", "reconciler.log"} <= {p.name for p in logs.iterdir()}
