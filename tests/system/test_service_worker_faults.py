"""The worker process itself under faults, with real processes: SIGTERM during a job (the Celery
worker started exactly as deployed: `--pool solo`, the only pool it runs, see worker/pool.py),
and a job that kills its worker every time it is claimed (test-only fault `worker_exit`)."""
from __future__ import annotations

import copy
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from common.store.jobs import JobPaths
from tests.support.procs import wait_until
from tests.support.stack import Stack, db_job, deployed_worker_argv

pytestmark = pytest.mark.slow




def start_deployed_worker(stack: Stack, *, may_exit: bool = False) -> subprocess.Popen[Any]:
    """A worker started with the deployed command line (`--pool solo`)."""
    return stack.start_worker(deployed_worker_argv(), may_exit=may_exit)




def broker_keys(stack: Stack) -> dict[str, list[bytes]]:
    """What this stack's Redis db holds for messages: every list (the queues, one key per priority
    step with sep ":"), kombu's `unacked` hash and its `unacked_index` sorted set, found by SCAN."""
    r = redis.Redis.from_url(stack.settings.redis_url)
    out: dict[str, list[bytes]] = {}
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        name = key.decode()
        if kind == "list":
            out[name] = r.lrange(key, 0, -1)
        elif name.startswith("unacked") and kind == "hash":
            out[name] = r.hvals(key)
        elif name.startswith("unacked") and kind == "zset":
            out[name] = r.zrange(key, 0, -1)
    return {k: v for k, v in out.items() if v}


def queued_bodies(stack: Stack) -> list[bytes]:
    return [body for key, bodies in broker_keys(stack).items() if not key.startswith("unacked") for body in bodies]


def manifest_epochs(stack: Stack, job_id: str) -> set[int]:
    path = JobPaths.of(stack.settings.jobs_root, job_id).manifest
    return {c["epoch"] for c in json.loads(path.read_text())["checkpoints"]} if path.is_file() else set()


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit status may wait a while for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def mid_epoch(stack: Stack, job_id: str, epoch: int, attempts: int) -> bool:
    job = db_job(stack, job_id)
    p = job.progress or {}
    return (job.attempts == attempts and job.child_pid is not None and p.get("epoch") == epoch
            and p.get("phase") == "train" and 0 < (p.get("batch") or 0) < (p.get("batches") or 0))


def test_sigterm_to_worker_hands_the_job_back_promptly(stack_factory, service_config):
    """SIGTERM to the worker's main process (`docker compose stop`) in the middle of epoch 2: the
    job is checkpointed, recorded `interrupted` and re-sent, and the worker exits within a minute
    instead of waiting for the whole training (warm shutdown) or the visibility timeout (hours).
    A second worker resumes it without any reconciler pass; no epoch is trained twice."""
    stack = stack_factory()
    stack.start_api()
    stack.headers = stack.token("alice")
    first = start_deployed_worker(stack)  # docker-compose.yml's command verbatim
    cfg = copy.deepcopy(service_config)
    cfg["optim"]["epochs"] = 3
    cfg["optim"]["batch_size"] = 4  # 16 steps an epoch: a mid-epoch window wide enough to catch
    job_id = stack.post("/api/v1/jobs", json=cfg).json()["id"]

    wait_until(lambda: mid_epoch(stack, job_id, 2, 1), 180, "epoch 2 of attempt 1", interval=0.1)
    child_pid = db_job(stack, job_id).child_pid
    first.send_signal(signal.SIGTERM)  # the main process only, as tini/docker stop does
    t0 = time.monotonic()
    try:
        rc = first.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not exit within 60 s of SIGTERM\n{stack.logs()}")
    stopped_in = time.monotonic() - t0
    stack.workers.remove(first)  # exited on its own; nothing left to clean up
    assert rc == 0, (rc, stack.logs())  # a warm shutdown, not a crash

    job = db_job(stack, job_id)
    assert job.status == "interrupted" and job.attempts == 1 and job.claim_token is None, (job.status, stack.logs())
    assert job.exit_code == 3 and job.child_pid is None  # the child stopped on SIGTERM after a step
    assert not running(child_pid)  # and no training is left running behind the worker
    assert max(manifest_epochs(stack, job_id)) == 1  # the resume point: epoch 1's checkpoint
    # Re-sent: a fresh message waits in the queue; nothing is left unacknowledged (which Redis
    # would only redeliver after the visibility timeout).
    broker = broker_keys(stack)
    assert any(job_id.encode() in body for body in queued_bodies(stack)), broker
    assert not any(key.startswith("unacked") and any(job_id.encode() in b for b in bodies)
                   for key, bodies in broker.items()), broker
    worker_log = (stack.base / "worker0.log").read_text()
    assert "warm shutdown" in worker_log.lower(), worker_log[-3000:]

    # A second worker (as deployed) picks the re-sent message up: no reconciler, no visibility timeout.
    start_deployed_worker(stack)
    job_json = stack.wait_status(job_id, {"succeeded", "failed", "cancelled"}, timeout=240)
    assert job_json["status"] == "succeeded", (job_json, stack.logs())
    assert job_json["attempts"] == 2
    assert job_json["interruptions"] == 1  # a graceful stop: not a failure (the API shows the count)
    run = JobPaths.of(stack.settings.jobs_root, job_id).run
    history = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    finals = [(r["epoch"], r["split"]) for r in map(json.loads, (run / "steps.jsonl").read_text().splitlines())
              if r["final"]]
    assert sorted(finals) == sorted({(e, s) for e in range(1, 4) for s in ("train", "val")}), finals
    log = JobPaths.of(stack.settings.jobs_root, job_id).log.read_text()
    assert log.count("=== attempt") == 2
    print(f"worker exited {stopped_in:.1f}s after SIGTERM")


