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
from typing import Any

import click

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOG_DIR_NAME = "logs"
# Worker first (it stops its training child and records the job as interrupted), then the rest;
# Redis last so that the worker can still re-send the interrupted job.
STOP_ORDER = {"worker": 0, "reconciler": 1, "api": 2, "redis": 3}


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--queues", default=None, help="Queues the worker consumes (default: TEACHER_QUEUES).")
@click.option("--verbose", is_flag=True, help="Also copy the services' logs to this terminal.")
def serve(host: str, port: int, queues: str | None, verbose: bool) -> None:
    """Run the whole service on this machine: a private Redis (unless TEACHER_REDIS_URL is set),
    the API under gunicorn, one worker and the reconciler. Ctrl-C stops everything; a running
    job is interrupted (keeping its checkpoint) and resumes on the next start."""
    import secrets

    from common import serve_state
    from common.settings import Settings
    from common.store import make_engine, upgrade

    settings = Settings.from_env()
    running = serve_state.read(settings.state_root)
    if running is not None:
        # Two stacks on one state root would share the SQLite store and Redis folder while each
        # reconciler saw only its own Redis.
        raise click.ClickException(f"a local stack already runs on {settings.state_root} (teacher serve, pid "
                                   f"{running.pid}, API {running.api_url}); stop it first (Ctrl-C in its terminal)")
    env = dict(os.environ)
    # The children read the same absolute roots, whatever their working directory.
    env.update(TEACHER_JOBS_ROOT=str(settings.jobs_root), TEACHER_DATA_ROOT=str(settings.data_root),
               TORCH_HOME=str(settings.torch_home), TEACHER_STATE_ROOT=str(settings.state_root),
               TEACHER_DATABASE_URL=settings.database_url)
    logs = settings.state_root / LOG_DIR_NAME
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(name: str, cmd: list[str], stdin: bytes | None = None) -> subprocess.Popen[bytes]:
        # Own sessions: Ctrl-C reaches only us, and we stop the children in order. Their output
        # goes to a file each (appended: a restart keeps the previous run's lines).
        out = None if verbose else (logs / f"{name}.log").open("ab")
        try:
            proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                                    stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                                    stdout=out, stderr=subprocess.STDOUT if out else None)
        finally:
            if out is not None:
                out.close()
        if stdin is not None:
            proc.stdin.write(stdin)  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        procs.append((name, proc))
        return proc

    stopping = False
    crashed = False

    def request_stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    api_url = f"http://{host}:{port}"
    try:
        if not env.get("TEACHER_REDIS_URL"):
            # A private Redis for this stack: loopback only, a fresh password each start.
            rport, password = _free_port(), secrets.token_urlsafe(24)
            (settings.state_root / "redis").mkdir(parents=True, exist_ok=True)
            # The config on stdin (`redis-server -`), not the command line: other local users can
            # read a process's arguments, and the password is in it.
            config = (f"port {rport}\nbind 127.0.0.1\ndir {settings.state_root / 'redis'}\nrequirepass {password}\n"
                      "appendonly yes\nsave \"\"\n")
            start("redis", ["redis-server", "-"], stdin=config.encode())
            env["TEACHER_REDIS_URL"] = f"redis://:{password}@127.0.0.1:{rport}/0"
            _wait_port(rport, 20)
        engine = make_engine(settings.database_url)
        upgrade(engine)
        engine.dispose()
        py = sys.executable
        start("worker", [py, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", queues or ",".join(settings.queues),
                         "--concurrency", "1", "--pool", "solo", "--loglevel", "INFO", "--without-gossip", "--without-mingle"])
        start("reconciler", [py, "-m", "worker.reconciler"])
        start("api", [py, "-m", "gunicorn", "-c", "python:common.apps.gunicorn_conf",  # JSON log lines
                      "-b", f"{host}:{port}", "-w", "2", "-k", "gthread", "--threads", "8",
                      "--graceful-timeout", "10", "api:create_app()"])
        state_file = serve_state.write(serve_state.ServeState(
            api_url=api_url, redis_url=env["TEACHER_REDIS_URL"], database_url=settings.database_url,
            pid=os.getpid(), pids={name: proc.pid for name, proc in procs}, logs_dir=str(logs)))
        click.echo(f"serve: API on {api_url}/api/v1 (Ctrl-C to stop)\n"
                   f"serve: service logs in {logs}/ (redis, worker, reconciler, api); endpoints in {state_file}",
                   err=True)
        while not stopping:
            for name, proc in procs:
                if proc.poll() is not None:
                    click.echo(f"serve: {name} exited with {proc.returncode}; stopping (see {logs / (name + '.log')})",
                               err=True)
                    stopping = crashed = True
            time.sleep(0.5)
    finally:
        serve_state.remove(pid=os.getpid())
        for name, proc in sorted(procs, key=lambda p: STOP_ORDER[p[0]]):
            _stop(proc, timeout=settings.cancel_grace_s + 30 if name == "worker" else 20)
        if procs:
            click.echo(f"serve: stopped {', '.join(sorted((n for n, _ in procs), key=STOP_ORDER.get))}", err=True)
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
