"""A message delivered twice while its job runs (the broker's visibility timeout shorter than
the job, two idle-enough workers): the job runs once; the second delivery does nothing."""
from __future__ import annotations

import copy
import json

import pytest

from common.store.jobs import JobPaths

pytestmark = pytest.mark.slow


def test_redelivered_message_of_a_running_job_is_ignored(stack_factory, service_config):
    # 3 s: Redis hands the running job's unacknowledged message to the idle second worker
    # a few seconds into the training (the real setting is the job time limit plus an hour).
    stack = stack_factory(TEACHER_VISIBILITY_TIMEOUT_S="3")
    assert stack.settings.visibility_timeout == 3
    stack.start_api()
    stack.headers = stack.token("alice")
    stack.start_worker()
    stack.start_worker()
    cfg = copy.deepcopy(service_config)
    cfg["optim"].update(epochs=3, batch_size=4)  # well over the visibility timeout
    job_id = stack.post("/api/v1/jobs", json=cfg).json()["id"]

    job = stack.wait_status(job_id, {"succeeded", "failed", "cancelled"}, timeout=300)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["attempts"] == 1, job

    # Every delivery ran the task; all but one returned 'skipped' (the claim saw a live job).
    logs = "".join((stack.base / f"worker{i}.log").read_text() for i in range(2))
    deliveries = logs.count("] received")
    assert deliveries >= 2, logs[-4000:]  # the message did arrive twice (or more) ...
    assert logs.count("succeeded in") == deliveries  # ... every delivery was handled ...
    assert logs.count(": 'succeeded'") == 1  # ... one trained ...
    assert logs.count(": 'skipped'") == deliveries - 1  # ... and the others did nothing
    run_log = JobPaths.of(stack.settings.jobs_root, job_id).log.read_text()
    assert run_log.count("=== attempt") == 1
    steps = JobPaths.of(stack.settings.jobs_root, job_id).run / "steps.jsonl"
    finals = sorted((r["epoch"], r["split"]) for r in map(json.loads, steps.read_text().splitlines()) if r["final"])
    assert finals == sorted((e, s) for e in range(1, 4) for s in ("train", "val"))
