"""The stall watchdog with real processes (issue 11): a training child that hangs (a test-only
fault that blocks SIGTERM and sleeps, as a deadlocked DataLoader or a collective waiting for a
dead rank does) is killed with its process group once its liveness file has not changed for the
job's runtime.stall_timeout_s; the job is interrupted with the reason "stalled at epoch E step S
for T s" and retried from its step checkpoint, which gets past the hang and succeeds."""
from __future__ import annotations

import copy
import os
from typing import Any

import pytest

from common.rundir import JobPaths
from tests.support.stack import deployed_worker_argv

pytestmark = pytest.mark.slow


def test_a_hung_training_is_killed_and_retried_from_its_checkpoint(stack_factory, service_config):
    stack = stack_factory(TEACHER_FAULT="hang_at_step:3")
    stack.start_api()
    stack.headers = stack.token("alice")
    worker = stack.start_worker(deployed_worker_argv())
    cfg: dict[str, Any] = copy.deepcopy(service_config)
    cfg["model"]["arch"] = "shufflenet_v2_x0_5"  # small and fast: the point is the hang
    cfg["optim"].update(epochs=1, batch_size=16)
    cfg["runtime"]["stall_timeout_s"] = 15  # longer than a loaded box takes to import torch and start
    cfg["checkpoint"]["every_steps"] = 1
    r = stack.post("/api/v1/jobs", json=cfg)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    job = stack.wait_status(job_id, {"succeeded", "failed", "cancelled"}, timeout=300)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert (job["attempts"], job["interruptions"], job["failures"]) == (2, 1, 0), job["timeline"]
    first, second = job["timeline"]
    assert first["cause"] == "stalled" and first["stop"] == "stalled", first
    assert first["reason"].startswith("interrupted: stalled at epoch 1 step 3 for "), first["reason"]
    # it hung right after step 3, before that step's periodic checkpoint: the retry resumed from step 2's
    assert (second["resumed_from"]["step"], second["resumed_from"]["checkpoint"]) == (2, "step_00000002.pt"), second
    paths = JobPaths.of(stack.settings.jobs_root, job_id)
    assert (paths.root / ".fault-hang-3").exists()  # the fault fired in the first attempt only
    assert worker.poll() is None
    assert "killing the training process group" in "".join(
        p.read_text() for p in stack.base.glob("worker*.log") if os.path.getsize(p))
