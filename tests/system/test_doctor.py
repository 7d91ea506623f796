"""`teacher doctor` against real components, broken one at a time: real redis-server processes
(with and without a password, and a port where nothing listens), real SQLite job stores
(migrated, unmigrated, behind, newer), worker heartbeat rows written through the store's own
models, real data and jobs roots. Each breakage must FAIL exactly its own check, with a message
no other breakage produces."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from click.testing import CliRunner

from common.apps.doctor import doctor
from common.store import LATEST_VERSION

ROOT = Path(__file__).resolve().parents[2]
REDIS_PASSWORD = "s3cret-doctor"
QUEUES = ("default", "gpu-large")
NON_CUDA = ["--only", "redis", "--only", "database", "--only", "workers", "--only", "data", "--only", "jobs"]
NO_DISK_LIMITS = ["--min-free-gib", "0", "--warn-free-gib", "0"]


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")


def _start_redis(workdir: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
         "--appendonly", "no", *extra],
        stdout=(workdir / "redis.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    import redis

    client = redis.Redis(port=port, password=REDIS_PASSWORD if extra else None, socket_connect_timeout=1)
    try:
        wait_until(lambda: proc.poll() is None and client.ping(), 20, "redis-server")
    except AssertionError:
        _stop(proc)
        raise
    finally:
        client.close()
    return proc, port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def redis_open(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    proc, port = _start_redis(tmp_path_factory.mktemp("redis-open"))
    yield port
    _stop(proc)


@pytest.fixture(scope="module")
def redis_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    proc, port = _start_redis(tmp_path_factory.mktemp("redis-auth"), "--requirepass", REDIS_PASSWORD)
    yield port
    _stop(proc)


# ------------------------------------------------------------------------- a healthy deployment
def _beat(db_url: str, name: str, queues: str, age_s: float) -> None:
    from common.store import WorkerBeat, make_engine, make_sessionmaker, transaction, utcnow

    engine = make_engine(db_url)
    try:
        with transaction(make_sessionmaker(engine)) as s:
            s.merge(WorkerBeat(name=name, queues=queues, seen_at=utcnow() - dt.timedelta(seconds=age_s)))
    finally:
        engine.dispose()


@dataclass
class Deployment:
    base: Path
    env: dict[str, str]

    @property
    def db_url(self) -> str:
        return self.env["TEACHER_DATABASE_URL"]

    def set(self, **env: str) -> None:
        self.env.update(env)


@pytest.fixture
def deploy(tmp_path: Path, redis_open: int, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    """Everything OK: Redis, a migrated SQLite store, a live worker on each queue, a data root
    with two datasets, a writable jobs root."""
    from common.store import make_engine, upgrade

    for key in list(os.environ):
        if key.startswith("TEACHER_"):
            monkeypatch.delenv(key)
    db_url = f"sqlite:///{tmp_path / 'state' / 'teacher.db'}"
    engine = make_engine(db_url)
    upgrade(engine)
    engine.dispose()
    for name in ("synthetic", "flowers"):
        (tmp_path / "datasets" / name).mkdir(parents=True)
    (tmp_path / "jobs").mkdir()
    env = {
        "TEACHER_REDIS_URL": f"redis://127.0.0.1:{redis_open}/0",
        "TEACHER_DATABASE_URL": db_url,
        "TEACHER_DATA_ROOT": str(tmp_path / "datasets"),
        "TEACHER_JOBS_ROOT": str(tmp_path / "jobs"),
        "TEACHER_QUEUES": ",".join(QUEUES),
        "TEACHER_WORKER_BEAT_S": "10",
    }
    _beat(db_url, "gpu1:100", "control,default", 1)
    _beat(db_url, "gpu2:200", "control,gpu-large", 2)
    return Deployment(tmp_path, env)


def invoke(dep: Deployment, *args: str) -> tuple[int, str, dict[str, tuple[str, str]]]:
    result = CliRunner().invoke(doctor, list(args), env=dep.env, catch_exceptions=False)
    lines: dict[str, tuple[str, str]] = {}
    for line in result.output.splitlines():
        m = re.match(r"^(OK|WARN|FAIL)\s+(\S+)\s+(.*)$", line)
        if m:
            lines[m.group(2)] = (m.group(1), m.group(3))
    return result.exit_code, result.output, lines


def test_healthy_deployment_passes_every_check(deploy: Deployment) -> None:
    code, out, lines = invoke(deploy, *NON_CUDA, *NO_DISK_LIMITS)
    assert code == 0, out
    assert {k: s for k, (s, _) in lines.items()} == {
        "redis": "OK", "database": "OK", "workers[default]": "OK", "workers[gpu-large]": "OK",
        "data": "OK", "jobs": "OK", "disk": "OK"}, out
    assert re.search(r"Redis \d+\.\d+\.\d+ at redis://127\.0\.0\.1:\d+/0, no password required", lines["redis"][1])
    assert f"schema version {LATEST_VERSION} (latest)" in lines["database"][1]
    assert "1 live worker(s): gpu1:100" in lines["workers[default]"][1]
    assert "2 dataset(s) (flowers, synthetic)" in lines["data"][1]
    assert "no problems found" in out
    # the writability probe leaves nothing behind
    assert list((deploy.base / "jobs").iterdir()) == []


# --------------------------------------------------------------- break one thing at a time
def _unmigrated(dep: Deployment) -> None:
    from common.store import make_engine

    url = f"sqlite:///{dep.base / 'empty.db'}"
    engine = make_engine(url)  # created and opened, never upgraded
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    engine.dispose()
    dep.set(TEACHER_DATABASE_URL=url)


def _newer(dep: Deployment) -> None:
    from common.store import make_engine

    engine = make_engine(dep.db_url)
    with engine.begin() as conn:  # an Alembic revision that only newer code knows
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'f00dcafe0005'")
    engine.dispose()


def _garbage_db(dep: Deployment) -> None:
    path = dep.base / "garbage.db"
    path.write_bytes(b"this is not a sqlite database" * 100)
    dep.set(TEACHER_DATABASE_URL=f"sqlite:///{path}")


def _file_instead_of(dep: Deployment, key: str) -> None:
    path = dep.base / f"{key}.txt"
    path.write_text("a file, not a folder\n")
    dep.set(**{key: str(path)})


def _under_a_file(dep: Deployment) -> None:
    blocker = dep.base / "blocker"
    blocker.write_text("")
    dep.set(TEACHER_JOBS_ROOT=str(blocker / "jobs"))


# name -> (how to break it, the one check that must FAIL, a phrase only this breakage produces)
BREAKAGES: dict[str, tuple[Callable[[Deployment], None], str, str]] = {
    "redis refused": (lambda d: d.set(TEACHER_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"),
                      "redis", r"cannot reach Redis at redis://127\.0\.0\.1:\d+/0 \(.*Connection refused"),
    "database missing": (lambda d: d.set(TEACHER_DATABASE_URL=f"sqlite:///{d.base / 'nope' / 'teacher.db'}"),
                         "database", r"the job store file .*teacher\.db does not exist: run `teacher db upgrade`"),
    "database unreachable": (lambda d: d.set(TEACHER_DATABASE_URL=f"postgresql://u:pw@127.0.0.1:{free_port()}/teacher"),
                             "database", r"cannot connect to the database at postgresql://u:\*\*\*@127\.0\.0\.1:\d+/teacher"),
    "database not a database": (_garbage_db, "database", r"cannot open the SQLite job store .*garbage\.db \(file is not a database\)"),
    "database unmigrated": (_unmigrated, "database", r"reachable but has no job-store schema \(version 0 of \d+\): run `teacher db upgrade`"),
    "database newer": (_newer, "database", r"newer than this code's \d+: upgrade teacher on this host"),
    "worker stale": (lambda d: _beat(d.db_url, "gpu2:200", "control,gpu-large", 45), "workers[gpu-large]",
                     r"queue 'gpu-large' has no live worker: the last one \(gpu2:200\) was last seen 45s ago \(alive means seen within 30s\)"),
    "worker never": (lambda d: d.set(TEACHER_QUEUES="default,a100"), "workers[a100]",
                     r"queue 'a100' has no worker: none has ever reported on it"),
    "data root missing": (lambda d: d.set(TEACHER_DATA_ROOT=str(d.base / "no-datasets")), "data",
                          r"data root .*no-datasets does not exist: create it"),
    "data root is a file": (lambda d: _file_instead_of(d, "TEACHER_DATA_ROOT"), "data",
                            r"data root .*TEACHER_DATA_ROOT\.txt is not a directory"),
    "jobs root is a file": (lambda d: _file_instead_of(d, "TEACHER_JOBS_ROOT"), "jobs",
                            r"jobs root .*TEACHER_JOBS_ROOT\.txt is not a directory"),
    "jobs root cannot be created": (_under_a_file, "jobs", r"jobs root .* does not exist and cannot be created"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_each_breakage_fails_only_its_check_with_its_own_message(deploy: Deployment, breakage: str) -> None:
    breaker, check, phrase = BREAKAGES[breakage]
    breaker(deploy)
    code, out, lines = invoke(deploy, *NON_CUDA, *NO_DISK_LIMITS)
    assert code == 1, out
    failed = {k for k, (s, _) in lines.items() if s == "FAIL"}
    assert failed == {check}, out
    assert re.search(phrase, lines[check][1]), out
    for other, (_, _, other_phrase) in BREAKAGES.items():
        if other != breakage:
            assert not re.search(other_phrase, out), f"{breakage} printed {other}'s message:\n{out}"
    assert "problem(s) to fix" in out


def test_redis_password_required_wrong_and_right(deploy: Deployment, redis_auth: int) -> None:
    deploy.set(TEACHER_REDIS_URL=f"redis://127.0.0.1:{redis_auth}/0")
    code, out, lines = invoke(deploy, "--only", "redis")
    assert code == 1 and lines["redis"][0] == "FAIL", out
    assert "requires a password, but TEACHER_REDIS_URL has none" in lines["redis"][1]

    deploy.set(TEACHER_REDIS_URL=f"redis://:wrong-password@127.0.0.1:{redis_auth}/0")
    code, out, lines = invoke(deploy, "--only", "redis")
    assert code == 1 and lines["redis"][0] == "FAIL", out
    assert f"Redis at redis://:***@127.0.0.1:{redis_auth}/0 rejected the password" in lines["redis"][1]
    assert "wrong-password" not in out  # never echo the secret
    assert "requires a password" not in out

    deploy.set(TEACHER_REDIS_URL=f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_auth}/0")
    code, out, lines = invoke(deploy, "--only", "redis")
    assert code == 0 and lines["redis"][0] == "OK", out
    assert re.search(r"Redis \d+\.\d+\.\d+ at redis://:\*\*\*@127\.0\.0\.1:\d+/0, authenticated", lines["redis"][1])
    assert REDIS_PASSWORD not in out


def test_redis_eviction_policy_warns(deploy: Deployment, redis_open: int) -> None:
    import redis

    client = redis.Redis(port=redis_open)
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        code, out, lines = invoke(deploy, "--only", "redis")
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.close()
    assert code == 0, out
    assert lines["redis"][0] == "WARN" and "maxmemory-policy is 'allkeys-lru'" in lines["redis"][1], out


def test_database_behind_latest_says_run_db_upgrade(deploy: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    """Code one migration ahead of the store (the code's LATEST_VERSION is raised rather than the
    store built at an older version)."""
    import common.store

    monkeypatch.setattr(common.store, "LATEST_VERSION", common.store.LATEST_VERSION + 1)
    code, out, lines = invoke(deploy, "--only", "database", "--only", "workers")
    assert code == 1, out
    assert lines["database"][0] == "FAIL"
    assert (f"is at schema version {LATEST_VERSION}, behind this code's {LATEST_VERSION + 1}: run `teacher db upgrade`"
            in lines["database"][1]), out
    assert lines["workers[default]"][0] == "OK"  # heartbeats are still readable


def test_workers_not_checked_when_the_store_is_unusable(deploy: Deployment) -> None:
    deploy.set(TEACHER_DATABASE_URL=f"sqlite:///{deploy.base / 'missing.db'}")
    code, out, lines = invoke(deploy, "--only", "workers")
    assert code == 1, out
    assert lines["database"][0] == "FAIL", out  # shown even though only workers was asked: it is why
    assert lines["workers"] == ("WARN", "not checked: the job store is not usable (see the database check)")
    assert not (deploy.base / "missing.db").exists()  # the doctor never creates a store


def test_a_worker_on_other_queues_only_does_not_count(deploy: Deployment) -> None:
    _beat(deploy.db_url, "gpu2:200", "control", 0)  # alive, but no longer on gpu-large
    code, out, lines = invoke(deploy, "--only", "workers")
    assert code == 1
    assert lines["workers[default]"][0] == "OK"
    assert "queue 'gpu-large' has no live worker: the last one" not in out
    assert "queue 'gpu-large' has no worker: none has ever reported on it" in lines["workers[gpu-large]"][1]


def test_warnings_do_not_fail(deploy: Deployment) -> None:
    shutil.rmtree(deploy.base / "datasets" / "synthetic")
    shutil.rmtree(deploy.base / "datasets" / "flowers")
    deploy.set(TEACHER_JOBS_ROOT=str(deploy.base / "jobs" / "not-yet"))
    code, out, lines = invoke(deploy, "--only", "data", "--only", "jobs", "--min-free-gib", "0", "--warn-free-gib", "1e9")
    assert code == 0, out
    assert lines["data"][0] == "WARN" and "holds no datasets" in lines["data"][1]
    assert lines["jobs"][0] == "WARN" and "does not exist yet; the worker will create it" in lines["jobs"][1]
    assert lines["disk"][0] == "WARN" and "below 1e+09 GiB: a few more runs may fill it" in lines["disk"][1]
    assert not (deploy.base / "jobs" / "not-yet").exists()


def test_low_disk_fails(deploy: Deployment) -> None:
    code, out, lines = invoke(deploy, "--only", "jobs", "--min-free-gib", "1e9")
    assert code == 1, out
    assert lines["jobs"][0] == "OK"
    assert lines["disk"][0] == "FAIL"
    assert re.search(r"only [\d.]+ GiB free of [\d.]+ GiB on the jobs root's filesystem .* below the 1e\+09 GiB minimum",
                     lines["disk"][1]), out


def test_invalid_environment_is_reported(deploy: Deployment) -> None:
    deploy.set(TEACHER_QUEUES="Bad Queue!")
    code, out, lines = invoke(deploy)
    assert code == 1
    assert lines["settings"][0] == "FAIL" and "TEACHER_QUEUES must be" in lines["settings"][1]


# --------------------------------------------------------------------------------- PostgreSQL
PG = "postgresql://postgres@127.0.0.1:5432"  # the `pg_database` fixture is in tests/conftest.py


def test_postgresql_store(deploy: Deployment, pg_database: str) -> None:
    from common.store import make_engine, upgrade

    deploy.set(TEACHER_DATABASE_URL=f"{PG}/{pg_database}")
    code, out, lines = invoke(deploy, "--only", "database")
    assert code == 1 and "reachable but has no job-store schema (version 0" in lines["database"][1], out

    engine = make_engine(f"{PG}/{pg_database}")
    upgrade(engine)
    with engine.connect() as conn:
        server_autovacuum = conn.exec_driver_sql("SHOW autovacuum").scalar()
    code, out, lines = invoke(deploy, "--only", "database")
    assert code == 0 and f"schema version {LATEST_VERSION} (latest)" in lines["database"][1], out
    if server_autovacuum == "on":
        assert lines["database"][0] == "OK", out
    else:  # this machine's server (CI's too) runs without autovacuum
        assert lines["database"][0] == "WARN" and "autovacuum is off on the server" in lines["database"][1], out
        assert "run ANALYZE" in lines["database"][1], out
    # off for one of the store's tables: the planner's statistics of the jobs go stale
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE jobs SET (autovacuum_enabled = off)")
    code, out, lines = invoke(deploy, "--only", "database")
    assert code == 0 and lines["database"][0] == "WARN", out  # a warning does not fail
    assert "autovacuum is off for the table(s) jobs:" in lines["database"][1] and "ANALYZE" in lines["database"][1], out
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE jobs RESET (autovacuum_enabled)")
    engine.dispose()

    deploy.set(TEACHER_DATABASE_URL=f"{PG}/{pg_database}_absent")
    code, out, lines = invoke(deploy, "--only", "database")
    assert code == 1, out
    assert f"is reachable but has no database '{pg_database}_absent': create it" in lines["database"][1], out

    deploy.set(TEACHER_DATABASE_URL=f"postgresql://no_such_role:hunter2-pg@127.0.0.1:5432/{pg_database}")
    code, out, lines = invoke(deploy, "--only", "database")
    assert code == 1, out
    assert "rejected the login" in lines["database"][1] and "hunter2-pg" not in out, out


# -------------------------------------------------------------------- permissions (not as root)
def test_unreadable_data_root_and_unwritable_jobs_root(tmp_path: Path) -> None:
    """Root reads and writes through any mode bits, so as root the doctor runs without the
    capabilities that let it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, dropped with setpriv) against
    a root-owned tree; as another user chmod alone does it. (Not by switching to `nobody`: that
    user may not reach the project or the interpreter, e.g. in a clone under a private dir.)"""
    base = Path(tempfile.mkdtemp(prefix="doctor-perm-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        data = base / "datasets"
        (data / "synthetic").mkdir(parents=True)
        jobs = base / "jobs"
        jobs.mkdir()
        data.chmod(0)
        jobs.chmod(0o555)
        cmd = [sys.executable, "-m", "common.apps.cli", "doctor", "--only", "data", "--only", "jobs", *NO_DISK_LIMITS]
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("running as root and setpriv is missing: cannot make a directory unreadable")
            cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *cmd]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
        env.update(TEACHER_DATA_ROOT=str(data), TEACHER_JOBS_ROOT=str(jobs), HOME=str(base), PYTHONDONTWRITEBYTECODE="1")
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        if os.geteuid() == 0 and "setpriv:" in proc.stderr:
            pytest.skip(f"setpriv cannot switch user here: {proc.stderr.strip()}")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert re.search(r"FAIL\s+data\s+data root .*datasets is not readable by this user \(uid \d+\)", proc.stdout), proc.stdout
        assert re.search(r"FAIL\s+jobs\s+jobs root .*jobs is not writable by this user", proc.stdout), proc.stdout
    finally:
        for p in (base / "datasets", base / "jobs"):
            if p.exists():
                p.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------------------- CUDA
def test_cuda_is_unknown_for_workers_and_probed_locally(deploy: Deployment) -> None:
    """The real probe in a subprocess with this interpreter: a device on a GPU host, a plain
    'no CUDA device visible' on a CPU box. Never a FAIL."""
    code, out, lines = invoke(deploy, "--only", "cuda")
    assert code == 0, out
    assert "cuda[workers]" not in lines  # what workers see is in the workers check (tests/unit/test_worker_devices.py)
    status, message = lines["cuda[local]"]
    if status == "OK":
        assert re.search(r"this host: cuda:0 .+ [\d.]+ GiB \(torch ", message), out
    else:
        assert status == "WARN" and message.startswith("no CUDA device visible on this host"), out


def test_doctor_does_not_import_torch() -> None:
    code = ("import sys; from common.apps.doctor import run_checks; run_checks(['data', 'jobs']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60,
                   env={**os.environ, "TEACHER_DATA_ROOT": "/nonexistent"})


def test_cuda_probe_reports_interpreter_problems(deploy: Deployment, tmp_path: Path) -> None:
    deploy.set(TEACHER_PYTHON=str(tmp_path / "no-such-python"))
    _, out, lines = invoke(deploy, "--only", "cuda")
    assert lines["cuda[local]"][0] == "WARN"
    assert "cannot run the training interpreter" in lines["cuda[local]"][1] and "does not exist" in lines["cuda[local]"][1]

    # A real interpreter without torch (a venv with no packages).
    bare = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=60)
    deploy.set(TEACHER_PYTHON=str(bare / "bin" / "python"))
    _, out, lines = invoke(deploy, "--only", "cuda")
    assert lines["cuda[local]"][0] == "WARN"
    assert re.search(r"torch cannot be imported by .*bare-venv/bin/python \(ModuleNotFoundError", lines["cuda[local]"][1]), out


def test_cuda_probe_formats_devices(deploy: Deployment, tmp_path: Path) -> None:
    """The GPU branch on a CPU box: a stand-in interpreter that prints what the probe prints on
    a GPU host (the real probe runs in test_cuda_is_unknown_for_workers_and_probed_locally)."""
    fake = tmp_path / "fake-python"
    report = {"torch": "2.5.1+cu124", "cuda": "12.4",
              "devices": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "total_memory": 85 * (1 << 30)}]}
    fake.write_text(f"#!/bin/sh\necho '{json.dumps(report)}'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    deploy.set(TEACHER_PYTHON=str(fake))
    code, out, lines = invoke(deploy, "--only", "cuda")
    assert code == 0
    assert lines["cuda[local]"] == ("OK", "this host: cuda:0 NVIDIA H100 80GB HBM3 85.0 GiB (torch 2.5.1+cu124, CUDA 12.4)")

    report.update(cuda=None, devices=[])
    fake.write_text(f"#!/bin/sh\necho '{json.dumps(report)}'\n")
    _, out, lines = invoke(deploy, "--only", "cuda")
    assert lines["cuda[local]"][0] == "WARN"
    assert "no CUDA device visible on this host: torch 2.5.1+cu124 is a CPU-only build" in lines["cuda[local]"][1]


# ------------------------------------------------------------------------- the real command
def test_real_subprocess_healthy_then_broken_json(deploy: Deployment) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    env.update(deploy.env)
    ok = subprocess.run([sys.executable, "-m", "common.apps.cli", "doctor", *NO_DISK_LIMITS], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "FAIL" not in ok.stdout and "cuda[local]" in ok.stdout

    env["TEACHER_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    env["TEACHER_DATA_ROOT"] = str(deploy.base / "gone")
    bad = subprocess.run([sys.executable, "-m", "common.apps.cli", "doctor", "--json", *NON_CUDA, *NO_DISK_LIMITS],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    doc = json.loads(bad.stdout)
    assert doc["ok"] is False
    by_check = {c["check"]: c for c in doc["checks"]}
    assert {c for c, v in by_check.items() if v["status"] == "FAIL"} == {"redis", "data"}
    assert "cannot reach Redis" in by_check["redis"]["message"]
    assert "does not exist: create it" in by_check["data"]["message"]
    assert by_check["database"]["status"] == "OK"
