"""A seeded chaos soak of the job service: ``python -m bench.soak --minutes 20 --jobs 24 --seed 7``.

Real processes as deployed, each its own process in a private directory: redis-server with AOF
(``appendfsync everysec``, ``noeviction``, a password), the API under gunicorn, two Celery workers
with the docker-compose command (``--pool solo``), the reconciler loop, a SQLite job store and a
small generated dataset. It submits small jobs (``configs/demo.yaml`` with overrides: 2-3
epochs of 32 px images; some with an Idempotency-Key that is replayed later, some chained with
``after``) over the fault window, and every 4-12 s injects one fault from a schedule drawn from
the seed: SIGKILL of a worker, of a training child, of redis-server, of the gunicorn master or of
the reconciler (each restarted 1-5 s later), or SIGTERM of a worker (restarted once it exited).
It polls the API throughout. After the window it lets the service settle (with a deadline) and
checks invariants (see ``INVARIANTS``), then writes a JSON report and prints a summary with the
seed and the command that replays it. Exit status: 0 no violation, 1 violations, 2 bad usage.

The seed fixes the plan (job specs, submission and replay times, fault kinds, gaps, restart
delays and target picks); what a fault hits still depends on process timing, so a replay repeats
the schedule, not necessarily the exact interleaving.

The process helpers (``Stack``, ``make_stack``, ``deployed_worker_argv``, ``stop_process``,
``wait_until``) are the service tests' own, imported from tests/support/stack.py (none of them
is a fixture); only the killable Redis, the reconciler process and /proc scanning live here.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import requests

from tests.support.stack import ROOT, Stack, deployed_worker_argv, free_port, make_stack, stop_process, wait_until

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
FAULT_KINDS = ("worker_kill", "worker_term", "child_kill", "redis_kill", "api_kill", "reconciler_kill")

INVARIANTS: dict[str, str] = {
    "terminal": "every submitted job ends succeeded, failed or cancelled",
    "stored_once": "every submitted job is stored exactly once (one row per name, no extra rows)",
    "submit_accepted": "every submission is eventually accepted (202), or refused only because its parent already failed",
    "idempotent_replay": "every Idempotency-Key replay returns the same job with Idempotent-Replayed: true",
    "epochs_once": "every succeeded job's history, steps.jsonl and /metrics have each epoch exactly once",
    "checkpoints_verify": "every checkpoint in every manifest exists, matches its size and sha256, loads with "
                          "torch.load(weights_only=True) and holds the epoch the manifest says",
    "best_is_best": "a succeeded job's best (manifest, best.pt, HTTP ETag) is the best recorded epoch by its metric",
    "last_is_last": "a succeeded job's last.pt is its last epoch",
    "pruned": "a succeeded job keeps exactly its newest keep_last epoch files, on disk and in the manifest",
    "progress_final": "a succeeded job's progress.json says succeeded",
    "chains_waited": "a chained job started only after its parent finished",
    "finished_not_failed": "no job whose run finished on disk (all epochs, last.pt at the last one) is marked failed",
    "broker_clean": "no queued or unacked message in Redis for a finished job",
    "no_orphans": "no training process outlives its job or the stack; no gunicorn worker outlives its master",
    "no_5xx": "no API response is a 5xx (GET /health's documented 503 aside)",
    "components_stay_up": "no service process exits unless the soak stopped it, and each restarts when asked",
    "harness": "the soak itself ran to the end (a crash here is a soak bug, or a service that never came up)",
}


# ----------------------------------------------------------------------------------- options
@dataclass
class Options:
    minutes: float = 20.0            # the fault window
    jobs: int = 24
    seed: int = 0
    out: Path | None = None          # report path (default: WORKDIR/report.json)
    workdir: Path | None = None      # default: a fresh temp dir
    settle_minutes: float = 10.0     # after the window: deadline for every job to end
    gap_min_s: float = 4.0           # between faults
    gap_max_s: float = 12.0
    restart_min_s: float = 1.0       # between a kill and the restart
    restart_max_s: float = 5.0
    submit_fraction: float = 0.75    # jobs are submitted over this first part of the window
    max_attempts: int = 3
    heartbeat_s: float = 1.0
    stale_after_s: float = 12.0
    reconcile_interval_s: float = 3.0
    lost_grace_s: float = 5.0
    cancel_grace_s: float = 30.0
    classes: int = 6
    train_per_class: int = 24
    val_per_class: int = 8
    keep: bool = False               # keep the work dir (checkpoints included) even when all is well

    def replay_args(self) -> str:
        """The command-line options that reproduce this soak (defaults left out, seed always in)."""
        defaults = Options()
        args = [f"--minutes {self.minutes:g}", f"--jobs {self.jobs}", f"--seed {self.seed}"]
        for f in dataclasses.fields(self):
            if f.name in ("minutes", "jobs", "seed", "out", "workdir", "keep"):
                continue
            value = getattr(self, f.name)
            if value != getattr(defaults, f.name):
                args.append(f"--{f.name.replace('_', '-')} {value:g}" if isinstance(value, float)
                            else f"--{f.name.replace('_', '-')} {value}")
        return " ".join(args)

    def replay_commands(self) -> list[str]:
        args = self.replay_args()
        return [f'make soak ARGS="{args}"', f".venv/bin/python -m bench.soak {args}"]


# -------------------------------------------------------------------------------------- plan
@dataclass
class JobPlan:
    index: int
    name: str
    epochs: int
    submit_at: float                  # seconds into the fault window
    idempotency_key: str | None = None
    after: int | None = None          # index of the parent job
    replays: list[float] = field(default_factory=list)

    def body(self, parent_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "config": "demo", "name": self.name,
            "overrides": {"optim.epochs": self.epochs, "optim.batch_size": 16, "runtime.device": "cpu",
                          "runtime.log_interval": 1, "checkpoint.keep_last": 1},
        }
        if parent_id is not None:
            body["after"] = parent_id
        return body


@dataclass
class FaultPlan:
    gap_s: float
    kind: str
    restart_after_s: float
    pick: float                       # in [0, 1): which of the live targets


def make_plan(opts: Options) -> tuple[list[JobPlan], list[FaultPlan]]:
    """Everything random about a soak, from the seed alone. Jobs and faults use separate streams,
    so --jobs does not change the fault schedule."""
    window = opts.minutes * 60
    rj = random.Random(f"{opts.seed}:jobs")
    head = max(1, opts.jobs // 4)     # a first batch at t=0: both workers busy from the start
    times = sorted([0.0] * head + [rj.uniform(0, opts.submit_fraction * window) for _ in range(opts.jobs - head)])
    jobs: list[JobPlan] = []
    for i, t in enumerate(times):
        job = JobPlan(index=i, name=f"soak-{opts.seed}-{i:03d}", epochs=rj.choice((2, 3)), submit_at=t)
        if rj.random() < 0.4:
            job.idempotency_key = f"soak-{opts.seed}-{i}-{rj.getrandbits(32):08x}"
            job.replays = sorted(rj.uniform(t, window) for _ in range(rj.choice((1, 2))))
        if i > 0 and rj.random() < 0.3:
            job.after = rj.randrange(max(0, i - 3), i)
        jobs.append(job)
    rf = random.Random(f"{opts.seed}:faults")
    faults: list[FaultPlan] = []
    elapsed = 0.0
    while elapsed < window:
        f = FaultPlan(gap_s=rf.uniform(opts.gap_min_s, opts.gap_max_s), kind=rf.choice(FAULT_KINDS),
                      restart_after_s=rf.uniform(opts.restart_min_s, opts.restart_max_s), pick=rf.random())
        faults.append(f)
        elapsed += f.gap_s + f.restart_after_s
    return jobs, faults


# ---------------------------------------------------------------------------------- processes
@dataclass
class Proc:
    pid: int
    ppid: int
    pgid: int
    argv: list[str]
    cwd: str


def live_processes() -> Iterator[Proc]:
    """Every process on the machine that is not a zombie (a zombie has exited: only its parent's
    wait is missing, and orphans' zombies may sit under an init that never reaps)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] in ("Z", "X"):
                continue
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                cwd = ""
            yield Proc(int(entry), int(fields[1]), int(fields[2]), [a for a in argv if a], cwd)
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked


def trainers(jobs_root: Path) -> list[Proc]:
    """`teacher train` children (and their pre-exec guard) of this soak's jobs."""
    root = str(jobs_root) + os.sep
    return sorted((p for p in live_processes() if "train" in p.argv and any(a.startswith(root) for a in p.argv)),
                  key=lambda p: p.pid)


def job_of_trainer(proc: Proc, jobs_root: Path) -> str | None:
    root = str(jobs_root) + os.sep
    for a in proc.argv:
        if a.startswith(root):
            return a[len(root):].split(os.sep, 1)[0]
    return None


class AofRedis:
    """redis-server as docker-compose.yml runs it (AOF everysec, noeviction, a password) on a fixed
    port and directory, so that a SIGKILLed one comes back on the same URL from its AOF."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.url = f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.dir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                 "--requirepass", self.password, "--appendonly", "yes", "--appendfsync", "everysec",
                 "--maxmemory-policy", "noeviction", "--save", "", "--protected-mode", "yes"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc = self.proc
        wait_until(lambda: proc.poll() is not None or self.client().ping(), 60, "redis-server to start")
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited {proc.returncode}: {(self.dir / 'redis.log').read_text()[-1500:]}")

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(port=self.port, password=self.password, socket_connect_timeout=2, socket_timeout=10)

    def kill9(self) -> None:
        assert self.proc is not None
        stop_process(self.proc, sig=signal.SIGKILL, timeout=5)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig=signal.SIGTERM, timeout=20)


# ---------------------------------------------------------------------------------- the soak
class Soak:
    def __init__(self, opts: Options):
        self.opts = opts
        self.own_workdir = opts.workdir is None
        self.workdir = Path(opts.workdir or tempfile.mkdtemp(prefix="teacher-soak-")).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.out = Path(opts.out).resolve() if opts.out else self.workdir / "report.json"
        self.jobs_plan, self.faults_plan = make_plan(opts)
        self.lock = threading.Lock()
        self.stop_polling = threading.Event()
        self.window_over = threading.Event()
        self.t0 = time.monotonic()
        self.violations: list[dict[str, Any]] = []
        self.faults_done: list[dict[str, Any]] = []
        self.incidents: list[dict[str, Any]] = []
        self.job_ids: dict[int, str] = {}           # plan index -> job id
        self.refused: dict[int, str] = {}           # plan index -> why the API refused it (legitimately)
        self.replays: list[dict[str, Any]] = []
        self.api_status: Counter[str] = Counter()
        self.api_unavailable = 0
        self.api_5xx: list[dict[str, Any]] = []
        self.current_fault: str | None = None
        self.redis: AofRedis | None = None
        self.stack: Stack | None = None
        self.api_port = 0
        self.reconciler: subprocess.Popen[bytes] | None = None
        self.slots: list[subprocess.Popen[Any] | None] = [None, None]
        self.generation = 0
        self.expected_down: set[str] = set()        # components the soak itself stopped

    # -- bookkeeping ------------------------------------------------------------------------
    def now(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def log(self, msg: str) -> None:
        print(f"[soak {self.now():7.1f}s] {msg}", flush=True)

    def violate(self, invariant: str, detail: str, job: str | None = None) -> None:
        with self.lock:
            self.violations.append({"invariant": invariant, "job": job, "detail": detail, "t_s": self.now()})
        self.log(f"VIOLATION {invariant}: {detail}")

    @property
    def settings(self):  # type: ignore[no-untyped-def]
        assert self.stack is not None
        return self.stack.settings

    def sessions(self):  # type: ignore[no-untyped-def]
        from worker.store import sessions_for

        return sessions_for(self.settings.database_url)

    def db_jobs(self) -> list[Any]:
        from sqlalchemy import select

        from common.store import Job

        with self.sessions()() as s:
            rows = list(s.scalars(select(Job)))
            for r in rows:
                s.expunge(r)
            return rows

    # -- HTTP ---------------------------------------------------------------------------------
    def http(self, method: str, path: str, **kw: Any) -> requests.Response | None:
        """One API call; records its status (and every 5xx). None when the API is unreachable
        (killed or restarting): expected under faults, counted but not a violation."""
        assert self.stack is not None
        headers = {**self.stack.headers, **kw.pop("headers", {})}
        try:
            r = requests.request(method, self.stack.api_url + path, headers=headers, timeout=kw.pop("timeout", 15), **kw)
        except requests.RequestException as exc:
            with self.lock:
                self.api_unavailable += 1
            self._last_http_error = exc
            return None
        with self.lock:
            self.api_status[str(r.status_code)] += 1
            if r.status_code >= 500 and not path.startswith("/api/v1/health"):
                self.api_5xx.append({"t_s": self.now(), "method": method, "path": path, "status": r.status_code,
                                     "body": r.text[:300] if not kw.get("stream") else "", "during": self.current_fault})
        return r

    _last_http_error: BaseException | None = None

    # -- components ---------------------------------------------------------------------------
    def start_all(self) -> None:
        from worker.training.synthetic import SyntheticSpec, make_dataset

        o = self.opts
        data = self.workdir / "data"
        make_dataset(data / "synthetic", SyntheticSpec(num_classes=o.classes, train_per_class=o.train_per_class,
                                                       val_per_class=o.val_per_class))
        self.redis = AofRedis(self.workdir / "redis")
        self.redis.start()
        base = self.workdir / "stack"
        base.mkdir(exist_ok=True)
        self.stack = make_stack(
            base, self.redis.url, data, f"sqlite:///{base / 'state' / 'teacher.db'}",
            TEACHER_HEARTBEAT_S=f"{o.heartbeat_s:g}", TEACHER_STALE_AFTER_S=f"{o.stale_after_s:g}",
            TEACHER_RECONCILE_INTERVAL_S=f"{o.reconcile_interval_s:g}",
            TEACHER_LOST_MESSAGE_GRACE_S=f"{o.lost_grace_s:g}", TEACHER_CANCEL_GRACE_S=f"{o.cancel_grace_s:g}",
            TEACHER_MAX_ATTEMPTS=str(o.max_attempts), TEACHER_WORKER_BEAT_S="2",
            # Two trainers share the machine: one thread each keeps the soak's CPU use modest.
            OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
        )
        self.api_port = free_port()
        self.start_api()
        self.stack.headers = self.stack.token("soak")
        self.start_reconciler()
        for slot in range(len(self.slots)):
            self.start_worker(slot)

    def start_api(self) -> None:
        assert self.stack is not None
        self.stack.start_api(self.api_port, workers=2, threads=8)

    def start_reconciler(self) -> None:
        assert self.stack is not None
        with (self.stack.base / "reconciler.log").open("ab") as log:
            self.reconciler = subprocess.Popen([sys.executable, "-m", "worker.reconciler"], env=self.stack.env,
                                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_worker(self, slot: int) -> None:
        """The docker-compose worker command, plus a node name per slot and start (as separate
        containers would have: different hostnames)."""
        assert self.stack is not None
        self.generation += 1
        argv = deployed_worker_argv() + ["-n", f"soak-w{slot}-g{self.generation}@%h"]
        self.slots[slot] = self.stack.start_worker(argv, may_exit=True)

    def components(self) -> dict[str, subprocess.Popen[Any] | None]:
        assert self.stack is not None and self.redis is not None
        return {"redis": self.redis.proc, "api": self.stack.api, "reconciler": self.reconciler,
                **{f"worker{i}": p for i, p in enumerate(self.slots)}}

    def restart(self, name: str) -> None:
        """Start ``name`` again, retrying for two minutes: one failed start (a port still held,
        a broker not back yet) must not end the soak."""
        starters: dict[str, Callable[[], None]] = {
            "redis": lambda: self.redis.start(),  # type: ignore[union-attr]
            "api": self.start_api, "reconciler": self.start_reconciler,
            **{f"worker{i}": (lambda i=i: self.start_worker(i)) for i in range(len(self.slots))},
        }
        deadline = time.monotonic() + 120
        while True:
            try:
                starters[name]()
                self.expected_down.discard(name)
                return
            except Exception as exc:  # AssertionError from the Stack helpers, OSError, RuntimeError
                self.incidents.append({"t_s": self.now(), "what": f"restart of {name} failed", "error": repr(exc)[:500]})
                if time.monotonic() > deadline:
                    self.violate("components_stay_up", f"{name} could not be restarted for 120 s: {exc!r}"[:600])
                    self.expected_down.discard(name)
                    return
                time.sleep(2)

    def check_up(self) -> None:
        """Restart anything that died without the soak stopping it (and say so)."""
        for name, proc in self.components().items():
            if name in self.expected_down or proc is None or proc.poll() is None:
                continue
            self.violate("components_stay_up", f"{name} (pid {proc.pid}) exited by itself with {proc.returncode}")
            self.restart(name)

    def supervised_sleep(self, seconds: float, *, stop_at: float | None = None) -> bool:
        """Sleep, checking the components every half second; True when ``stop_at`` passed."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if stop_at is not None and time.monotonic() >= stop_at:
                return True
            self.check_up()
            time.sleep(min(0.5, max(0.0, end - time.monotonic())))
        return stop_at is not None and time.monotonic() >= stop_at

    # -- faults -------------------------------------------------------------------------------
    def fault_loop(self, window_end: float) -> None:
        try:
            for n, f in enumerate(self.faults_plan):
                if self.supervised_sleep(f.gap_s, stop_at=window_end):
                    break
                record = {"n": n, "t_s": self.now(), "kind": f.kind, "restart_after_s": round(f.restart_after_s, 1)}
                self.current_fault = f.kind
                try:
                    record.update(self.inject(f))
                finally:
                    self.current_fault = None
                self.faults_done.append(record)
                self.log(f"fault {n}: {f.kind} {record.get('target', '')} {record.get('note', '')}".rstrip())
        except Exception:
            self.violate("harness", f"the fault loop crashed (a harness bug): {traceback.format_exc()[-1500:]}")
        finally:
            self.window_over.set()

    def _jobs_of_worker(self, pid: int) -> list[str]:
        return [j.id for j in self.db_jobs() if j.status == "running" and (j.worker or "").endswith(f":{pid}")]

    def inject(self, f: FaultPlan) -> dict[str, Any]:
        assert self.stack is not None and self.redis is not None
        if f.kind in ("worker_kill", "worker_term"):
            live = [i for i, p in enumerate(self.slots) if p is not None and p.poll() is None]
            if not live:
                return {"note": "no live worker; skipped"}
            slot = live[int(f.pick * len(live))]
            proc = self.slots[slot]
            assert proc is not None
            name = f"worker{slot}"
            out: dict[str, Any] = {"target": f"{name} pid {proc.pid}", "jobs": self._jobs_of_worker(proc.pid)}
            self.expected_down.add(name)
            if f.kind == "worker_kill":
                self.stack.kill_worker(proc)
            else:
                proc.send_signal(signal.SIGTERM)  # what `docker compose stop` delivers (via tini)
                limit = self.opts.cancel_grace_s + 60
                try:
                    proc.wait(timeout=limit)
                    out["note"] = f"exited {proc.returncode} after SIGTERM"
                except subprocess.TimeoutExpired:
                    out["note"] = f"still running {limit:.0f}s after SIGTERM; SIGKILLed"
                    self.incidents.append({"t_s": self.now(), "what": f"{name} ignored SIGTERM for {limit:.0f}s"})
                    self.stack.kill_worker(proc)
            time.sleep(f.restart_after_s)
            self.restart(name)
            return out
        if f.kind == "child_kill":
            live_trainers = [p for p in trainers(self.settings.jobs_root) if "common.apps.cli" in p.argv]
            if not live_trainers:
                return {"note": "no training child running; skipped"}
            victim = live_trainers[int(f.pick * len(live_trainers))]
            try:
                os.kill(victim.pid, signal.SIGKILL)
            except ProcessLookupError:
                return {"target": f"trainer pid {victim.pid}", "note": "already gone"}
            return {"target": f"trainer pid {victim.pid}", "jobs": [job_of_trainer(victim, self.settings.jobs_root)]}
        if f.kind == "redis_kill":
            self.expected_down.add("redis")
            killed = self.redis.proc.pid if self.redis.proc else None
            self.redis.kill9()
            time.sleep(f.restart_after_s)
            self.restart("redis")
            return {"target": f"redis-server pid {killed}"}
        if f.kind == "api_kill":
            master = self.stack.api
            assert master is not None
            self.expected_down.add("api")
            os.kill(master.pid, signal.SIGKILL)  # the master only: its workers must notice and leave
            master.wait(timeout=10)
            note = self._wait_gunicorn_workers_gone(master.pid)
            time.sleep(f.restart_after_s)
            self.restart("api")
            return {"target": f"gunicorn master pid {master.pid}", "note": note}
        if f.kind == "reconciler_kill":
            proc = self.reconciler
            assert proc is not None
            self.expected_down.add("reconciler")
            stop_process(proc, sig=signal.SIGKILL, timeout=5)
            time.sleep(f.restart_after_s)
            self.restart("reconciler")
            return {"target": f"reconciler pid {proc.pid}"}
        raise ValueError(f.kind)

    def _wait_gunicorn_workers_gone(self, pgid: int, timeout: float = 30) -> str:
        """gunicorn workers leave once their master is gone (they check their parent): wait for
        that, since one still listening would hold the port against the restarted API."""
        def group() -> list[Proc]:
            return [p for p in live_processes() if p.pgid == pgid]

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not group():
                return "its workers exited"
            time.sleep(0.2)
        left = group()
        self.violate("no_orphans", f"gunicorn worker(s) {[p.pid for p in left]} still alive {timeout:.0f}s after "
                                   f"their master was SIGKILLed; killed")
        for p in left:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return "workers outlived the master"

    # -- clients ------------------------------------------------------------------------------
    def poll_loop(self) -> None:
        """A user watching: list, status, metrics, checkpoints and logs, about once a second."""
        rng = random.Random(f"{self.opts.seed}:poll")
        n = 0
        while not self.stop_polling.wait(1.0):
            with self.lock:
                ids = sorted(self.job_ids.values())
            n += 1
            try:
                if not ids or n % 5 == 0:
                    self.http("GET", "/api/v1/jobs?limit=50")
                    continue
                job = rng.choice(ids)
                suffix = ("", "/metrics", "/checkpoints", "/logs?tail=20")[n % 4]
                self.http("GET", f"/api/v1/jobs/{job}{suffix}")
            except Exception as exc:  # a harness bug must not silently end the polling
                self.incidents.append({"t_s": self.now(), "what": "poller error", "error": repr(exc)[:300]})

    def _find_by_name(self, name: str) -> str | None:
        rows = [j for j in self.db_jobs() if j.name == name]
        return rows[0].id if rows else None

    def submit(self, job: JobPlan, *, replay: bool = False) -> None:
        parent = self.job_ids.get(job.after) if job.after is not None else None
        if job.after is not None and parent is None:
            self.refused[job.index] = f"parent {job.after} was never accepted"
            return
        body = job.body(parent)
        headers = {"Idempotency-Key": job.idempotency_key} if job.idempotency_key else {}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if not job.idempotency_key:
                # Without a key a lost answer is ambiguous: look before sending again (a client
                # that just re-POSTs would create the duplicate itself).
                found = self._find_by_name(job.name)
                if found:
                    with self.lock:
                        self.job_ids[job.index] = found
                    return
            r = self.http("POST", "/api/v1/jobs", json=body, headers=headers)
            if r is None:
                time.sleep(1)
                if not job.idempotency_key:
                    # A request already inside a dying API may still commit: give it a moment.
                    wait_for = time.monotonic() + 10
                    while time.monotonic() < wait_for and not self._find_by_name(job.name):
                        time.sleep(0.5)
                continue
            if r.status_code == 202:
                job_id = r.json()["id"]
                if replay:
                    self.replays.append({"job": job.name, "t_s": self.now(), "id": job_id,
                                         "replayed_header": r.headers.get("Idempotent-Replayed")})
                    first = self.job_ids.get(job.index)
                    if job_id != first or r.headers.get("Idempotent-Replayed") != "true":
                        self.violate("idempotent_replay", f"replay of {job.name} (key {job.idempotency_key}) returned "
                                     f"{job_id} with Idempotent-Replayed={r.headers.get('Idempotent-Replayed')!r}; "
                                     f"the first submission returned {first}", job_id)
                else:
                    with self.lock:
                        self.job_ids[job.index] = job_id
                    self.log(f"submitted {job.name} -> {job_id}" + (f" after {parent}" if parent else ""))
                return
            if r.status_code == 429:
                time.sleep(float(r.headers.get("Retry-After", "2")))
                continue
            if r.status_code >= 500:
                time.sleep(1)
                continue  # recorded as a 5xx already; a client retries
            if r.status_code == 409 and parent is not None and "never succeed" in r.text:
                self.refused[job.index] = r.json().get("message", r.text[:200])
                return
            self.violate("submit_accepted", f"{job.name}: POST answered {r.status_code}: {r.text[:300]}")
            return
        self.violate("submit_accepted", f"{job.name}: not accepted within 180 s (last error {self._last_http_error!r})")

    def client_loop(self, window_end: float) -> None:
        """Submissions and replays at their planned times, in one thread (a replay needs its
        first submission's answer)."""
        events: list[tuple[float, int, JobPlan, bool]] = []
        for j in self.jobs_plan:
            events.append((j.submit_at, 0, j, False))
            events += [(t, 1, j, True) for t in j.replays]
        for at, _, job, replay in sorted(events, key=lambda e: (e[0], e[1], e[2].index)):
            delay = (self.t0 + at) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if replay and job.index not in self.job_ids:
                continue
            try:
                self.submit(job, replay=replay)
            except Exception:
                self.violate("harness", f"{job.name}: the client crashed (a harness bug): "
                                                f"{traceback.format_exc()[-1500:]}")

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        o = self.opts
        self.log(f"seed {o.seed}, {o.jobs} jobs, {o.minutes:g} min of faults; work dir {self.workdir}")
        report: dict[str, Any] = {}
        try:
            self.start_all()
            self.t0 = time.monotonic()
            window_end = self.t0 + o.minutes * 60
            threads = [threading.Thread(target=self.poll_loop, name="poller", daemon=True),
                       threading.Thread(target=self.fault_loop, args=(window_end,), name="faults", daemon=True),
                       threading.Thread(target=self.client_loop, args=(window_end,), name="clients", daemon=True)]
            for t in threads:
                t.start()
            threads[1].join()
            self.log(f"fault window over after {len(self.faults_done)} faults; settling")
            threads[2].join(timeout=300)
            settled = self.settle()
            self.stop_polling.set()
            threads[0].join(timeout=30)
            self.check_invariants(settled)
        except Exception:
            self.violate("harness", f"the soak crashed (a harness bug or a dead service): "
                                               f"{traceback.format_exc()[-2000:]}")
        finally:
            self.stop_polling.set()
            self.teardown()
        report = self.report(time.monotonic() - started)
        self.finish_workdir()
        return report

    def settle(self) -> bool:
        """Everything up, every job terminal, or the deadline."""
        deadline = time.monotonic() + self.opts.settle_minutes * 60
        while time.monotonic() < deadline:
            self.check_up()
            rows = {j.id: j for j in self.db_jobs()}
            pending = [i for i in self.job_ids.values() if i not in rows or rows[i].status not in TERMINAL]
            if not pending:
                self.log("every job is terminal")
                return True
            time.sleep(1)
        return False

    def teardown(self) -> None:
        if self.stack is not None:
            for proc in self.slots:
                if proc is not None:
                    stop_process(proc, sig=signal.SIGTERM, timeout=self.opts.cancel_grace_s + 30)
            self.stack.stop()
        if self.reconciler is not None:
            stop_process(self.reconciler, timeout=10)
        if self.redis is not None:
            self.redis.stop()
        # Nothing of this soak may outlive it (a trainer whose worker died, a gunicorn worker).
        try:
            wait_until(lambda: not self.own_processes(), 30, "every soak process to exit")
        except AssertionError:
            left = self.own_processes()
            self.violate("no_orphans", "processes still alive 30 s after the stack stopped: "
                         + "; ".join(f"pid {p.pid} {' '.join(p.argv)[:200]}" for p in left))
            for p in left:  # each one was started by this soak (or by a process it started)
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def own_processes(self) -> list[Proc]:
        """Live processes this soak started, directly or not: every service process and trainer
        has this soak's jobs root in its environment (the stack's env, or the child env the
        supervisor derives from it); redis-server is recognised by its port."""
        if self.stack is None:
            return []
        marks = {f"TEACHER_JOBS_ROOT={self.settings.jobs_root}".encode(),
                 f"TEACHER_RUNS_ROOT={self.settings.jobs_root}".encode()}
        port = str(self.redis.port) if self.redis else None
        out = []
        for p in live_processes():
            if p.pid == os.getpid():
                continue
            if port and p.argv[:1] and p.argv[0].endswith("redis-server") and port in p.argv:
                out.append(p)
                continue
            try:
                env = set(Path(f"/proc/{p.pid}/environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            if env & marks:
                out.append(p)
        return out

    def finish_workdir(self) -> None:
        """Checkpoints are large (~130 MB each): delete them unless --keep; keep the logs and run
        files when something failed, delete everything of a clean soak in a temp dir."""
        if self.opts.keep:
            return
        if self.own_workdir and not self.violations:
            for child in self.workdir.iterdir():
                if child != self.out:
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
            return
        for pt in self.workdir.rglob("*.pt"):
            pt.unlink(missing_ok=True)

    # -- invariants ---------------------------------------------------------------------------
    def check_invariants(self, settled: bool) -> None:
        from worker.reconciler import messages_in_broker

        rows = self.db_jobs()
        by_id = {j.id: j for j in rows}
        names = Counter(j.name for j in rows)
        plan_by_name = {j.name: j for j in self.jobs_plan}
        # stored once, and nothing stored that was never accepted
        for name, count in names.items():
            if count != 1:
                self.violate("stored_once", f"{name} is stored {count} times")
        for j in rows:
            plan = plan_by_name.get(j.name)
            if plan is None or self.job_ids.get(plan.index) != j.id:
                self.violate("stored_once", f"row {j.id} ({j.name}) is not a job any submission returned", j.id)
        for plan in self.jobs_plan:
            if plan.index not in self.job_ids and plan.index not in self.refused:
                self.violate("submit_accepted", f"{plan.name} was never accepted")
        # terminal
        for index, job_id in sorted(self.job_ids.items()):
            job = by_id.get(job_id)
            if job is None:
                self.violate("stored_once", f"{self.jobs_plan[index].name}: accepted as {job_id} but not in the store", job_id)
            elif job.status not in TERMINAL:
                self.violate("terminal", f"{job.name} is {job.status} after settling "
                             f"(attempts {job.attempts}, reason {job.failure_reason!r})", job_id)
        if not settled:
            self.log("settle deadline passed with jobs not terminal")
        for index, job_id in sorted(self.job_ids.items()):
            job = by_id.get(job_id)
            if job is not None:
                self.check_run(self.jobs_plan[index], job, by_id)
        # broker: poll a while, an acknowledgement may be on its way
        finished = {j.id for j in rows if j.status in TERMINAL}
        leftovers: dict[str, str] = {}

        def clean() -> bool:
            leftovers.clear()
            pending = messages_in_broker(self.settings)
            unacked = b"\n".join(self.redis.client().hvals("unacked")).decode(errors="replace")  # type: ignore[union-attr]
            for job_id in finished:
                if job_id in unacked:
                    leftovers[job_id] = "unacked"
                elif job_id in pending:
                    leftovers[job_id] = "queued"
            return not leftovers

        try:
            wait_until(clean, 30, "no broker message for finished jobs", interval=1)
        except AssertionError:
            for job_id, where in sorted(leftovers.items()):
                self.violate("broker_clean", f"{by_id[job_id].name} ({by_id[job_id].status}) still has a message in "
                             f"Redis ({where})", job_id)
        # orphans: no trainer once every job ended (an orphan stops after its current step)
        if settled:
            try:
                wait_until(lambda: not trainers(self.settings.jobs_root), 60, "no training process")
            except AssertionError:
                for p in trainers(self.settings.jobs_root):
                    self.violate("no_orphans", f"trainer pid {p.pid} alive after every job ended: {' '.join(p.argv)[:300]}",
                                 job_of_trainer(p, self.settings.jobs_root))
        for e in self.api_5xx:
            self.violate("no_5xx", f"{e['method']} {e['path']} -> {e['status']} at {e['t_s']}s "
                         f"(during {e['during'] or 'no fault'}): {e['body'][:200]}")

    def check_run(self, plan: JobPlan, job: Any, by_id: dict[str, Any]) -> None:
        """One job: its run directory (:func:`run_violations`), its chain, and what the API serves."""
        from common.store.jobs import JobPaths

        run_dir = JobPaths.of(self.settings.jobs_root, job.id).run
        for invariant, detail in run_violations(name=job.name, status=job.status, failure_reason=job.failure_reason,
                                                epochs=plan.epochs, config=job.config, run_dir=run_dir):
            self.violate(invariant, detail, job.id)
        if job.after_id and job.started_at is not None:
            parent = by_id.get(job.after_id)
            if parent is None or parent.finished_at is None or job.started_at < parent.finished_at:
                self.violate("chains_waited", f"{job.name} started at {job.started_at} before its parent "
                             f"{job.after_id} finished ({getattr(parent, 'finished_at', None)})", job.id)
        if job.status != "succeeded":
            return
        expected = list(range(1, plan.epochs + 1))
        r = self.http("GET", f"/api/v1/jobs/{job.id}/metrics")
        if r is None or r.status_code != 200:
            self.incidents.append({"t_s": self.now(), "what": f"GET metrics of {job.name}",
                                   "error": repr(self._last_http_error) if r is None else r.status_code})
        elif (served := [e.get("epoch") for e in r.json().get("epochs", [])]) != expected:
            self.violate("epochs_once", f"{job.name}: GET /metrics serves epochs {served}, expected {expected}", job.id)
        manifest = _read_json(run_dir / "checkpoints" / "manifest.json") or {}
        best_sha = next((e.get("sha256") for e in manifest.get("checkpoints", []) if e.get("name") == "best.pt"), None)
        r = self.http("GET", f"/api/v1/jobs/{job.id}/checkpoints/best", stream=True)
        if r is None:
            self.incidents.append({"t_s": self.now(), "what": f"GET checkpoints/best of {job.name}",
                                   "error": repr(self._last_http_error)})
            return
        etag = (r.headers.get("ETag") or "").removeprefix("W/").strip('"')
        r.close()
        if r.status_code != 200 or etag != best_sha:
            self.violate("best_is_best", f"{job.name}: GET checkpoints/best -> {r.status_code}, ETag {etag[:12]!r}; "
                         f"manifest best.pt sha256 {str(best_sha)[:12]!r}", job.id)

    # -- report -------------------------------------------------------------------------------
    def report(self, runtime_s: float) -> dict[str, Any]:
        rows = {j.id: j for j in self.db_jobs()} if self.stack is not None else {}
        jobs = []
        for plan in self.jobs_plan:
            job_id = self.job_ids.get(plan.index)
            row = rows.get(job_id) if job_id else None
            jobs.append({"name": plan.name, "id": job_id, "epochs": plan.epochs, "idempotent": bool(plan.idempotency_key),
                         "after": self.job_ids.get(plan.after) if plan.after is not None else None,
                         "status": row.status if row else None, "attempts": row.attempts if row else None,
                         "failure_reason": row.failure_reason if row else self.refused.get(plan.index)})
        by_invariant = Counter(v["invariant"] for v in self.violations)
        report = {
            "seed": self.opts.seed, "options": {k: (str(v) if isinstance(v, Path) else v)
                                                for k, v in dataclasses.asdict(self.opts).items()},
            "replay": self.opts.replay_commands(), "runtime_s": round(runtime_s, 1), "workdir": str(self.workdir),
            "ok": not self.violations,
            "invariants": {name: {"description": desc, "violations": by_invariant.get(name, 0)}
                           for name, desc in INVARIANTS.items()},
            "violations": self.violations,
            "faults": self.faults_done, "fault_counts": dict(Counter(f["kind"] for f in self.faults_done)),
            "jobs": jobs, "job_status_counts": dict(Counter(j["status"] for j in jobs)),
            "replays": self.replays,
            "api": {"responses": dict(self.api_status), "unavailable": self.api_unavailable, "5xx": self.api_5xx},
            "incidents": self.incidents,
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(report, indent=2, default=str))
        print(summary(report, self.out), flush=True)
        return report


def summary(report: dict[str, Any], path: Path | None = None) -> str:
    o = report["options"]
    lines = [
        f"chaos soak: seed {report['seed']}, {o['jobs']} jobs, {o['minutes']:g} min of faults, "
        f"{report['runtime_s']:.0f} s in all",
        f"  faults: {len(report['faults'])} ({', '.join(f'{k} {v}' for k, v in sorted(report['fault_counts'].items()))})",
        f"  jobs: {', '.join(f'{k} {v}' for k, v in sorted((str(k), v) for k, v in report['job_status_counts'].items()))}",
        f"  API: {sum(report['api']['responses'].values())} responses "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(report['api']['responses'].items()))}), "
        f"{report['api']['unavailable']} unreachable, {len(report['api']['5xx'])} 5xx",
        "  invariants:",
    ]
    for name, inv in report["invariants"].items():
        lines.append(f"    {'ok    ' if not inv['violations'] else 'FAILED'} {name}"
                     + (f" ({inv['violations']})" if inv["violations"] else ""))
    for v in report["violations"]:
        lines.append(f"  - {v['invariant']}: {v['detail']}")
    for j in report["jobs"]:
        if j["status"] not in ("succeeded", None) or j["failure_reason"]:
            lines.append(f"  job {j['name']} {j['status']} after {j['attempts']} attempt(s): {j['failure_reason']}")
    verdict = "PASSED" if report["ok"] else f"FAILED with {len(report['violations'])} violation(s)"
    lines.append(f"soak {verdict} (seed {report['seed']}); replay with: {report['replay'][0]}")
    if path is not None:
        lines.append(f"report: {path}" + ("" if report["ok"] else f"; logs and run files in {report['workdir']}"))
    return "\n".join(lines)


