"""Cancel, and recovery from killed training children and killed workers, with real processes."""
from __future__ import annotations

import copy
import json
import os
import signal
import threading

import pytest

from common.store.jobs import JobPaths
from tests.support.procs import wait_until
from tests.support.stack import Stack, db_job

pytestmark = pytest.mark.slow


def manifest_epochs(stack: Stack, job_id: str) -> set[int]:
    r = stack.get(f"/api/v1/jobs/{job_id}/checkpoints")
    return {c["epoch"] for c in r.json()["checkpoints"]} if r.status_code == 200 else set()




def test_cancel_queued_and_running(stack_factory, service_config, tmp_path):
    stack = stack_factory()
    stack.start_api()
    stack.headers = stack.token("alice")
    worker = stack.start_worker()

    long_cfg = copy.deepcopy(service_config)
    long_cfg["optim"]["epochs"] = 50
    running = stack.post("/api/v1/jobs", json=long_cfg).json()["id"]
    queued = stack.post("/api/v1/jobs", json=service_config).json()["id"]  # behind it: one job per worker
    wait_until(lambda: 1 in manifest_epochs(stack, running), 180, "the first epoch checkpoint")

    # follow the running job's log live (server-sent events) while it is cancelled
    import requests

    stream = requests.get(f"{stack.api_url}/api/v1/jobs/{running}/logs", params={"follow": "true", "tail": 1},
                          headers=stack.headers, stream=True, timeout=120)
    assert stream.status_code == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.extend(stream.iter_lines(decode_unicode=True)), daemon=True)
    reader.start()

    r = stack.post(f"/api/v1/jobs/{queued}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    r = stack.post(f"/api/v1/jobs/{running}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True

    job = stack.wait_status(running, {"cancelled", "failed", "succeeded"}, timeout=60)
    assert job["status"] == "cancelled" and job["exit_code"] == 3, job
    assert job["progress"]["epoch"] < 50
    assert stack.post(f"/api/v1/jobs/{running}/cancel").status_code == 409
    reader.join(timeout=30)
    assert not reader.is_alive(), "the event stream did not end with the job"
    assert received[-3:] == ["event: end", "data: cancelled", ""] or received[-2:] == ["event: end", "data: cancelled"]
    assert sum(line.startswith("data: ") for line in received) > 2  # lines arrived while it ran

    # the running job kept a loadable checkpoint
    import torch

    r = stack.get(f"/api/v1/jobs/{running}/checkpoints/last")
    assert r.status_code == 200
    (tmp_path / "last.pt").write_bytes(r.content)
    ckpt = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert "model" in ckpt and ckpt["config"]["optim"]["epochs"] == 50

    # the cancelled queued job's message reached the worker, which ignored it
    log = stack.base / "worker0.log"
    wait_until(lambda: log.read_text().count("succeeded in") >= 2, 30, "the worker to take the second message")
    skipped = stack.job(queued)
    assert skipped["status"] == "cancelled" and skipped["attempts"] == 0 and skipped["started_at"] is None
    assert not JobPaths.of(stack.settings.jobs_root, queued).run.exists()
    assert worker.poll() is None


def test_killed_child_and_killed_worker_resume_each_epoch_once(stack_factory, service_config):
    stack = stack_factory(TEACHER_MAX_ATTEMPTS="4")
    stack.start_api()
    stack.headers = stack.token("alice")
    worker = stack.start_worker()
    cfg = copy.deepcopy(service_config)
    cfg["optim"]["epochs"] = 3
    # 16 batches an epoch (64 images / 4): the mid-epoch window must outlast a few 0.5 s
    # heartbeats even on an idle machine, or the waits below can miss it.
    cfg["optim"]["batch_size"] = 4
    job_id = stack.post("/api/v1/jobs", json=cfg).json()["id"]

    def mid_epoch(epoch: int, attempts: int) -> bool:
        job = db_job(stack, job_id)
        p = job.progress or {}
        return (job.attempts == attempts and job.child_pid is not None and p.get("epoch") == epoch
                and p.get("phase") == "train" and 0 < (p.get("batch") or 0) < (p.get("batches") or 0))

    # 1. SIGKILL the training child in the middle of epoch 2
    wait_until(lambda: mid_epoch(2, 1), 180, "epoch 2 of attempt 1", interval=0.1)
    os.kill(db_job(stack, job_id).child_pid, signal.SIGKILL)
    # the supervisor records the interruption and re-sends; the same worker resumes it
    wait_until(lambda: mid_epoch(3, 2), 180, "epoch 3 of attempt 2", interval=0.1)

    # 2. SIGKILL the whole worker (main process and pool) in the middle of epoch 3, after the
    #    resumed attempt has checkpointed epoch 2
    stack.kill_worker(worker)
    stack.start_worker()
    # the heartbeat goes stale; the reconciler re-sends; the new worker resumes
    job = stack.wait_status(job_id, {"succeeded", "failed", "cancelled"}, timeout=300, tick=stack.reconcile)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["attempts"] == 3

    history = stack.get(f"/api/v1/jobs/{job_id}/metrics").json()
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    run = JobPaths.of(stack.settings.jobs_root, job_id).run
    finals = [(r["epoch"], r["split"]) for r in map(json.loads, (run / "steps.jsonl").read_text().splitlines()) if r["final"]]
    assert sorted(finals) == sorted({(e, s) for e in range(1, 4) for s in ("train", "val")})
    log = stack.get(f"/api/v1/jobs/{job_id}/logs", params={"tail": 1000}).json()["lines"]
    assert sum(line.startswith("=== attempt") for line in log) == 3


def test_job_that_keeps_killing_its_worker_fails_after_capped_attempts(stack_factory, service_config):
    stack = stack_factory(TEACHER_MAX_ATTEMPTS="2")
    stack.headers = stack.token("alice")
    stack.start_api()
    stack.start_worker()
    job_id = stack.post("/api/v1/jobs", json=service_config).json()["id"]
    for attempt in (1, 2):
        wait_until(lambda: db_job(stack, job_id).attempts == attempt and db_job(stack, job_id).child_pid, 120,
                   f"attempt {attempt}", interval=0.1)
        os.kill(db_job(stack, job_id).child_pid, signal.SIGKILL)
    job = stack.wait_status(job_id, {"succeeded", "failed"}, timeout=60)
    assert job["status"] == "failed" and "gave up after 2 failures" in job["failure_reason"], job  # killed children: failures
