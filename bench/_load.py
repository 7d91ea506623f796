"""Helpers of the HTTP benchmarks (bench/polls.py): a seeded store, a simulated worker writing a
heartbeat every second, gunicorn servers with ``teacher serve``'s settings, and wrk.

    python -m bench._load heartbeat DATABASE_URL JOB_ID   # the heartbeat writer (its own process)
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
# `teacher serve`'s gunicorn command (common/apps/serve.py), less the bind address and the app;
# tests/unit/api/test_read_transactions.py checks that serve.py still runs these.
SERVE_GUNICORN_ARGS = ("-c", "python:common.apps.gunicorn_conf", "-w", "2", "-k", "gthread", "--threads", "8",
                       "--graceful-timeout", "10")
WRK_MISSING = "install wrk (apt-get install wrk): bench/polls.py measures with it"


# ------------------------------------------------------------------------------------ the store
@dataclass
class Seeded:
    database_url: str
    token: str      # alice's bearer token
    job_id: str     # her job that is "running" (the one polled and heartbeaten)
    jobs: int       # jobs in the store


def progress(step: int) -> dict[str, Any]:
    """A progress record with the keys the API's ProgressSchema dumps."""
    return {"status": "running", "phase": "train", "epoch": 1 + step // 100, "epochs": 3, "batch": step % 100,
            "batches": 100, "step": step, "total_steps": 300, "percent": round(step / 3, 2), "throughput": 812.5,
            "eta_s": 31.0, "latest": {"train.loss": 1.25, "lr": 0.001}, "updated_at": time.time(),
            "integrity": {"verdict": "pass", "failed": [], "warnings": []}}


def seed(database_url: str, jobs: int, config: dict[str, Any]) -> Seeded:
    """A migrated store with user alice, her token, and ``jobs`` jobs of hers (the newest one
    running, with a heartbeat and progress; the rest finished)."""
    from sqlalchemy import insert

    from common.auth import create_token
    from common.store import Job, User, make_engine, make_sessionmaker, transaction, upgrade, utcnow
    from common.store.models import JobAttempt

    engine = make_engine(database_url)
    upgrade(engine)
    factory = make_sessionmaker(engine)
    with transaction(factory) as s:
        token = create_token(s, "alice")
        user_id = s.query(User.id).filter(User.name == "alice").scalar()
    now = utcnow()
    rows = [{"id": uuid.uuid4().hex, "user_id": user_id, "name": f"job-{i}", "queue": "default", "priority": 5,
             "status": "succeeded", "config": config, "max_attempts": 3, "attempts": 1, "created_at": now,
             "updated_at": now, "started_at": now, "finished_at": now, "result": {"val.top1": 71.5},
             "progress": {**progress(300), "status": "succeeded"}, "exit_code": 0}
            for i in range(jobs - 1)]
    job_id = uuid.uuid4().hex
    rows.append({"id": job_id, "user_id": user_id, "name": "polled", "queue": "default", "priority": 5,
                 "status": "running", "config": config, "max_attempts": 3, "attempts": 1, "created_at": now,
                 "updated_at": now, "started_at": now, "heartbeat_at": now, "claim_token": uuid.uuid4().hex,
                 "worker": "bench:1", "child_pid": 1, "progress": progress(0)})
    # one attempt each (the timeline the API dumps): closed for the finished jobs, open for the running one
    attempts = [{"job_id": r["id"], "number": 1, "worker": "bench:1", "started_at": now,
                 "ended_at": None if r["status"] == "running" else now,
                 "cause": None if r["status"] == "running" else "succeeded",
                 "exit_code": None if r["status"] == "running" else 0} for r in rows]
    with transaction(factory) as s:
        for start in range(0, len(rows), 1000):
            s.execute(insert(Job), rows[start:start + 1000])
            s.execute(insert(JobAttempt), attempts[start:start + 1000])
    if engine.dialect.name == "postgresql":
        # The planner's statistics, as autovacuum leaves them within a minute of these inserts on a
        # server that runs it (the postgres image's default). This machine's server runs without it:
        # unanalysed, the page query of GET /jobs reads and sorts all 10,000 jobs (15 ms a page
        # instead of 0.1 ms; `teacher doctor` warns about it). A store that is used gets analysed.
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    engine.dispose()
    return Seeded(database_url, token, job_id, jobs)


