"""Redis loses all its data (FLUSHALL) while one job runs and others wait in the queue: the job
store is the truth, the reconciler re-sends what was lost, and every job runs exactly once."""
from __future__ import annotations

import copy
import json

import pytest
import redis

from common.store.jobs import JobPaths
from worker.reconciler import messages_in_broker

from tests.support.procs import wait_until
from tests.support.stack import Stack

pytestmark = pytest.mark.slow


def final_records(stack: Stack, job_id: str) -> list[tuple[int, str]]:
    steps = JobPaths.of(stack.settings.jobs_root, job_id).run / "steps.jsonl"
    return sorted((r["epoch"], r["split"]) for r in map(json.loads, steps.read_text().splitlines()) if r["final"])


def test_flushall_with_jobs_queued_and_one_running(stack_factory, service_config):
    stack = stack_factory()
    stack.start_api()
    stack.headers = stack.token("alice")
    stack.start_worker()

    running_cfg = copy.deepcopy(service_config)
    running_cfg["optim"].update(epochs=2, batch_size=4)  # long enough to flush in the middle
    queued_cfg = copy.deepcopy(service_config)
    queued_cfg["optim"]["epochs"] = 1
    running = stack.post("/api/v1/jobs", json=running_cfg).json()["id"]
    queued = [stack.post("/api/v1/jobs", json=queued_cfg).json()["id"] for _ in range(2)]
    wait_until(lambda: (stack.job(running).get("progress") or {}).get("step"), 180, "the first job to train")
    assert [stack.job(j)["status"] for j in queued] == ["queued", "queued"]  # one job per worker
    r = redis.Redis.from_url(stack.settings.redis_url)
    pending = messages_in_broker(stack.settings, r)
    assert all(j in pending for j in [running, *queued])  # the running one is unacked (acks late)

    r.flushall()
    assert messages_in_broker(stack.settings, r) == ""

    # The first pass finds the queued jobs' messages missing and re-sends exactly those; the
    # running job still heartbeats, so it is left alone (re-sending it would be a harmless
    # duplicate, but it is not needed).
    # (Each job counts as lost once its own grace period since it was enqueued has passed, so on a
    # loaded box the two may be found by two passes: collect the passes' reports.)
    lost: list[str] = []

    def passes() -> bool:
        report = stack.reconcile()
        assert report["stale"] == [], report
        lost.extend(report["lost"])
        return len(lost) >= len(queued)

    wait_until(passes, 30, "the reconciler to notice the lost messages")
    assert sorted(lost) == sorted(queued)  # each queued job re-sent once; the running one not at all
    assert stack.reconcile()["lost"] == []  # the messages are back: no second copy

    for job_id, cfg in [(running, running_cfg), *((j, queued_cfg) for j in queued)]:
        job = stack.wait_status(job_id, {"succeeded", "failed", "cancelled"}, timeout=300, tick=stack.reconcile)
        assert job["status"] == "succeeded", (job, stack.logs())
        assert job["attempts"] == 1, job  # none ran twice ...
        epochs = cfg["optim"]["epochs"]
        assert final_records(stack, job_id) == sorted((e, s) for e in range(1, epochs + 1) for s in ("train", "val"))
    log = (stack.base / "worker0.log").read_text()
    assert log.count("succeeded in") == 3, log[-3000:]  # ... and the worker ran three tasks, not more
    assert messages_in_broker(stack.settings, r) == ""  # nothing left to deliver
