"""Infrastructure faults with real processes: Redis killed or restarted under a running worker,
Redis down while jobs are submitted, the API polled hard while a job writes its files, and the
API process reloaded or killed while jobs run.

The Redis fault tests use their own redis-server (AOF on, `appendfsync always`), which they
kill, stop or freeze and start again on the same port, so the session's shared Redis is never
disturbed. Each test says what it proves: that Redis's AOF kept the messages (no reconciler
involved), or that the job store (the truth) and the reconciler repaired what Redis never got.
"""
from __future__ import annotations

import copy
import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from common.store.jobs import JobPaths
from tests.support.procs import free_port, stop_process, wait_until
from tests.support.stack import Stack, db_job, deployed_worker_argv, make_stack

pytestmark = pytest.mark.slow

TERMINAL = {"succeeded", "failed", "cancelled"}


# ----------------------------------------------------------------------- a Redis we can kill
class RestartableRedis:
    """A private redis-server on a fixed port with AOF (fsync on every write): killed with
    SIGKILL and started again, it comes back on the same URL with every acknowledged write."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[Any] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "yes"],
            stdout=(self.workdir / "redis.log").open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_until(lambda: self.proc.poll() is not None or self.client().ping(), 30, "redis-server to start")
        assert self.proc.poll() is None, (self.workdir / "redis.log").read_text()[-2000:]

    def kill9(self) -> None:
        assert self.proc is not None
        stop_process(self.proc, sig=signal.SIGKILL, timeout=5)

    def shutdown(self) -> None:
        """A clean stop (what `docker compose restart redis` does)."""
        if self.proc is not None:
            self.thaw()
            stop_process(self.proc, sig=signal.SIGTERM, timeout=15)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and new ones are accepted by the kernel, but nothing
        answers (a hung server, a failover in progress, a network cut without a reset)."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=5)


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path / "redis-aof")
    server.start()
    try:
        yield server
    finally:
        server.shutdown()


@pytest.fixture
def aof_stack(tmp_path: Path, aof_redis: RestartableRedis, service_dataset_root: Path) -> Iterator[Callable[..., Stack]]:
    """A stack (API + workers + SQLite store) on the test's own killable Redis. Torn down
    before the Redis (fixture order), even when the test fails."""
    stacks: list[Stack] = []

    def factory(**extra_env: str) -> Stack:
        base = tmp_path / f"stack{len(stacks)}"
        base.mkdir()
        stack = make_stack(base, aof_redis.url, service_dataset_root, f"sqlite:///{base / 'state' / 'teacher.db'}",
                           **extra_env)
        stacks.append(stack)
        return stack

    try:
        yield factory
    finally:
        for stack in stacks:
            stack.stop()


# ----------------------------------------------------------------------- helpers


def submit(stack: Stack, cfg: dict[str, Any], epochs: int, max_samples: int | None = None, **kw: Any) -> str:
    """POST a job (``max_samples``: a smaller subset per split, for jobs that only need to run)."""
    body = copy.deepcopy(cfg)
    body["optim"]["epochs"] = epochs
    if max_samples:
        body["data"]["max_samples"] = max_samples
    r = stack.post("/api/v1/jobs", json=body, **kw)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def in_broker(stack: Stack) -> str:
    from worker.reconciler import messages_in_broker

    return messages_in_broker(stack.settings)


def assert_ran_exactly_once(stack: Stack, job_id: str, epochs: int) -> None:
    """Succeeded in one attempt, and every epoch's final train and val metrics are in the run's
    steps.jsonl exactly once (a second run of the job would duplicate or restart them)."""
    job = stack.job(job_id)
    assert job["status"] == "succeeded", (job["failure_reason"], stack.logs())
    assert job["attempts"] == 1, job
    history = stack.get(f"/api/v1/jobs/{job_id}/metrics").json()
    assert [e["epoch"] for e in history["epochs"]] == list(range(1, epochs + 1))
    run = JobPaths.of(stack.settings.jobs_root, job_id).run
    rows = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    finals = sorted((r["epoch"], r["split"]) for r in rows if r["final"])
    assert finals == sorted((e, s) for e in range(1, epochs + 1) for s in ("train", "val")), finals
    log = JobPaths.of(stack.settings.jobs_root, job_id).log.read_text()
    assert log.count("=== attempt") == 1, log[-3000:]


def assert_no_message_left(stack: Stack) -> None:
    """Every message was consumed and acknowledged, across the outage: none is stranded in
    Redis's `unacked` hash, where only the visibility timeout (a week) would ever restore it and
    the reconciler would keep mistaking it for a pending message."""
    wait_until(lambda: in_broker(stack).strip() == "", 30, "the last acknowledgement")


def worker_log(stack: Stack, n: int = 0) -> str:
    return (stack.base / f"worker{n}.log").read_text(errors="replace")


def start_solo_worker(stack: Stack) -> subprocess.Popen[Any]:
    """A worker as docker-compose.yml runs it (`--pool solo`: the job runs in the main process,
    so the consumer's event loop is blocked while it trains). Stopped by ``stack.stop()``."""
    return stack.start_worker(deployed_worker_argv())


def redis_down(server: RestartableRedis) -> bool:
    try:
        server.client().ping()
    except Exception:
        return True
    return False


def running(stack: Stack, job_id: str) -> bool:
    job = db_job(stack, job_id)
    return job.status == "running" and job.child_pid is not None


# ----------------------------------------------------------------------- 1. Redis kill -9, queued jobs
def test_redis_kill9_with_queued_jobs_aof_keeps_every_message(aof_stack, aof_redis, service_config):
    """Proves: with AOF (fsync always) a SIGKILLed Redis keeps every queued message, and the
    worker, which was in the middle of a job when its broker vanished, reconnects and runs
    every job exactly once. The reconciler is never called: nothing here depends on repair."""
    stack = aof_stack()
    stack.start_api()
    stack.headers = stack.token("alice")
    stack.start_worker()

    first = submit(stack, service_config, epochs=2)
    wait_until(lambda: running(stack, first), 120, "the first job to start")
    queued = [submit(stack, service_config, epochs=1, max_samples=16) for _ in range(2)]  # behind it: one job per worker
    pending = in_broker(stack)
    assert all(j in pending for j in queued), "the API did not publish the queued jobs"
    assert all(db_job(stack, j).enqueued_at is not None for j in queued)
    assert running(stack, first)  # the worker is mid-job, its consumer connected, when Redis dies

    aof_redis.kill9()
    aof_redis.start()
    # The messages came back from the AOF alone (the worker can have taken at most one of them
    # since, and a taken one sits in Redis's `unacked` hash, which in_broker includes).
    pending = in_broker(stack)
    for j in queued:
        assert j in pending or db_job(stack, j).status != "queued", f"job {j}'s message was lost with Redis"

    for j in [first, *queued]:
        job = stack.wait_status(j, TERMINAL, timeout=240)
        assert job["status"] == "succeeded", (job, stack.logs())
    assert_ran_exactly_once(stack, first, 2)
    for j in queued:
        assert_ran_exactly_once(stack, j, 1)
    assert "Connection to broker lost" in worker_log(stack)  # the worker really saw the outage
    assert_no_message_left(stack)


# ----------------------------------------------------------------------- 3. Redis restart, running job
def test_redis_restart_while_job_runs_worker_keeps_consuming(aof_stack, aof_redis, service_config):
    """Proves: a Redis restart while a job trains neither interrupts nor duplicates it, and the
    worker's consumer comes back: a job submitted after the restart is picked up within 30 s of
    the worker being free again (Redis back and the running job done). No reconciler.
    The worker is the production one (`--pool solo`), whose event loop cannot see the broker
    go away while the job runs: it meets the dead connection only afterwards."""
    stack = aof_stack()
    stack.start_api()
    stack.headers = stack.token("alice")
    start_solo_worker(stack)

    first = submit(stack, service_config, epochs=2)
    wait_until(lambda: running(stack, first), 120, "the job to start")
    aof_redis.shutdown()  # returns once the process has exited
    assert redis_down(aof_redis) and running(stack, first)
    aof_redis.start()
    back = time.monotonic()

    second = submit(stack, service_config, epochs=1, max_samples=16)
    assert db_job(stack, second).enqueued_at is not None, "the API did not publish after Redis came back"
    job = stack.wait_status(first, TERMINAL, timeout=240)
    assert job["status"] == "succeeded", (job, stack.logs())
    # Redis is back (since `back`) and the worker is free (now): the new job must start within 30 s.
    wait_until(lambda: db_job(stack, second).attempts >= 1, 30, "the worker to take the job submitted after the restart")
    print(f"second job taken {time.monotonic() - back:.1f}s after Redis came back")
    stack.wait_status(second, TERMINAL, timeout=240)
    assert_ran_exactly_once(stack, first, 2)
    assert_ran_exactly_once(stack, second, 1)
    assert_no_message_left(stack)


# ----------------------------------------------------------------------- 4. Redis down during submit
def test_submit_while_redis_down_is_recorded_then_reconciled(aof_stack, aof_redis, service_config):
    """Proves: while Redis is down the API still answers, never with a 500: a submitted job is
    recorded (202) or refused (503, and the client's retry with the same Idempotency-Key then
    lands it once); the read endpoints keep working and /health reports the broker down. The
    message Redis never got is repaired from the job store: one reconciler pass re-sends it,
    and the worker, idle on its broker connection through the outage, runs it exactly once."""
    stack = aof_stack()
    stack.start_api()
    stack.headers = stack.token("alice")
    # Warm the API's broker connection (a pooled connection that then dies is the harder case):
    # publish one job, cancel it while queued, and let the worker start, take and skip it.
    warm = submit(stack, service_config, epochs=1)
    assert stack.post(f"/api/v1/jobs/{warm}/cancel").json()["status"] == "cancelled"
    stack.start_worker()
    wait_until(lambda: "succeeded in" in worker_log(stack), 60, "the worker to take and skip the cancelled job")

    aof_redis.kill9()
    body = copy.deepcopy(service_config)
    body["optim"]["epochs"] = 1
    body["data"]["max_samples"] = 16
    key = {"Idempotency-Key": "submit-while-redis-down"}
    t0 = time.monotonic()
    r = stack.post("/api/v1/jobs", json=body, headers=key)
    elapsed = time.monotonic() - t0
    assert r.status_code in (202, 503), (r.status_code, r.text)
    assert elapsed < 20, f"the submit took {elapsed:.1f}s with Redis down"
    job_id = r.json()["id"] if r.status_code == 202 else None
    if job_id:
        job = stack.job(job_id)
        assert job["status"] == "queued" and job["attempts"] == 0
        assert db_job(stack, job_id).enqueued_at is None  # recorded, not published: the reconciler's cue

    # reads keep working while the broker is down
    listed = stack.get("/api/v1/jobs")
    assert listed.status_code == 200
    assert {j["id"] for j in listed.json()["jobs"]} == {warm} | ({job_id} if job_id else set())
    if job_id:
        assert stack.get(f"/api/v1/jobs/{job_id}/logs", params={"tail": 10}).status_code == 200
        assert stack.get(f"/api/v1/jobs/{job_id}/metrics").json() == {"epochs": []}
    health = stack.get("/api/v1/health")
    assert health.status_code == 503, health.text
    checks = health.json()["checks"]
    assert health.json()["status"] == "down" and checks["redis"]["ok"] is False and checks["database"]["ok"] is True
    prom = requests.get(stack.api_url + "/metrics", headers=stack.headers, timeout=30)
    assert prom.status_code == 200 and 'teacher_jobs{status="queued"}' in prom.text

    aof_redis.start()
    assert stack.get("/api/v1/health").json()["checks"]["redis"]["ok"] is True
    if job_id is None:  # refused while down: the client retries with the same key
        r = stack.post("/api/v1/jobs", json=body, headers=key)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
    # The job's message never reached Redis (or Redis lost it): the store has it, and one
    # reconciler pass, once the publish grace period is over, re-sends it. Exactly once.
    if db_job(stack, job_id).enqueued_at is None:
        wait_until(lambda: job_id in stack.reconcile()["lost"], 60, "the reconciler to re-send the job")
        assert stack.reconcile()["lost"] == []
    job = stack.wait_status(job_id, TERMINAL, timeout=240)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert_ran_exactly_once(stack, job_id, 1)
    assert {j["id"] for j in stack.get("/api/v1/jobs").json()["jobs"]} == {warm, job_id}
    assert_no_message_left(stack)
    print(f"submit with Redis down answered {r.status_code} in {elapsed:.1f}s")


def test_submit_while_redis_hangs_answers_and_is_reconciled(aof_stack, aof_redis, service_config):
    """Proves: a Redis that accepts connections but never answers (SIGSTOP) does not hang a job
    POST (it used to, on the result backend's pub/sub subscribe that every publish made, and on
    the broker socket without a timeout): the POST answers 202 with the job recorded, other
    requests are served meanwhile, and once Redis answers again the job store and the reconciler
    make sure the job is in the broker. Running reconciled jobs is the previous test's business:
    no worker here."""
    stack = aof_stack()
    stack.start_api()
    stack.headers = stack.token("alice")
    warm = submit(stack, service_config, epochs=1)  # the API now holds a pooled broker connection
    assert warm in in_broker(stack)

    aof_redis.freeze()
    result: dict[str, Any] = {}

    def post() -> None:
        t0 = time.monotonic()
        body = copy.deepcopy(service_config)
        body["optim"]["epochs"] = 1
        try:
            result["response"] = requests.post(stack.api_url + "/api/v1/jobs", json=body, headers=stack.headers,
                                               timeout=60)
        except requests.RequestException as exc:
            result["response"] = exc
        result["elapsed"] = time.monotonic() - t0

    poster = threading.Thread(target=post)
    poster.start()
    try:
        # while that POST waits on Redis, the API keeps serving (reads need only the job store)
        wait_until(lambda: len(stack.get("/api/v1/jobs").json()["jobs"]) == 2, 30, "the new job to be recorded")
        health = stack.get("/api/v1/health")
        assert health.status_code == 503 and health.json()["checks"]["redis"]["ok"] is False
        poster.join(timeout=60)
        assert not poster.is_alive(), "POST /jobs hung on an unresponsive Redis"
    finally:
        aof_redis.thaw()
        poster.join(timeout=60)
    r = result["response"]
    assert isinstance(r, requests.Response) and r.status_code in (202, 503), r
    assert result["elapsed"] < 30, f"the POST took {result['elapsed']:.1f}s"
    print(f"submit with Redis frozen answered {r.status_code} in {result['elapsed']:.1f}s")
    new = {j["id"] for j in stack.get("/api/v1/jobs").json()["jobs"]} - {warm}
    assert len(new) == 1
    job_id = new.pop()
    assert r.status_code == 503 or r.json()["id"] == job_id

    wait_until(lambda: stack.get("/api/v1/health").json()["checks"]["redis"]["ok"], 30, "Redis to answer again")
    # The timed-out publishes were written to the frozen server's sockets, and a thawed Redis
    # may well execute them (then the worker gets duplicates, which its claim ignores). If
    # none landed, the reconciler re-sends the job. Either way the job ends up in the broker.
    wait_until(lambda: job_id in in_broker(stack) or job_id in stack.reconcile()["lost"], 60,
               "the job's message to be in Redis")
    assert stack.reconcile()["lost"] == []
    pending = in_broker(stack)
    assert warm in pending and job_id in pending
    print(f"copies of the job's message in Redis: {pending.count(job_id)}")


# ----------------------------------------------------------------------- 11. hard polling while training
def _strict_json(text: str) -> Any:
    def reject(constant: str) -> Any:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


def test_status_metrics_logs_polled_1000_times_each_while_training(stack_factory, service_config):
    """Proves: the read endpoints, hammered concurrently (1,000 requests each, several client
    threads) while the job rewrites progress.json/history.json and appends to its log, always
    answer 200 with strict JSON (no NaN/Infinity, no torn file) and never a 500."""
    stack = stack_factory(TEACHER_RATE_LIMIT="off", TEACHER_SUBMIT_RATE_LIMIT="off")
    stack.start_api()
    stack.headers = stack.token("alice")
    stack.start_worker()
    cfg = copy.deepcopy(service_config)
    # Tiny epochs (8 train + 8 val images, batch 4), so that several end while the API is
    # hammered on 2 shared cores: each rewrites history.json, the manifest and progress.json
    # and appends to the log; every step rewrites progress.json and the job row's progress.
    cfg["data"]["max_samples"] = 8
    cfg["optim"]["batch_size"] = 4
    job_id = submit(stack, cfg, epochs=200)
    wait_until(lambda: (stack.job(job_id).get("progress") or {}).get("step"), 180, "training to write progress")

    base = f"{stack.api_url}/api/v1/jobs/{job_id}"
    targets = {"status": (base, {}), "metrics": (base + "/metrics", {}), "logs": (base + "/logs", {"tail": 20})}
    per_thread, threads_per_target = 500, 2
    results: dict[str, list[Any]] = {name: [] for name in targets}
    failures: list[str] = []
    lock = threading.Lock()

    def poll(name: str) -> None:
        url, params = targets[name]
        with requests.Session() as http:
            http.headers.update(stack.headers)
            for _ in range(per_thread):
                try:
                    r = http.get(url, params=params, timeout=30)
                    ok = r.status_code == 200 and r.headers.get("Content-Type", "").startswith("application/json")
                    body = _strict_json(r.text)
                except Exception as exc:  # a torn read, NaN, a dropped connection...
                    with lock:
                        failures.append(f"{name}: {exc!r}")
                    continue
                with lock:
                    if not ok:
                        failures.append(f"{name}: HTTP {r.status_code} {r.text[:300]}")
                    results[name].append(body)

    workers = [threading.Thread(target=poll, args=(name,)) for name in targets for _ in range(threads_per_target)]
    t0 = time.monotonic()
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=600)
    elapsed = time.monotonic() - t0
    assert not any(t.is_alive() for t in workers), "polling hung"
    assert failures == [], failures[:20]
    assert {k: len(v) for k, v in results.items()} == {k: per_thread * threads_per_target for k in targets}

    # the polling really overlapped training that was writing what it read
    statuses = [b["status"] for b in results["status"]]
    assert statuses.count("running") >= 0.9 * len(statuses), set(statuses)
    steps = {(b["progress"] or {}).get("epoch", 0) * 1000 + (b["progress"] or {}).get("step", 0) for b in results["status"]}
    assert len(steps) >= 3, "progress did not change while it was polled"
    assert all(isinstance(b["epochs"], list) for b in results["metrics"])
    assert len({len(b["epochs"]) for b in results["metrics"]}) >= 2, "no epoch ended (history.json was not rewritten) while it was polled"
    assert all(isinstance(b["lines"], list) for b in results["logs"])
    assert len({tuple(b["lines"]) for b in results["logs"]}) >= 2, "the log did not grow while it was polled"
    epochs_seen = sorted({len(b["epochs"]) for b in results["metrics"]})
    print(f"3000 polls in {elapsed:.1f}s while epochs {epochs_seen[0]}..{epochs_seen[-1]} were written")
    r = stack.post(f"/api/v1/jobs/{job_id}/cancel")  # end the long job now rather than at teardown
    assert r.status_code == 202
    assert stack.wait_status(job_id, TERMINAL, timeout=120)["status"] == "cancelled"