def run_violations(*, name: str, status: str, failure_reason: str | None, epochs: int, config: dict[str, Any],
                   run_dir: Path) -> list[tuple[str, str]]:
    """The invariants a job's run directory must hold, as (invariant, detail) pairs: every
    manifest entry verifies and loads; a failed job's run did not finish; and for a succeeded
    job each epoch once in history and steps.jsonl, progress says succeeded, best is the best
    recorded epoch by the configured metric, last is the last epoch, and only the newest
    ``keep_last`` epoch files remain (these jobs save every epoch)."""
    from common.config import BEST_METRICS

    found: list[tuple[str, str]] = []
    ckpt_dir = run_dir / "checkpoints"
    history = _read_json(run_dir / "history.json") or {}
    recorded = [e.get("epoch") for e in history.get("epochs", [])]
    manifest = _read_json(ckpt_dir / "manifest.json") or {}
    entries = {e["name"]: e for e in manifest.get("checkpoints", []) if isinstance(e, dict) and e.get("name")}
    progress = _read_json(run_dir / "progress.json") or {}
    expected = list(range(1, epochs + 1))
    for entry_name, entry in sorted(entries.items()):
        problem = checkpoint_problem(ckpt_dir / entry_name, entry)
        if problem:
            found.append(("checkpoints_verify", f"{name} ({status}): {entry_name}: {problem}"))
    last_epoch = entries.get("last.pt", {}).get("epoch")
    finished_on_disk = progress.get("status") == "succeeded" or (recorded == expected and last_epoch == epochs)
    if status == "failed" and finished_on_disk:
        found.append(("finished_not_failed", f"{name} is failed ({failure_reason!r}) but its run finished: history "
                      f"epochs {recorded}, last.pt at epoch {last_epoch}, progress {progress.get('status')!r}"))
    if status != "succeeded":
        return found
    if recorded != expected:
        found.append(("epochs_once", f"{name}: history epochs {recorded}, expected {expected}"))
    finals: Counter[tuple[Any, Any]] = Counter()
    try:
        for line in (run_dir / "steps.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row.get("final"):
                finals[(row.get("epoch"), row.get("split"))] += 1
    except (OSError, ValueError) as exc:
        found.append(("epochs_once", f"{name}: steps.jsonl unreadable: {exc}"))
    if finals != Counter({(e, s): 1 for e in expected for s in ("train", "val")}):
        found.append(("epochs_once", f"{name}: final rows of steps.jsonl {sorted(finals.items())}, expected each "
                      f"(epoch, split) of epochs {expected} once"))
    if progress.get("status") != "succeeded":
        found.append(("progress_final", f"{name}: progress.json says {progress.get('status')!r} "
                      f"({progress.get('reason') or progress.get('error') or ''})".rstrip(" ()")))
    ck = config.get("checkpoint", {})
    metric = ck.get("best_metric", "val.top1")
    split, key = metric.split(".", 1)
    values = {e.get("epoch"): (e.get(split) or {}).get(key) for e in history.get("epochs", [])}
    finite = {e: v for e, v in values.items() if isinstance(v, (int, float)) and v == v}
    if finite:
        target = (max if BEST_METRICS.get(metric, "max") == "max" else min)(finite.values())
        best_epoch = (manifest.get("best") or {}).get("epoch")
        best_file = entries.get("best.pt", {}).get("epoch")
        if finite.get(best_epoch) != target or best_file != best_epoch:
            good = sorted(e for e, v in finite.items() if v == target)
            found.append(("best_is_best", f"{name}: the manifest's best is epoch {best_epoch} ({metric}="
                          f"{finite.get(best_epoch)}), best.pt is epoch {best_file}, but the best recorded {metric} "
                          f"is {target} at epoch(s) {good}"))
    if last_epoch != epochs:
        found.append(("last_is_last", f"{name}: last.pt is epoch {last_epoch}, the last epoch is {epochs}"))
    keep = int(ck.get("keep_last", 1))
    want = {f"epoch_{e:04d}.pt" for e in expected[-keep:]}
    listed = {n for n in entries if n.startswith("epoch_")}
    on_disk = {p.name for p in ckpt_dir.glob("epoch_*.pt")}
    if listed != want or on_disk != want:
        found.append(("pruned", f"{name}: epoch files in the manifest {sorted(listed)}, on disk {sorted(on_disk)}, "
                      f"expected {sorted(want)}"))
    return found


def checkpoint_problem(path: Path, entry: dict[str, Any]) -> str | None:
    """Why the file a manifest entry describes is not that checkpoint (None when it is)."""
    import torch

    from worker.training.checkpoints import sha256_file

    if not path.is_file():
        return "missing"
    if path.stat().st_size != entry.get("size"):
        return f"size {path.stat().st_size}, the manifest says {entry.get('size')}"
    if sha256_file(path) != entry.get("sha256"):
        return "sha256 does not match the manifest"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # whatever the loader raises is the finding
        return f"torch.load(weights_only=True) failed: {exc!r}"[:300]
    if not isinstance(state, dict) or state.get("epoch") != entry.get("epoch"):
        return f"holds epoch {state.get('epoch') if isinstance(state, dict) else None}, the manifest says {entry.get('epoch')}"
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str]) -> Options:
    d = Options()
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=d.minutes, help="length of the fault window")
    p.add_argument("--jobs", type=int, default=d.jobs)
    p.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    p.add_argument("--out", type=Path, default=None, help="report path (default WORKDIR/report.json)")
    p.add_argument("--workdir", type=Path, default=None, help="default: a fresh temp dir")
    p.add_argument("--keep", action="store_true", help="keep the work dir and its checkpoints")
    for f in dataclasses.fields(Options):
        if f.name in ("minutes", "jobs", "seed", "out", "workdir", "keep"):
            continue
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(d, f.name)), default=getattr(d, f.name))
    ns = p.parse_args(argv)
    if ns.jobs < 1 or ns.minutes <= 0 or ns.settle_minutes <= 0:
        p.error("--jobs, --minutes and --settle-minutes must be positive")
    if not 0 < ns.gap_min_s <= ns.gap_max_s or not 0 <= ns.restart_min_s <= ns.restart_max_s:
        p.error("need 0 < --gap-min-s <= --gap-max-s and 0 <= --restart-min-s <= --restart-max-s")
    if shutil.which("redis-server") is None:
        p.error("redis-server is not on PATH (Debian/Ubuntu: apt-get install redis-server)")
    values = vars(ns)
    if values["seed"] is None:
        values["seed"] = random.SystemRandom().randrange(1, 1_000_000)
    return Options(**values)


def run(opts: Options) -> dict[str, Any]:
    return Soak(opts).run()


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    report = run(opts)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
