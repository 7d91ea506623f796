"""Jobs of several processes through the real service (issue 11): API -> Redis -> Celery worker
-> supervisor -> `teacher train` -> torchrun -> 2 gloo ranks on the CPU.

* The recorded metrics are exact: validation equals a fresh single-process evaluation of each
  epoch's checkpoint, training equals the step stream's sums; every sample counted once, with a
  smaller last batch, a padded training shard and unevenly sharded validation (31 samples).
* A rank SIGKILLed in the middle of an epoch ends the job at once (no hang): it is interrupted,
  resumed, and its history equals the uninterrupted run's, bit for bit.
* A rank that hangs is caught by the stall watchdog: interrupted as "stalled", then succeeds.
* Cancel and a worker's SIGTERM stop every rank within the grace period; none is left behind.
"""
from __future__ import annotations

import copy
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from common.rundir import JobPaths
from tests.support.procs import wait_until
from tests.support.stack import db_job
from tests.support.training import run_teacher

pytestmark = pytest.mark.slow

METRICS = ("loss", "top1", "top5", "samples")


@pytest.fixture
def dist_config(service_config: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = copy.deepcopy(service_config)
    cfg["model"]["arch"] = "shufflenet_v2_x0_5"  # small: the point is the processes
    # 31 samples per split: global batches of 8, 8, 8, 7; rank 1's training shard is padded by
    # one (weight 0) and validation splits 16/15.
    cfg["data"]["max_samples"] = 31
    cfg["optim"].update(epochs=2, batch_size=8)
    cfg["runtime"]["log_interval"] = 1
    cfg["resources"] = {"processes": 2}
    return cfg


def _history(stack, job_id: str) -> dict[str, Any]:
    return json.loads((JobPaths.of(stack.settings.jobs_root, job_id).run / "history.json").read_text())


def _metrics(history: dict[str, Any]) -> list[dict[str, Any]]:
    return [{split: {k: e[split][k] for k in METRICS} for split in ("train", "val")} | {"epoch": e["epoch"]}
            for e in history["epochs"]]


def _ranks_of(launcher_pid: int) -> list[int]:
    """The training processes torchrun started for this launcher (each in a session of its own)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"TEACHER_LAUNCHER_PID={launcher_pid}".encode() in env and int(entry.name) != launcher_pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return (Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]) != "Z"
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_two_process_job_has_exact_metrics_and_a_killed_rank_resumes_to_the_same_history(stack_factory, dist_config):
    stack = stack_factory()
    stack.start_api()
    stack.headers = stack.token("alice")
    worker = stack.start_worker()
    plain = stack.submit(dist_config)
    job = stack.wait_status(plain, {"succeeded", "failed", "cancelled"}, timeout=300)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert (job["attempts"], job["interruptions"], job["failures"]) == (1, 0, 0)
    run = JobPaths.of(stack.settings.jobs_root, plain).run
    history = _history(stack, plain)
    assert [e["train"]["samples"] for e in history["epochs"]] == [31, 31]
    assert [e["val"]["samples"] for e in history["epochs"]] == [31, 31]
    log = (run / "train.log").read_text()
    assert "2 processes (gloo), 4 samples per process and batch" in log

    # Validation: a fresh single-process evaluation of each epoch's checkpoint.
    env = {**stack.env, "TEACHER_DATA_ROOT": str(stack.settings.data_root)}
    for e in history["epochs"]:
        proc = run_teacher(["evaluate", str(run / "checkpoints" / f"epoch_{e['epoch']:04d}.pt")], env, check=True)
        fresh = json.loads(proc.stdout)
        assert fresh["samples"] == e["val"]["samples"]
        for k in ("loss", "top1", "top5"):
            assert math.isclose(fresh[k], e["val"][k], rel_tol=1e-6), (k, fresh, e["val"])
    # Training: the epoch's values are the step stream's (all-reduced) sums.
    finals = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    finals = {r["epoch"]: r for r in finals if r["split"] == "train" and r["final"]}
    for e in history["epochs"]:
        rec = finals[e["epoch"]]
        assert rec["samples"] == 31
        assert math.isclose(e["train"]["loss"], rec["loss_sum"] / rec["samples"], rel_tol=1e-12)
        assert math.isclose(e["train"]["top1"], 100 * rec["correct1"] / rec["samples"], rel_tol=1e-12)

    # The same config again, with rank 1 SIGKILLed after step 6 (epoch 2 of 4 steps each).
    stack.kill_worker(worker)
    stack.env["TEACHER_FAULT"] = "kill_at_step:6,once,only_rank:1"
    stack.start_worker()
    killed = stack.submit(dist_config)
    job = stack.wait_status(killed, {"succeeded", "failed", "cancelled"}, timeout=300)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert (job["attempts"], job["interruptions"], job["failures"]) == (2, 0, 1), job["timeline"]
    first = job["timeline"][0]
    assert first["cause"] == "killed", first  # a rank died by a signal nobody sent: counts as a failure
    assert "killed by signal 9" in first["reason"], first
    assert job["timeline"][1]["resumed_from"]["epoch"] == 1, job["timeline"]
    # Each epoch once, and the same numbers as the uninterrupted run (CPU, gloo: deterministic).
    assert _metrics(_history(stack, killed)) == _metrics(history)


def test_a_hung_rank_is_caught_by_the_stall_watchdog(stack_factory, dist_config):
    stack = stack_factory(TEACHER_FAULT="hang_at_step:3,only_rank:1")
    stack.start_api()
    stack.headers = stack.token("alice")
    stack.start_worker()
    cfg = copy.deepcopy(dist_config)
    cfg["runtime"]["stall_timeout_s"] = 45  # longer than a loaded box takes to start three processes importing torch
    job_id = stack.submit(cfg)
    job = stack.wait_status(job_id, {"succeeded", "failed", "cancelled"}, timeout=400)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert (job["attempts"], job["interruptions"], job["failures"]) == (2, 1, 0), job["timeline"]
    first = job["timeline"][0]
    assert first["cause"] == "stalled", first
    assert first["reason"].startswith("interrupted: stalled at epoch 1 step 3 for "), first["reason"]


@pytest.mark.parametrize("how", ["cancel", "worker_sigterm"])
def test_stopping_a_two_process_job_stops_every_rank(stack_factory, dist_config, how):
    stack = stack_factory()
    stack.start_api()
    stack.headers = stack.token("alice")
    worker = stack.start_worker()
    cfg = copy.deepcopy(dist_config)
    cfg["optim"]["epochs"] = 50  # still training when stopped
    job_id = stack.submit(cfg)
    stack.wait_status(job_id, {"running"}, timeout=120)
    launcher = wait_until(lambda: db_job(stack, job_id).child_pid, 60, "the child's pid")
    ranks = wait_until(lambda: (r := _ranks_of(launcher)) and len(r) == 2 and r, 120, "two ranks")
    groups = {os.getpgid(pid) for pid in ranks}
    assert len(groups) == 2 and os.getpgid(launcher) not in groups  # torchrun: a session per rank
    run = JobPaths.of(stack.settings.jobs_root, job_id).run
    wait_until(lambda: (run / "steps.jsonl").is_file() and (run / "steps.jsonl").stat().st_size, 120, "a step")

    started = time.monotonic()
    if how == "cancel":
        assert stack.post(f"/api/v1/jobs/{job_id}/cancel").status_code in (200, 202)
        job = stack.wait_status(job_id, {"cancelled"}, timeout=90)
    else:
        worker.send_signal(signal.SIGTERM)  # a warm shutdown (docker stop, preemption)
        wait_until(lambda: worker.poll() is not None, 90, "the worker to exit")
        stack.workers.remove(worker)  # gone on purpose (wait_status asserts the others live)
        job = stack.job(job_id)
        assert job["status"] == "interrupted", job
    grace = float(stack.env["TEACHER_CANCEL_GRACE_S"])
    assert time.monotonic() - started < grace
    wait_until(lambda: not any(_alive(pid) for pid in [launcher, *ranks]), 10, "every process gone")
    assert not any(_group_alive(g) for g in groups), "a rank's process group outlived the job"
    progress = json.loads((run / "progress.json").read_text())
    assert progress["status"] == "stopped", progress
    if how == "worker_sigterm":
        # Rank 0 wrote a step checkpoint at the stop; a new worker resumes from it.
        stack.start_worker()
        resumed = wait_until(lambda: stack.job(job_id)["timeline"][-1].get("resumed_from"), 120, "the resume")
        assert resumed["checkpoint"].startswith("step_"), resumed
        assert stack.post(f"/api/v1/jobs/{job_id}/cancel").status_code in (200, 202)
        stack.wait_status(job_id, {"cancelled"}, timeout=90)
