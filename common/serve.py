"""``teacher serve`` (what ``make run`` runs): the whole service on this machine.

A private Redis on a free port (unless ``TEACHER_REDIS_URL`` is set), the API under gunicorn,
one ``--pool solo`` worker and the reconciler, each its own process. Their logs go to files
under ``<state root>/logs/`` (printed at start), and the endpoints are written to
``<state root>/serve.json`` (common/serve_state.py) so that ``teacher doctor`` and the CLI client
find this stack. Ctrl-C stops everything in order; a running job is interrupted with its
checkpoint kept and resumes at the next start.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--queues", default=None, help="Queues the worker consumes (default: TEACHER_QUEUES).")
def serve(host: str, port: int, queues: str | None) -> None:
    """Run the whole service on this machine: a private Redis (unless TEACHER_REDIS_URL is set),
    the API under gunicorn, one worker and the reconciler. Ctrl-C stops everything; a running
    job is interrupted (keeping its checkpoint) and resumes on the next start."""
    from common.store import make_engine, upgrade

    env = dict(os.environ)
    from common.settings import Settings

    settings = Settings.from_env()
    state = Path(settings.database_url.removeprefix("sqlite:///")).parent if settings.database_url.startswith("sqlite") else Path("volumes/state")
    state.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        # Own sessions: Ctrl-C reaches only us, and we stop the children in order.
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        procs.append((name, proc))
        click.echo(f"serve: started {name} (pid {proc.pid})", err=True)
        return proc

    stopping = False
    crashed = False

    def request_stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        if not env.get("TEACHER_REDIS_URL"):
            rport = _free_port()
            (state / "redis").mkdir(exist_ok=True)
            start("redis", ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--dir", str((state / "redis").resolve()),
                            "--appendonly", "yes", "--save", ""])
            env["TEACHER_REDIS_URL"] = f"redis://127.0.0.1:{rport}/0"
            _wait_port(rport, 20)
        engine = make_engine(settings.database_url)
        upgrade(engine)
        engine.dispose()
        py = sys.executable
        start("worker", [py, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", queues or ",".join(settings.queues),
                         "--concurrency", "1", "--pool", "solo", "--loglevel", "INFO", "--without-gossip", "--without-mingle"])
        start("reconciler", [py, "-m", "worker.reconciler"])
        start("api", [py, "-m", "gunicorn", "-b", f"{host}:{port}", "-w", "2", "-k", "gthread", "--threads", "8",
                      "--graceful-timeout", "10", "api:create_app()"])
        click.echo(f"serve: API on http://{host}:{port}/api/v1  (Ctrl-C to stop)", err=True)
        while not stopping:
            for name, proc in procs:
                if proc.poll() is not None:
                    click.echo(f"serve: {name} exited with {proc.returncode}; stopping", err=True)
                    stopping = crashed = True
            time.sleep(0.5)
    finally:
        # Worker first (it stops its training child and records the job as interrupted), then
        # the rest; Redis last so that the worker can still re-send the interrupted job.
        order = {"worker": 0, "reconciler": 1, "api": 2, "redis": 3}
        for name, proc in sorted(procs, key=lambda p: order[p[0]]):
            _stop(proc, timeout=settings.cancel_grace_s + 30 if name == "worker" else 20)
            click.echo(f"serve: stopped {name}", err=True)
    if crashed:
        sys.exit(1)


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise click.ClickException(f"nothing listens on port {port} after {timeout}s")


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
