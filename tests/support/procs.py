"""Processes in tests: free ports, polls with a deadline, stopping a process group."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from contextlib import closing, suppress
from typing import Any, Callable

def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the thing polled may not be up yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")


def stop_process(proc: subprocess.Popen[Any], *, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Signal the process group we started (start_new_session=True), then SIGKILL the group even
    when its leader has exited: a test must not leave the leader's children behind."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)

