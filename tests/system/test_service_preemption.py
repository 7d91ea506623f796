"""Preemption-safe jobs with real processes (gunicorn, Celery workers started as deployed,
redis-server, training children, real files), issue 15: a worker's SIGTERM mid-epoch hands the
job to another worker, which resumes from the step checkpoint written at the stop; a SIGKILLed
worker's job resumes from the last periodic step checkpoint; six preemptions in a row are six
interruptions, not a failure; a training that fails every time fails after TEACHER_MAX_ATTEMPTS
with its own error. Each attempt is read back from the job's timeline (GET /api/v1/jobs/{id})."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from common.rundir import PROGRESS, JobPaths, Manifest, is_step_file, read_object
from tests.support.procs import wait_until
from tests.support.stack import Stack, db_job, deployed_worker_argv

pytestmark = pytest.mark.slow

FINISHED = {"succeeded", "failed", "cancelled"}


def preemptible_config(service_config: dict[str, Any], epochs: int = 2, **checkpoint: Any) -> dict[str, Any]:
    """16 steps an epoch (64 images / 4), each logged: a mid-epoch window wide enough to catch
    (resnet18's steps take a while even on an idle machine)."""
    cfg = copy.deepcopy(service_config)
    cfg["optim"].update(epochs=epochs, batch_size=4)
    cfg["runtime"]["log_interval"] = 1
    cfg["checkpoint"].update(checkpoint)
    return cfg


def start_deployed_worker(stack: Stack) -> subprocess.Popen[Any]:
    return stack.start_worker(deployed_worker_argv())


def trained_mid_epoch(stack: Stack, job_id: str, attempt: int, min_batch: int = 1, paths: JobPaths | None = None) -> bool:
    """Attempt ``attempt`` runs, has trained since its claim (its own progress), and is inside an
    epoch, at least ``min_batch`` batches in. With ``paths``, the progress is read from the run's
    own progress.json (written every step here) rather than the row's copy, which the supervisor
    refreshes once per heartbeat (0.5 s: dozens of steps on a fast machine)."""
    job = db_job(stack, job_id)
    p = (read_object(paths.run / PROGRESS) if paths is not None else job.progress) or {}
    fresh = job.claimed_at is not None and (p.get("updated_at") or 0) >= job.claimed_at.timestamp()
    return (job.status == "running" and job.attempts == attempt and job.child_pid is not None and fresh
            and p.get("phase") == "train" and min_batch <= (p.get("batch") or 0) < (p.get("batches") or 0))


def worker_of(stack: Stack, job_id: str) -> subprocess.Popen[Any]:
    """The worker process that holds the job's claim (job.worker is "host:pid")."""
    pid = int(str(db_job(stack, job_id).worker).rpartition(":")[2])
    return next(p for p in stack.workers if p.pid == pid)


def sigterm_worker(stack: Stack, proc: subprocess.Popen[Any]) -> None:
    """`docker compose stop`, or a spot host's shutdown: SIGTERM to the worker's main process; it
    stops its child (which checkpoints), records the interruption, re-sends the job and exits."""
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not exit within 90 s of SIGTERM\n{stack.logs()}")
    stack.workers.remove(proc)
    assert rc == 0, (rc, stack.logs())  # a warm shutdown


def manifest(paths: JobPaths) -> Manifest | None:
    return Manifest.read(paths.manifest)


def step_records(paths: JobPaths) -> list[dict[str, Any]]:
    return [json.loads(line) for line in paths.run.joinpath("steps.jsonl").read_text().splitlines() if line.strip()]


def history_epochs(paths: JobPaths) -> list[int]:
    return [e["epoch"] for e in json.loads(paths.history.read_text())["epochs"]]


# ----------------------------------------------------------------------------- a. SIGTERM mid-epoch
def test_a_worker_sigterm_mid_epoch_resumes_on_another_worker_from_the_step_checkpoint(stack_factory, service_config):
    stack = stack_factory()
    stack.start_api()
    stack.headers = stack.token("alice")
    first = start_deployed_worker(stack)
    job_id = stack.submit(preemptible_config(service_config, epochs=2))
    paths = JobPaths.of(stack.settings.jobs_root, job_id)

    wait_until(lambda: trained_mid_epoch(stack, job_id, 1, min_batch=3), 180, "mid-epoch 1 of attempt 1", interval=0.1)
    sigterm_worker(stack, first)
    job = stack.job(job_id)
    assert job["status"] == "interrupted" and (job["interruptions"], job["failures"]) == (1, 0), job
    stopped = job["timeline"][0]
    assert (stopped["cause"], stopped["stop"], stopped["exit_code"]) == ("preempted", "worker_shutdown", 3), stopped
    assert "SIGTERM to the worker" in stopped["reason"], stopped
    # the stop wrote a step checkpoint: the resume point is mid-epoch, not epoch 0
    point = manifest(paths).resume_point()
    assert point is not None and is_step_file(point.name) and point.step > 0, manifest(paths)
    # ... so almost nothing is lost: only the time since that checkpoint, written at the stop
    assert stopped["lost_s"] is not None and stopped["lost_s"] < 30, stopped
    before = paths.run.joinpath("steps.jsonl").read_text().splitlines()

    start_deployed_worker(stack)  # another worker takes the re-sent message
    job = stack.wait_status(job_id, FINISHED, timeout=240)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert (job["attempts"], job["interruptions"], job["failures"]) == (2, 1, 0), job
    resumed = job["timeline"][1]["resumed_from"]
    assert resumed is not None and resumed["step"] > 0 and resumed["batch"] > 0, job["timeline"]
    assert resumed["checkpoint"] == point.name and resumed["step"] == point.step
    assert job["resumed_from"] == resumed  # the latest attempt's, at the top level
    assert job["timeline"][1]["cause"] == "succeeded" and job["timeline"][1]["worker"] != stopped["worker"]
    # `teacher status JOB` shows the same timeline as a table
    token = stack.headers["Authorization"].removeprefix("Bearer ")
    out = subprocess.run([sys.executable, "-m", "common.apps.cli", "status", job_id], capture_output=True, text=True,
                         env={**stack.env, "TEACHER_URL": stack.api_url, "TEACHER_TOKEN": token}, timeout=120)
    assert out.returncode == 0, out.stderr
    table = out.stdout[out.stdout.index("timeline:"):].splitlines()
    assert "preempted (worker_shutdown)" in table[2] and "start" in table[2], out.stdout
    assert "succeeded" in table[3] and f"epoch {resumed['epoch']} step {resumed['step']}" in table[3], out.stdout

    # The step stream shows where attempt 2 continued: attempt 1's records up to the resume
    # point are kept as written (not replayed from the epoch's start), and the next record is
    # the step after it.
    records = step_records(paths)
    kept = [json.loads(line) for line in before]
    end = max(i for i, r in enumerate(kept) if r["split"] == "train" and r["step"] <= resumed["step"]) + 1
    assert records[:end] == kept[:end], "attempt 2 rewrote steps it resumed after"
    after = [r for r in records[end:] if r["split"] == "train"]
    assert after[0]["step"] == resumed["step"] + 1 and after[0]["epoch"] == resumed["epoch"] + 1, after[0]
    train_steps = [r["step"] for r in records if r["split"] == "train" and not r["final"]]
    assert train_steps == sorted(set(train_steps)), "a step was trained twice"
    assert history_epochs(paths) == [1, 2]


# ----------------------------------------------------------------------------- b. SIGKILL mid-epoch
def test_a_sigkilled_worker_mid_epoch_resumes_from_the_last_periodic_step_checkpoint(stack_factory, service_config):
    every = 4
    stack = stack_factory()
    stack.start_api()
    stack.headers = stack.token("alice")
    worker = start_deployed_worker(stack)
    job_id = stack.submit(preemptible_config(service_config, epochs=2, every_steps=every))
    paths = JobPaths.of(stack.settings.jobs_root, job_id)

    def past_a_periodic_checkpoint() -> bool:
        point = (manifest(paths) or Manifest("")).resume_point()
        step = (db_job(stack, job_id).progress or {}).get("step") or 0
        return (trained_mid_epoch(stack, job_id, 1) and point is not None and is_step_file(point.name)
                and step > point.step)
    wait_until(past_a_periodic_checkpoint, 180, "a periodic step checkpoint in epoch 1", interval=0.1)

    # The host dies: worker and training process at once. (The child is stopped first: its
    # parent-death SIGTERM would otherwise let it write a checkpoint of its own at the stop.)
    child = db_job(stack, job_id).child_pid
    os.kill(child, signal.SIGSTOP)
    stack.kill_worker(worker)
    os.kill(child, signal.SIGKILL)
    point = manifest(paths).resume_point()
    assert is_step_file(point.name) and point.step % every == 0 and point.step > 0, point

    start_deployed_worker(stack)
    job = stack.wait_status(job_id, FINISHED, timeout=300, tick=stack.reconcile)
    assert job["status"] == "succeeded", (job, stack.logs())
    lost, resumed = job["timeline"]
    assert lost["cause"] == "worker_lost" and (job["interruptions"], job["failures"]) == (1, 0)  # not a failure
    assert lost["lost_s"] is not None and lost["lost_s"] > 0, lost
    r = resumed["resumed_from"]
    assert (r["checkpoint"], r["step"]) == (point.name, point.step) and r["batch"] > 0, job["timeline"]
    records = step_records(paths)
    train_steps = [x["step"] for x in records if x["split"] == "train" and not x["final"]]
    assert train_steps == sorted(set(train_steps)), "the step stream has a step twice"
    assert history_epochs(paths) == [1, 2]


# ----------------------------------------------------------------------------- c. six preemptions
def test_a_job_preempted_six_times_in_a_row_still_succeeds(stack_factory, service_config):
    stack = stack_factory()
    stack.start_api()
    stack.headers = stack.token("alice")
    start_deployed_worker(stack)
    start_deployed_worker(stack)  # a spare: takes each re-sent message while the stopped one exits
    # Four epochs (64 steps) and each stop caught a step or two into its attempt (progress.json):
    # six short attempts cannot finish the run, so the seventh is the one that succeeds. (With
    # three epochs and the row's progress, a fast machine once finished the run in the sixth.)
    epochs = 4
    job_id = stack.submit(preemptible_config(service_config, epochs=epochs))
    paths = JobPaths.of(stack.settings.jobs_root, job_id)

    for attempt in range(1, 7):
        wait_until(lambda: trained_mid_epoch(stack, job_id, attempt, paths=paths), 180, f"attempt {attempt} training",
                   interval=0.05)
        sigterm_worker(stack, worker_of(stack, job_id))
        start_deployed_worker(stack)  # the next spare (compose's restart: policy)

    job = stack.wait_status(job_id, FINISHED, timeout=300)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert (job["attempts"], job["interruptions"], job["failures"]) == (7, 6, 0), job
    causes = [a["cause"] for a in job["timeline"]]
    assert causes == ["preempted"] * 6 + ["succeeded"], job["timeline"]
    assert all(a["stop"] == "worker_shutdown" for a in job["timeline"][:6])
    assert all(a["resumed_from"] is not None and a["resumed_from"]["step"] > 0 for a in job["timeline"][1:])
    assert history_epochs(paths) == list(range(1, epochs + 1))  # every epoch exactly once
    finals = sorted((r["epoch"], r["split"]) for r in step_records(paths) if r["final"])
    assert finals == sorted((e, s) for e in range(1, epochs + 1) for s in ("train", "val"))


# ----------------------------------------------------------------------------- d. training fails
def test_a_training_that_fails_every_time_fails_after_max_attempts_with_its_error(stack_factory, service_config):
    """SGD at lr 100 makes the loss non-finite within a few steps, the same way every time (a
    fixed seed): the training raises (exit 1). The first failure is retried from the start (no
    checkpoint yet) by the same worker; the second one ends the job with the training's error."""
    stack = stack_factory(TEACHER_MAX_ATTEMPTS="2")
    stack.start_api()
    stack.headers = stack.token("alice")
    worker = start_deployed_worker(stack)
    cfg = copy.deepcopy(service_config)
    cfg["model"]["arch"] = "shufflenet_v2_x0_5"  # small and fast: it only has to fail
    cfg["optim"].update(epochs=1, batch_size=4, optimizer="sgd", lr=100, warmup_epochs=0)
    job_id = stack.submit(cfg)

    job = stack.wait_status(job_id, FINISHED, timeout=240)
    assert job["status"] == "failed", (job, stack.logs())
    assert (job["attempts"], job["failures"], job["interruptions"], job["exit_code"]) == (2, 2, 0, 1), job
    reason = job["failure_reason"]
    assert "training loss became " in reason and "at epoch 1, step" in reason, reason  # progress.json error
    first, second = job["timeline"]
    assert first["cause"] == second["cause"] == "training_failed", job["timeline"]
    assert "will retry from the last checkpoint" in first["reason"] and reason in first["reason"]
    assert first["lost_s"] is not None and second["lost_s"] is None  # only the first was resumed after
    assert second["reason"] == reason
    assert worker.poll() is None
    log = JobPaths.of(stack.settings.jobs_root, job_id).log.read_text()
    assert log.count("=== attempt") == 2
    # nothing runs it again
    stack.reconcile()
    assert db_job(stack, job_id).attempts == 2