# ----------------------------------------------------------------------- 12. API restarts while jobs run
def start_api_on(stack: Stack, port: int) -> None:
    """Like Stack.start_api, on a given port: a restarted API must come back on the same URL."""
    stack.start_api(port, workers=2, threads=4, graceful_timeout=10)


def gunicorn_workers(master: int) -> set[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


def test_api_reload_and_kill9_while_jobs_run(stack_factory, service_config):
    """Proves: the API holds no job state. A graceful reload (SIGHUP: new gunicorn workers, old
    ones finish their requests) drops no request; a SIGKILLed API replaced by a new gunicorn on
    the same port loses nothing: the jobs keep training meanwhile and succeed once, the job list
    is complete, the client's next poll works and its retried submit is replayed, not doubled."""
    stack = stack_factory(TEACHER_RATE_LIMIT="off")  # the poller below is one very busy client
    start_api_on(stack, free_port())
    stack.headers = stack.token("alice")
    stack.start_worker()
    first = submit(stack, service_config, epochs=3)
    wait_until(lambda: running(stack, first), 120, "the first job to start")
    key = {"Idempotency-Key": "api-restart-second"}
    second = submit(stack, service_config, epochs=1, max_samples=16, headers=key)  # queued behind the first

    # 1. graceful reload, polled throughout by a client
    errors: list[str] = []
    polls = 0
    stop = threading.Event()

    def poller() -> None:
        nonlocal polls
        while not stop.is_set():
            try:
                r = requests.get(f"{stack.api_url}/api/v1/jobs/{first}", headers=stack.headers, timeout=30)
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
            except requests.RequestException as exc:
                errors.append(repr(exc))
            polls += 1

    old = gunicorn_workers(stack.api.pid)
    assert len(old) == 2
    t = threading.Thread(target=poller)
    t.start()
    try:
        wait_until(lambda: polls >= 5, 30, "the poller to start")
        stack.api.send_signal(signal.SIGHUP)
        wait_until(lambda: len(gunicorn_workers(stack.api.pid) - old) == 2 and not (gunicorn_workers(stack.api.pid) & old),
                   60, "gunicorn to replace its workers")
        wait_until(lambda: stack.get("/api/v1/health").status_code == 200, 60, "the reloaded API")
        n = polls
        wait_until(lambda: polls >= n + 5, 30, "polls against the new workers")
    finally:
        stop.set()
        t.join(timeout=60)
    assert errors == [], errors[:10]

    # 2. kill -9 the whole API (master and workers), then a new gunicorn on the same port
    port = int(stack.api_url.rsplit(":", 1)[1])
    unfinished = [j for j in (first, second) if db_job(stack, j).status not in TERMINAL]
    assert unfinished, "both jobs finished before the API was killed: nothing was running"
    stop_process(stack.api, sig=signal.SIGKILL, timeout=5)
    with pytest.raises(requests.ConnectionError):
        requests.get(stack.api_url + "/api/v1/health", timeout=5)
    start_api_on(stack, port)
    assert stack.job(first)["id"] == first  # the client's next poll, same URL and token, works
    body = copy.deepcopy(service_config)
    body["optim"]["epochs"] = 1
    body["data"]["max_samples"] = 16
    r = stack.post("/api/v1/jobs", json=body, headers=key)  # "did my submit land?" - retried
    assert r.status_code == 202 and r.json()["id"] == second and r.headers.get("Idempotent-Replayed") == "true"

    for j in (first, second):
        job = stack.wait_status(j, TERMINAL, timeout=240)
        assert job["status"] == "succeeded", (job, stack.logs())
    assert_ran_exactly_once(stack, first, 3)
    assert_ran_exactly_once(stack, second, 1)
    assert {j["id"] for j in stack.get("/api/v1/jobs").json()["jobs"]} == {first, second}
    assert_no_message_left(stack)
