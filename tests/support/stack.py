"""A real service for system tests: gunicorn API + Celery worker(s) sharing one store, one Redis
and one disk (also used by bench/soak.py). Every wait is a poll with a deadline; every process
is torn down by its own process group."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests
import yaml

from common.settings import Settings
from common.store import Job
from tests.support.procs import free_port, stop_process, wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class Stack:
    """A real service: gunicorn API + Celery worker(s) sharing one store, one Redis, one disk."""

    base: Path
    env: dict[str, str]
    settings: Settings
    api_url: str = ""
    api: subprocess.Popen[Any] | None = None
    workers: list[subprocess.Popen[Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def start_api(self, port: int | None = None, *, workers: int = 1, threads: int = 8,
                  graceful_timeout: int = 5) -> None:
        """gunicorn on ``port`` (a free one by default; a restarted API passes its old one)."""
        port = port or free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        self.api = subprocess.Popen(
            [str(BIN / "gunicorn"), "-b", f"127.0.0.1:{port}", "-w", str(workers), "-k", "gthread",
             "--threads", str(threads), "--graceful-timeout", str(graceful_timeout), "api:create_app()"],
            env=self.env, cwd=ROOT, stdout=(self.base / "gunicorn.log").open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        api = self.api
        wait_until(lambda: api.poll() is not None
                   or requests.get(self.api_url + "/api/v1/health", timeout=2).status_code in (200, 503), 60, "gunicorn")
        assert api.poll() is None, (self.base / "gunicorn.log").read_text()[-3000:]

    def start_worker(self, argv: list[str] | None = None, *, may_exit: bool = False) -> subprocess.Popen[Any]:
        """A Celery worker (solo pool, the only one supported), or the command ``argv`` (e.g.
        :func:`deployed_worker_argv`), logging to ``worker<n>.log``; stack.stop() kills it.
        ``may_exit``: a worker that takes a queued job which kills it may be gone by the time
        it has said "ready"."""
        n = len(self.workers)
        log = self.base / f"worker{n}.log"
        argv = argv or [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "default",
                        "--pool", "solo", "--concurrency", "1", "-n", f"w{n}-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "INFO",
                        "--without-gossip", "--without-mingle", "--without-heartbeat"]
        proc = subprocess.Popen(argv, env=self.env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.workers.append(proc)
        wait_until(lambda: proc.poll() is not None or b" ready." in log.read_bytes(), 60, "celery worker ready")
        assert b" ready." in log.read_bytes() if may_exit else proc.poll() is None, log.read_text()[-3000:]
        return proc

    def reconcile(self) -> dict[str, Any]:
        """One reconciler pass against this stack's store and broker (what beat would run)."""
        from worker.reconciler import reconcile_once

        return reconcile_once(self.settings)

    def kill_worker(self, proc: subprocess.Popen[Any]) -> None:
        stop_process(proc, sig=signal.SIGKILL, timeout=5)

    def token(self, user: str, admin: bool = False) -> dict[str, str]:
        from common.auth import create_token
        from common.store import transaction
        from worker.store import sessions_for

        with transaction(sessions_for(self.settings.database_url)) as s:
            token = create_token(s, user, admin=admin)
        return {"Authorization": f"Bearer {token}"}

    _doc: dict[str, Any] | None = None

    def _checked(self, method: str, path: str, r: requests.Response) -> requests.Response:
        """Every response the tests see must match the served OpenAPI document."""
        from .openapi_check import check_response

        if self._doc is None:
            self._doc = requests.get(self.api_url + "/api/v1/openapi.json", timeout=30).json()
        if path.startswith("/api/v1/") and not path.endswith("/openapi.json"):
            ctype = r.headers.get("Content-Type", "")
            body = r.json() if ctype.startswith("application/json") else None
            check_response(self._doc, method, path, r.status_code, ctype, body)
        return r

    def get(self, path: str, **kw: Any) -> requests.Response:
        r = requests.get(self.api_url + path, headers=self.headers, timeout=30, **kw)
        return self._checked("get", path, r)

    def post(self, path: str, **kw: Any) -> requests.Response:
        r = requests.post(self.api_url + path, headers={**self.headers, **kw.pop("headers", {})}, timeout=30, **kw)
        return self._checked("post", path, r)

    def submit(self, body: dict[str, Any]) -> str:
        """POST a job as the stack's user (``headers``); returns its id, asserting the 202."""
        r = self.post("/api/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.get(f"/api/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 240,
                    tick: Callable[[], None] | None = None) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            if tick:
                tick()
            for proc in self.workers:
                assert proc.poll() is None or proc.returncode == -signal.SIGKILL, self.logs()
            job = self.job(job_id)
            return job if job["status"] in statuses else None

        try:
            return wait_until(check, timeout, f"job {job_id} in {statuses}", interval=0.5)
        except AssertionError:
            print(self.logs())
            raise

    def logs(self) -> str:
        out = []
        for p in sorted(self.base.glob("*.log")):
            out.append(f"----- {p.name}\n{p.read_text(errors='replace')[-4000:]}")
        for p in sorted((self.base / "jobs").glob("*/child.log")):
            out.append(f"----- {p}\n{p.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.workers:
            stop_process(proc, sig=signal.SIGKILL, timeout=5)
        if self.api is not None:
            stop_process(self.api)


def deployed_worker_argv(pool: str | None = None) -> list[str]:
    """The worker command of docker-compose.yml, verbatim, with its queue variable at its default
    (and the pool swapped for `pool` when given)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    argv = [str(a) for a in compose["services"]["worker"]["command"]]
    assert argv[0] == "celery" and "--pool" in argv, argv
    argv = [sys.executable, "-m", *argv]
    argv = ["default" if a == "${TEACHER_WORKER_QUEUES:-default}" else a for a in argv]
    if pool is not None:
        argv[argv.index("--pool") + 1] = pool
    return argv


def db_job(stack: Stack, job_id: str) -> Job:
    """The job's row, straight from the stack's store."""
    from sqlalchemy import select

    from worker.store import sessions_for

    with sessions_for(stack.settings.database_url)() as s:
        return s.scalar(select(Job).where(Job.id == job_id))


def make_stack(base: Path, redis_url: str, dataset_root: Path, database_url: str, **extra_env: str) -> Stack:
    env = dict(os.environ)
    env.pop("TEACHER_FAULT", None)
    env.update(
        TEACHER_DATABASE_URL=database_url,
        TEACHER_REDIS_URL=redis_url,
        TEACHER_JOBS_ROOT=str(base / "jobs"),
        TEACHER_DATA_ROOT=str(dataset_root),
        TORCH_HOME=str(base / "torch"),
        TEACHER_HEARTBEAT_S="0.5",
        TEACHER_STALE_AFTER_S="6",
        TEACHER_CANCEL_GRACE_S="60",
        TEACHER_WORKER_BEAT_S="1",
        TEACHER_LOST_MESSAGE_GRACE_S="3",
        TEACHER_MAX_ATTEMPTS="3",
    )
    env.update(extra_env)
    settings = Settings.from_env(env)
    return Stack(base=base, env=env, settings=settings)

