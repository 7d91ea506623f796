"""The endpoints file of `teacher serve` (common/serve_state.py)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

from common import serve_state


def test_written_owner_only_read_back_while_its_serve_lives(tmp_path):
    state = serve_state.ServeState(api_url="http://127.0.0.1:8000", redis_url="redis://:pw@127.0.0.1:1/0",
                                   database_url="sqlite:////x.db", pid=os.getpid(), pids={"api": 1})
    path = serve_state.write(state, tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the Redis URL carries a password
    assert serve_state.read(tmp_path) == state
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_file_left_by_a_dead_serve_is_ignored_and_only_its_owner_removes_it(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # that process has exited
    serve_state.write(serve_state.ServeState("http://h", "redis://r", "sqlite://", pid=pid), tmp_path)
    assert serve_state.read(tmp_path) is None
    assert serve_state.read(tmp_path, require_alive=False).pid == pid
    serve_state.remove(tmp_path, pid=os.getpid())  # not ours: kept
    assert serve_state.path(tmp_path).exists()
    serve_state.remove(tmp_path, pid=pid)
    assert not serve_state.path(tmp_path).exists()