def heartbeat_forever(database_url: str, job_id: str, every_s: float = 1.0) -> None:
    """What a training job's worker writes: the job's heartbeat (heartbeat_at, run_seconds,
    progress) through the lifecycle's own event, and the worker's liveness row, each second, in a
    write transaction (BEGIN IMMEDIATE on SQLite)."""
    from sqlalchemy import select

    from common.store import Job, WorkerBeat, lifecycle, make_engine, make_sessionmaker, transaction, utcnow

    factory = make_sessionmaker(make_engine(database_url))
    step = 0
    while True:
        step += 1
        with transaction(factory) as s:
            job = s.scalar(select(Job).where(Job.id == job_id).with_for_update())
            lifecycle.heartbeat(job, child_pid=1, run_seconds=float(step), progress=progress(step % 300))
            beat = s.get(WorkerBeat, "bench:1") or WorkerBeat(name="bench:1", queues="default")
            beat.seen_at = utcnow()
            s.add(beat)
        time.sleep(every_s)


def start_heartbeat(database_url: str, job_id: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench._load", "heartbeat", database_url, job_id], cwd=ROOT,
                            start_new_session=True)


def create_pg_database(server: str) -> str:
    """A fresh database on ``server`` (e.g. postgresql+psycopg://postgres@127.0.0.1:5432); its URL."""
    from sqlalchemy import create_engine, text

    name = f"teacher_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{server}/{name}"


def drop_pg_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    server, name = url.rsplit("/", 1)
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


# ------------------------------------------------------------------------------------ servers
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        stop(self.proc)


def start_gunicorn(name: str, app: str, env: dict[str, str], log: Path, probe: str, headers: dict[str, str]) -> Server:
    """gunicorn with `teacher serve`'s settings serving ``app``; waits until ``probe`` answers 200."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", *SERVE_GUNICORN_ARGS, "-b", f"127.0.0.1:{port}", app],
                            env=env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(name, f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            r = requests.get(server.url + probe, headers=headers, timeout=10)
            if r.status_code == 200:
                return server
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or its workers are still starting
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{name} did not answer {probe}: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (gunicorn's master and workers), from
    /proc: CPU per request does not depend on what else the machine runs, req/s does."""
    tick = os.sysconf("SC_CLK_TCK")

    def of(stat: str) -> tuple[int, float]:
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / tick  # ppid, utime + stime

    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid, cpu = of((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if int(entry.name) == pid or ppid == pid:
            total += cpu
    return total


# ------------------------------------------------------------------------------------ wrk
@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    bad: int  # non-2xx responses plus socket errors
    cpu_ms_per_request: float = 0.0  # the server's CPU (all its processes) per answered request

    def to_json(self) -> dict[str, Any]:
        return {"req_s": round(self.requests_per_s, 1), "p50_ms": round(self.p50_ms, 2), "p90_ms": round(self.p90_ms, 2),
                "p99_ms": round(self.p99_ms, 2), "requests": self.requests, "bad": self.bad,
                "cpu_ms_per_req": round(self.cpu_ms_per_request, 3)}


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse_wrk(out: str) -> WrkResult:
    pct = {m.group(1): _ms(m.group(2)) for m in re.finditer(r"^\s+(50|90|99)%\s+(\S+)", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(g) for g in errors.groups()) if errors else 0)
    return WrkResult(rps, pct["50"], pct["90"], pct["99"], total, bad)


def wrk(url: str, headers: dict[str, str], *, connections: int, duration_s: float, threads: int = 2,
        server_pid: int | None = None) -> WrkResult:
    """``wrk -t<threads> -c<connections> --latency``: keep-alive clients, as fast as answered;
    with ``server_pid``, also the server's CPU time per request."""
    cmd = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--latency", "--timeout", "10s"]
    for key, value in headers.items():
        cmd += ["-H", f"{key}: {value}"]
    cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
    done = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=duration_s + 60, check=True)
    result = parse_wrk(done.stdout)
    if server_pid and result.requests:
        result.cpu_ms_per_request = (cpu_seconds(server_pid) - cpu0) * 1000 / result.requests
    return result


def _heartbeat_main(argv: list[str]) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    heartbeat_forever(argv[0], argv[1])


if __name__ == "__main__":
    if sys.argv[1:2] == ["heartbeat"]:
        _heartbeat_main(sys.argv[2:])
    else:
        sys.exit(__doc__)