def test_job_that_kills_its_solo_worker_fails_with_worker_lost(stack_factory, service_config):
    """The deployed (solo) worker runs the job in its main process, so `worker_exit` kills the
    whole worker; compose's `restart:` starts a new one (here: the test does). The dead worker's
    message stays unacknowledged until the visibility timeout, so the reconciler is what re-sends
    the job once its heartbeat goes stale. After TEACHER_MAX_ATTEMPTS the job fails with "worker
    lost" and no re-sending loop follows. (Lost before training, the attempts count as
    interruptions: TEACHER_MAX_INTERRUPTIONS caps them.)"""
    stack = stack_factory(TEACHER_FAULT="worker_exit", TEACHER_MAX_ATTEMPTS="2", TEACHER_MAX_INTERRUPTIONS="2")
    stack.start_api()
    stack.headers = stack.token("alice")
    job_id = stack.post("/api/v1/jobs", json=service_config).json()["id"]

    for attempt in (1, 2):
        worker = start_deployed_worker(stack, may_exit=attempt == 1)
        if attempt > 1:
            # the heartbeat of the dead worker goes stale; a reconciler pass re-sends the job
            wait_until(lambda: stack.reconcile()["stale"] == [job_id], 60, "the reconciler to re-send the job")
        try:
            rc = worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"attempt {attempt}: the worker did not die\n{stack.logs()}")
        stack.workers.remove(worker)
        assert rc == 1, (rc, stack.logs())  # the fault's os._exit(1)
        job = db_job(stack, job_id)
        assert job.status == "running" and job.attempts == attempt, (job.status, job.attempts)

    # The restarted worker survives: the reconciler re-sends once more, the claim gives up.
    worker = start_deployed_worker(stack)
    wait_until(lambda: stack.reconcile()["stale"] == [job_id], 60, "the reconciler to re-send the job")
    job = stack.wait_status(job_id, {"succeeded", "failed", "cancelled"}, timeout=60)
    assert job["status"] == "failed" and "worker lost" in job["failure_reason"], (job, stack.logs())
    assert job["attempts"] == 2 and db_job(stack, job_id).interruptions == 2
    assert worker.poll() is None
    # The queues are empty, and so is kombu's unacked bookkeeping: each message a dead worker
    # held (which only the visibility timeout, a week, would restore) was removed by the pass
    # that re-sent the job after a newer claim, or, the job finished, by the next one.
    wait_until(lambda: queued_bodies(stack) == [], 30, "the queues to be empty")
    stack.reconcile()
    assert broker_keys(stack) == {}
    for _ in range(3):
        assert not any(stack.reconcile().values())
        assert broker_keys(stack) == {}
    assert db_job(stack, job_id).status == "failed"


@pytest.mark.parametrize("fault, exits", [(None, False), ("", False), ("kill_after_epoch:1", False),
                                          ("worker_exit", True), ("zero_train_metrics,worker_exit", True)])
def test_worker_exit_fault_is_inert_unless_named(monkeypatch, fault, exits):
    """The test-only fault acts only when TEACHER_FAULT names it, and only after a claim; a name
    it does not know exactly (``worker_exit_later``) is an error, not ignored."""
    from common import faults
    from worker import supervisor as sup

    if fault is None:
        monkeypatch.delenv("TEACHER_FAULT", raising=False)
    else:
        monkeypatch.setenv("TEACHER_FAULT", fault)
    monkeypatch.setattr(faults, "_current", None)  # parsed again from this environment
    exited: list[int] = []

    def fake_exit(code: int) -> None:
        exited.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(sup.os, "_exit", fake_exit)
    s = object.__new__(sup.Supervisor)
    s.claim = lambda job_id: sup.Claim(job_id, 1, "token", {})
    s._run_claimed = lambda claim: "ran"
    if exits:
        with pytest.raises(SystemExit):
            s.run("a" * 32)
        assert exited == [1]
    else:
        assert s.run("a" * 32) == "ran" and exited == []
    s.claim = lambda job_id: None  # nothing claimed: never exits
    assert s.run("a" * 32) == "skipped" and exited == ([1] if exits else [])


def test_a_misspelled_worker_fault_is_an_error(monkeypatch):
    from common import faults
    from worker import supervisor as sup

    monkeypatch.setenv("TEACHER_FAULT", "kill_after_epoch:1,worker_exit_later")
    monkeypatch.setattr(faults, "_current", None)
    s = object.__new__(sup.Supervisor)
    s.claim = lambda job_id: sup.Claim(job_id, 1, "token", {})
    with pytest.raises(faults.FaultSpecError, match="worker_exit_later"):
        s.run("a" * 32)
