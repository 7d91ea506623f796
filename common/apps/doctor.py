"""`teacher doctor`: check a deployment and say what is wrong in plain words.

One line per check, OK / WARN / FAIL, each failure with what is wrong and what to do; exit 1 if
anything FAILs. It reads the same environment as the API and the worker (``Settings.from_env``)
and changes nothing: no migrations, no files created except one temporary file in the jobs root
(the writability probe), which is removed at once.

torch is never imported here: the local CUDA probe runs the training interpreter in a
subprocess.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit, urlunsplit

import click

from common.devices import Devices, describe, stored

OK, WARN, FAIL = "OK", "WARN", "FAIL"
CHECKS = ("redis", "database", "workers", "cuda", "data", "jobs")
GIB = 1 << 30


@dataclass
class Check:
    check: str
    status: str
    message: str


def _settings_or_none() -> tuple[Any, str | None]:
    from common.settings import Settings

    try:
        return Settings.from_env(), None
    except ValueError as exc:
        return None, str(exc)


def with_local_stack(settings: Any, env: Any = None) -> tuple[Any, Check | None]:
    """The endpoints of a running ``teacher serve`` (its state file) for whatever no variable
    sets: its private Redis listens on a random port that only that file records."""
    from dataclasses import replace

    from common import serve_state

    env = os.environ if env is None else env
    state = serve_state.read(settings.state_root)
    if state is None:
        return settings, None
    overrides = {}
    if not env.get("TEACHER_REDIS_URL"):
        overrides["redis_url"] = state.redis_url
    if not env.get("TEACHER_DATABASE_URL"):
        overrides["database_url"] = state.database_url
    if not overrides:
        return settings, None
    note = Check("settings", OK, f"using the local stack started by `teacher serve` (pid {state.pid}, API {state.api_url}) "
                                 f"for {' and '.join(k.removesuffix('_url') for k in overrides)}: "
                                 f"{serve_state.path(settings.state_root)}")
    return replace(settings, **overrides), note


# ------------------------------------------------------------------------------------ redis
def mask_redis_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def check_redis(url: str, timeout: float) -> Check:
    shown = mask_redis_url(url)
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        return Check("redis", WARN, f"cannot check a '{scheme}://' broker URL ({shown}); only redis:// and rediss:// are checked")
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    has_password = urlsplit(url).password is not None
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
        info = client.info("server")
        try:
            policy = client.info("memory").get("maxmemory_policy", "noeviction")
        except redis.RedisError:
            policy = "noeviction"
    except redis.AuthenticationError as exc:
        if has_password:
            return Check("redis", FAIL, f"Redis at {shown} rejected the password ({exc}): put the password Redis was "
                                        "started with (REDIS_PASSWORD / requirepass) into TEACHER_REDIS_URL as "
                                        "redis://:PASSWORD@host:port/db")
        return Check("redis", FAIL, f"Redis at {shown} requires a password, but TEACHER_REDIS_URL has none: set "
                                    "TEACHER_REDIS_URL=redis://:PASSWORD@host:port/db with the Redis password")
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "authenticat" in str(exc).lower():
            return Check("redis", FAIL, f"Redis at {shown} requires a password, but TEACHER_REDIS_URL has none: set "
                                        "TEACHER_REDIS_URL=redis://:PASSWORD@host:port/db with the Redis password")
        return Check("redis", FAIL, f"Redis at {shown} answered with an error: {exc}")
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        why = str(exc) or type(exc).__name__
        return Check("redis", FAIL, f"cannot reach Redis at {shown} ({why}): is redis running (`docker compose ps "
                                    "redis`), and do the host and port in TEACHER_REDIS_URL point at it?")
    finally:
        client.close()
    version = info.get("redis_version", "?")
    if policy != "noeviction":
        return Check("redis", WARN, f"Redis {version} at {shown} is reachable, but maxmemory-policy is '{policy}': it may "
                                    "evict queued job messages under memory pressure; set maxmemory-policy noeviction")
    auth = "authenticated" if has_password else "no password required (fine only on a private network)"
    return Check("redis", OK, f"Redis {version} at {shown}, {auth}")


# --------------------------------------------------------------------------------- database
def _sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for other backends (and for in-memory SQLite)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _open_engine(url: str, timeout: float) -> Any:
    from sqlalchemy.engine import make_url

    from common.store import make_engine

    if make_url(url).get_backend_name() == "postgresql":
        return make_engine(url, connect_args={"connect_timeout": max(1, int(timeout))})
    return make_engine(url)


def check_database(url: str, timeout: float) -> tuple[Check, bool]:
    """(the check, whether the store is usable enough to read worker heartbeats)."""
    from sqlalchemy.engine import make_url

    from common.store import LATEST_VERSION, current_version
    from common.store.db import current_revision

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except Exception as exc:
        return Check("database", FAIL, f"TEACHER_DATABASE_URL is not a database URL ({exc}): use sqlite:///path/teacher.db "
                                       "or postgresql://user:password@host/db"), False
    path = _sqlite_path(url)
    if path is not None and not path.exists():
        return Check("database", FAIL, f"the job store file {path} does not exist: run `teacher db upgrade` to create it "
                                       "(docker compose runs it as the `migrate` service), or fix TEACHER_DATABASE_URL"), False
    try:
        engine = _open_engine(url, timeout)
    except Exception as exc:  # e.g. a driver that is not installed
        return Check("database", FAIL, f"cannot open the database at {shown}: {exc}"), False
    try:
        with engine.connect() as conn:
            version, revision = current_version(conn), current_revision(conn)
            unanalyzed = _without_autovacuum(conn) if conn.dialect.name == "postgresql" else None
    except Exception as exc:
        return _connect_failure(shown, path, exc), False
    finally:
        engine.dispose()
    if version == 0:
        return Check("database", FAIL, f"the database at {shown} is reachable but has no job-store schema (version 0 of "
                                       f"{LATEST_VERSION}): run `teacher db upgrade`"), False
    if version < LATEST_VERSION:
        return Check("database", FAIL, f"the database at {shown} is at schema version {version}, behind this code's "
                                       f"{LATEST_VERSION}: run `teacher db upgrade`"), True
    if version > LATEST_VERSION:
        # An Alembic revision this code does not know: how far ahead it is, only newer code knows.
        at = f"schema revision {revision}" if revision else f"schema version {version}"
        return Check("database", FAIL, f"the database at {shown} is at {at}, newer than this code's "
                                       f"{LATEST_VERSION}: upgrade teacher on this host to the version the others run"), True
    if unanalyzed:
        return Check("database", WARN, f"{shown}, schema version {version} (latest), but {unanalyzed}: PostgreSQL's "
                                       "planner then never learns how many jobs there are, and listing a user's jobs "
                                       "reads all of them (15 ms instead of 0.1 ms for 10,000 jobs): turn autovacuum "
                                       "on, or run ANALYZE after the store grows"), True
    return Check("database", OK, f"{shown}, schema version {version} (latest)"), True


def _without_autovacuum(conn: Any) -> str | None:
    """What keeps autovacuum from analysing the job store's tables (it is off on the server, or
    for some of them), or None. Without statistics the planner takes the list's page query for
    one row and scans and sorts every job of the user (docs/performance.md, GET /api/v1/jobs)."""
    from sqlalchemy import text

    from common.store.models import Job, JobAttempt, JobTag

    tables = [model.__tablename__ for model in (Job, JobAttempt, JobTag)]  # what the list reads
    reasons = [] if conn.exec_driver_sql("SHOW autovacuum").scalar() == "on" else ["autovacuum is off on the server"]
    off = [name for name, options in conn.execute(
               text("SELECT relname, reloptions FROM pg_class WHERE relname = ANY(:names) AND relkind = 'r'"),
               {"names": tables})
           if any(_disables_autovacuum(option) for option in options or ())]
    if off:
        reasons.append(f"autovacuum is off for the table(s) {', '.join(sorted(off))}")
    return " and ".join(reasons) or None


def _disables_autovacuum(option: str) -> bool:
    key, _, value = option.partition("=")  # as ALTER TABLE ... SET (autovacuum_enabled = off) stored it
    return key == "autovacuum_enabled" and value.lower() in {"off", "false", "f", "no", "n", "0"}


def _connect_failure(shown: str, sqlite_file: Path | None, exc: Exception) -> Check:
    why = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
    low = why.lower()
    if sqlite_file is not None:
        return Check("database", FAIL, f"cannot open the SQLite job store {sqlite_file} ({why}): check that "
                                       "TEACHER_DATABASE_URL points at the job store file, that this user may read and "
                                       "write it and its folder, and that it is not damaged")
    if "password authentication failed" in low or "no password supplied" in low or re.search(r'role ".*" does not exist', low):
        return Check("database", FAIL, f"the database server at {shown} rejected the login ({why}): fix the user and "
                                       "password in TEACHER_DATABASE_URL")
    m = re.search(r'database "(.*)" does not exist', why)
    if m:
        return Check("database", FAIL, f"the database server at {shown} is reachable but has no database "
                                       f"'{m.group(1)}': create it (`createdb {m.group(1)}`) or fix the name in "
                                       "TEACHER_DATABASE_URL")
    return Check("database", FAIL, f"cannot connect to the database at {shown} ({why}): is the database server "
                                   "running and reachable from here, and are the host and port in TEACHER_DATABASE_URL "
                                   "right?")


# ---------------------------------------------------------------------------------- workers
def _fmt_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def check_workers(url: str, queues: Iterable[str], beat_s: float, timeout: float) -> list[Check]:
    from sqlalchemy import select

    from common.store import WorkerBeat, utcnow

    limit = WorkerBeat.ALIVE_BEATS * beat_s  # the /api/v1/health rule (WorkerBeat.is_alive)
    engine = _open_engine(url, timeout)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(WorkerBeat.name, WorkerBeat.queues, WorkerBeat.seen_at, WorkerBeat.devices)).all()
    except Exception as exc:
        why = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return [Check("workers", FAIL, f"cannot read worker heartbeats from the job store ({why})")]
    finally:
        engine.dispose()
    now = utcnow()
    beats = [(name, {q for q in (qs or "").split(",") if q}, (now - seen).total_seconds()) for name, qs, seen, _ in rows]
    devices = {name: stored(raw) for name, _, _, raw in rows}
    def start(q: str) -> str:
        return f"start one (`docker compose up -d worker`, or `celery -A worker.celery_app worker -Q {q} --concurrency 1`)"

    out = []
    for q in queues:
        on_queue = sorted((b for b in beats if q in b[1]), key=lambda b: b[2])
        alive = [b for b in on_queue if b[2] < limit]
        if alive:
            names = ", ".join(f"{n} (seen {_fmt_age(max(0.0, a))} ago; {_devices_text(devices[n])})" for n, _, a in alive[:3])
            more = f" and {len(alive) - 3} more" if len(alive) > 3 else ""
            out.append(Check(f"workers[{q}]", OK, f"queue '{q}': {len(alive)} live worker(s): {names}{more}"))
        elif on_queue:
            name, _, age = on_queue[0]
            out.append(Check(f"workers[{q}]", FAIL,
                             f"queue '{q}' has no live worker: the last one ({name}) was last seen {_fmt_age(age)} ago "
                             f"(alive means seen within {limit:g}s); jobs on '{q}' will wait. Restart the worker or "
                             + start(q)))
        else:
            out.append(Check(f"workers[{q}]", FAIL,
                             f"queue '{q}' has no worker: none has ever reported on it, so jobs on '{q}' will wait; "
                             + start(q) + ", and check that its TEACHER_QUEUES and TEACHER_DATABASE_URL match this host's"))
    for name, _, age in sorted(beats):
        found = devices[name]
        if age < limit and found is not None and found.error:
            out.append(Check(f"devices[{name}]", WARN,
                             f"worker {name}'s device probe failed ({found.error}): it takes no job that asks for "
                             "GPUs (resources.gpus); check `nvidia-smi`, the driver and the worker's GPU reservation, "
                             "then restart it"))
    return out


def _devices_text(found: Devices | None) -> str:
    """What a worker reported at its start: "2 × NVIDIA H100 80GB", "CPU (16 cores)"."""
    if found is None:
        return "devices not reported"
    fake = f" [{found.source}]" if found.source != "probe" else ""  # a test's stand-in says so
    return describe(found) + fake


# ------------------------------------------------------------------------------------- cuda
_PROBE = r"""
import json, sys
try:
    import torch
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
    sys.exit(0)
devices = []
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        devices.append({"index": i, "name": p.name, "total_memory": int(p.total_memory)})
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "devices": devices}))
"""


def check_cuda(python: str, timeout: float) -> list[Check]:
    # What the workers see is in the workers check (each reports the devices it probed at its
    # start); this is the host `teacher doctor` runs on.
    out: list[Check] = []
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        out.append(Check("cuda[local]", WARN, f"cannot run the training interpreter {python}: it does not exist; fix "
                                              "TEACHER_PYTHON (or unset it to use this Python)"))
        return out
    except subprocess.TimeoutExpired:
        out.append(Check("cuda[local]", WARN, f"{python} did not finish importing torch within {timeout:g}s; the host "
                                              "may be overloaded or the CUDA driver hung"))
        return out
    except OSError as exc:
        out.append(Check("cuda[local]", WARN, f"cannot run the training interpreter {python}: {exc}"))
        return out
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    try:
        report = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        out.append(Check("cuda[local]", WARN, f"the CUDA probe with {python} failed (exit {proc.returncode}): {tail}"))
        return out
    if "error" in report:
        out.append(Check("cuda[local]", WARN, f"torch cannot be imported by {python} ({report['error']}): install the "
                                              "project's pinned torch/torchvision into that environment"))
        return out
    devices = report.get("devices") or []
    if devices:
        desc = "; ".join(f"cuda:{d['index']} {d['name']} {d['total_memory'] / GIB:.1f} GiB" for d in devices)
        out.append(Check("cuda[local]", OK, f"this host: {desc} (torch {report.get('torch')}, CUDA {report.get('cuda')})"))
    elif not report.get("cuda"):
        out.append(Check("cuda[local]", WARN, f"no CUDA device visible on this host: torch {report.get('torch')} is a "
                                              "CPU-only build; install the CUDA wheels to train on a GPU"))
    else:
        hint = [ln.strip() for ln in proc.stderr.splitlines() if "CUDA" in ln or "driver" in ln.lower()]
        why = f" ({hint[-1][:200]})" if hint else ""
        out.append(Check("cuda[local]", WARN, f"no CUDA device visible on this host{why}: training here runs on the CPU. "
                                              "On a GPU host check `nvidia-smi`, the NVIDIA driver and, in docker, "
                                              "the worker's GPU reservation"))
    return out


# -------------------------------------------------------------------------------- data root
def check_data_root(root: Path) -> Check:
    shown = str(root)
    if not root.exists():
        return Check("data", FAIL, f"data root {shown} does not exist: create it and put datasets in it (one folder "
                                   "per dataset, e.g. `teacher make-data`), or point TEACHER_DATA_ROOT at it")
    if not root.is_dir():
        return Check("data", FAIL, f"data root {shown} is not a directory: point TEACHER_DATA_ROOT at the folder that "
                                   "holds the datasets")
    try:
        entries = list(os.scandir(root))
    except PermissionError:
        return Check("data", FAIL, f"data root {shown} is not readable by this user (uid {os.getuid()}): fix its "
                                   "permissions (chmod/chown, or TEACHER_UID/TEACHER_GID in docker)")
    except OSError as exc:
        return Check("data", FAIL, f"data root {shown} cannot be listed ({exc})")
    datasets = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
    if not datasets:
        return Check("data", WARN, f"data root {shown} holds no datasets: put one folder per dataset there (or run "
                                   "`teacher make-data` for a synthetic one)")
    names = ", ".join(datasets[:5]) + (", ..." if len(datasets) > 5 else "")
    return Check("data", OK, f"{shown}: {len(datasets)} dataset(s) ({names})")


# -------------------------------------------------------------------------------- jobs root
def check_jobs_root(root: Path, min_free_gib: float, warn_free_gib: float) -> list[Check]:
    shown = str(root)
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    out: list[Check] = []
    if root.exists() and not root.is_dir():
        out.append(Check("jobs", FAIL, f"jobs root {shown} is not a directory: point TEACHER_JOBS_ROOT at a folder "
                                       "for run directories and checkpoints"))
    elif not root.exists():
        if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
            out.append(Check("jobs", WARN, f"jobs root {shown} does not exist yet; the worker will create it under "
                                           f"{existing}"))
        else:
            out.append(Check("jobs", FAIL, f"jobs root {shown} does not exist and cannot be created ({existing} is not "
                                           "a writable directory): create it, or fix TEACHER_JOBS_ROOT"))
    else:
        try:
            fd, tmp = tempfile.mkstemp(prefix=".teacher-doctor-", dir=root)
            os.close(fd)
            os.unlink(tmp)
            out.append(Check("jobs", OK, f"{shown} is writable"))
        except OSError as exc:
            out.append(Check("jobs", FAIL, f"jobs root {shown} is not writable by this user (uid {os.getuid()}: "
                                           f"{exc.strerror or exc}): workers cannot save checkpoints; fix its "
                                           "permissions or free the volume"))
    try:
        usage = shutil.disk_usage(existing)
    except OSError as exc:
        out.append(Check("disk", FAIL, f"cannot read free space for {shown} ({exc})"))
        return out
    free = usage.free / GIB
    where = f"{free:.1f} GiB free of {usage.total / GIB:.1f} GiB on the jobs root's filesystem ({existing})"
    if free < min_free_gib:
        out.append(Check("disk", FAIL, f"only {where}, below the {min_free_gib:g} GiB minimum: checkpoints will fail to "
                                       "save; delete old runs or move TEACHER_JOBS_ROOT to a bigger volume"))
    elif free < warn_free_gib:
        out.append(Check("disk", WARN, f"{where}, below {warn_free_gib:g} GiB: a few more runs may fill it; delete old "
                                       "runs or grow the volume"))
    else:
        out.append(Check("disk", OK, where))
    return out


# ---------------------------------------------------------------------------------- command
def run_checks(only: Iterable[str] = CHECKS, *, timeout: float = 5.0, cuda_timeout: float = 120.0,
               min_free_gib: float = 1.0, warn_free_gib: float = 10.0) -> list[Check]:
    selected = set(only) or set(CHECKS)
    settings, error = _settings_or_none()
    if settings is None:
        return [Check("settings", FAIL, f"the environment is invalid: {error}")]
    settings, note = with_local_stack(settings)
    results: list[Check] = [note] if note else []
    if "redis" in selected:
        results.append(check_redis(settings.redis_url, timeout))
    db_usable = False
    if "database" in selected or "workers" in selected:
        db_check, db_usable = check_database(settings.database_url, timeout)
        if "database" in selected or not db_usable:  # the reason workers cannot be checked
            results.append(db_check)
    if "workers" in selected:
        if db_usable:
            results.extend(check_workers(settings.database_url, settings.queues, settings.worker_beat_s, timeout))
        else:
            results.append(Check("workers", WARN, "not checked: the job store is not usable (see the database check)"))
    if "cuda" in selected:
        results.extend(check_cuda(settings.python or sys.executable, cuda_timeout))
    if "data" in selected:
        results.append(check_data_root(settings.data_root))
    if "jobs" in selected:
        results.extend(check_jobs_root(settings.jobs_root, min_free_gib, warn_free_gib))
    return results


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--only", "only", multiple=True, type=click.Choice(CHECKS),
              help="Run only this check (repeatable). Default: all.")
@click.option("--timeout", type=click.FloatRange(0.1, 120), default=5.0, show_default=True,
              help="Seconds to wait for Redis and the database.")
@click.option("--min-free-gib", type=click.FloatRange(0), default=1.0, show_default=True,
              help="FAIL when the jobs root's filesystem has less free space (GiB).")
@click.option("--warn-free-gib", type=click.FloatRange(0), default=10.0, show_default=True,
              help="WARN when it has less free space than this (GiB).")
def doctor(as_json: bool, only: tuple[str, ...], timeout: float, min_free_gib: float, warn_free_gib: float) -> None:
    """Check this deployment (Redis, job store, workers, CUDA, data and jobs roots, disk) and say
    what is wrong. Reads the same TEACHER_* environment as the service. Exit 1 if a check FAILs."""
    results = run_checks(only or CHECKS, timeout=timeout, min_free_gib=min_free_gib, warn_free_gib=warn_free_gib)
    failed = sum(r.status == FAIL for r in results)
    warned = sum(r.status == WARN for r in results)
    if as_json:
        click.echo(json.dumps({"ok": failed == 0, "checks": [asdict(r) for r in results]}, indent=2))
    else:
        width = max(len(r.check) for r in results)
        for r in results:
            click.echo(f"{r.status:<4}  {r.check:<{width}}  {r.message}")
        if failed:
            click.echo(f"doctor: {failed} problem(s) to fix, {warned} warning(s)")
        else:
            click.echo(f"doctor: no problems found ({warned} warning(s))")
    if failed:
        sys.exit(1)
