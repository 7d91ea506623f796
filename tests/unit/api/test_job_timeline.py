"""A job's timeline in the API (GET /api/v1/jobs/{id}: timeline, resumed_from, failures) and in
`teacher status JOB`, from attempts made through the lifecycle's own events on the app's store;
every response is checked against the OpenAPI document (the `call` fixture)."""
from __future__ import annotations

import datetime as dt
import time

from common.apps.service_cli import _timeline_lines
from common.rundir import CheckpointEntry
from common.store import transaction
from common.store import lifecycle as lc
from common.store.attempts import RunView
from common.store.jobs import lock_job
from common.store.models import AttemptCause, StopCause, utcnow
from tests.support.api import submit


def _event(app, job_id: str, act) -> None:  # type: ignore[no-untyped-def]
    with transaction(app.extensions["teacher"].sessions) as s:
        act(lock_job(s, job_id))


def test_the_timeline_lists_each_attempt_with_its_cause_resume_point_and_lost_work(app, call, alice):
    r = submit(call, alice)
    assert r.status_code == 202 and r.json["timeline"] == [] and r.json["failures"] == 0
    job_id = r.json["id"]
    assert r.json["resumed_from"] is None

    # attempt 1: from scratch; preempted (the worker got SIGTERM) 30 s after its last checkpoint
    _event(app, job_id, lambda job: lc.claim(job, "host:1", RunView()))
    _event(app, job_id, lambda job: setattr(job.attempt_rows[-1], "started_at", utcnow() - dt.timedelta(seconds=100)))
    ckpt = CheckpointEntry("step_00000040.pt", 1, 40, 10, "0" * 64, {}, time.time() - 30)
    _event(app, job_id, lambda job: lc.interrupt(job, "interrupted: stopped for a worker shutdown", exit_code=3,
                                                cause=AttemptCause.preempted, stop=StopCause.worker_shutdown,
                                                run=RunView(ckpt)))
    # attempt 2: resumes from that step checkpoint; the trainer reports the exact point
    _event(app, job_id, lambda job: lc.claim(job, "host:2", RunView(ckpt)))
    point = {"epoch": 1, "step": 40, "batch": 40, "checkpoint": "step_00000040.pt", "created_at": ckpt.created_at}
    _event(app, job_id, lambda job: lc.heartbeat(job, child_pid=7, run_seconds=3.0, progress={
        "status": "running", "updated_at": time.time() + 1, "resumed_from": point}))

    job = call("get", f"/api/v1/jobs/{job_id}", headers=alice).json
    first, second = job["timeline"]
    assert (first["number"], first["worker"], first["cause"], first["stop"], first["exit_code"]) == \
        (1, "host:1", "preempted", "worker_shutdown", 3)
    assert first["resumed_from"] is None and first["ended_at"] is not None
    assert 29 <= first["lost_s"] < 60, first  # since the checkpoint, not since the start
    assert "worker shutdown" in first["reason"]
    assert (second["number"], second["cause"], second["ended_at"], second["lost_s"]) == (2, None, None, None)
    assert second["resumed_from"] == point and job["resumed_from"] == point
    assert (job["attempts"], job["interruptions"], job["failures"]) == (2, 1, 0)

    # attempt 2's training fails: a failure, retried; attempt 3 fails again: the job fails with it
    _event(app, job_id, lambda job: lc.interrupt(job, "training failed (retried): boom", exit_code=1,
                                                cause=AttemptCause.training_failed, run=RunView(ckpt)))
    _event(app, job_id, lambda job: lc.claim(job, "host:1", RunView(ckpt)))
    with transaction(app.extensions["teacher"].sessions) as s:
        lc.finish(s, lock_job(s, job_id), lc.Outcome.failed, "boom", exit_code=1, cause=AttemptCause.training_failed)
    job = call("get", f"/api/v1/jobs/{job_id}", headers=alice).json
    assert [a["cause"] for a in job["timeline"]] == ["preempted", "training_failed", "training_failed"]
    assert job["timeline"][-1]["lost_s"] is None  # it ended the job: nothing is resumed after it
    assert (job["status"], job["failure_reason"], job["failures"], job["interruptions"]) == ("failed", "boom", 2, 1)
    # the list shows the counters (and the timeline) too
    listed = call("get", "/api/v1/jobs", headers=alice).json["jobs"][0]
    assert listed["failures"] == 2 and len(listed["timeline"]) == 3


def test_teacher_status_prints_the_timeline_as_a_table():
    lines = _timeline_lines([
        {"number": 1, "started_at": "2026-12-02T01:00:00+00:00", "ended_at": "2026-12-02T01:05:00+00:00",
         "cause": "preempted", "stop": "worker_shutdown", "resumed_from": None, "lost_s": 75.0},
        {"number": 2, "started_at": "2026-12-02T01:06:00+00:00", "ended_at": None, "cause": None, "stop": None,
         "resumed_from": {"epoch": 1, "step": 40, "batch": 12, "checkpoint": "step_00000040.pt"}, "lost_s": None},
    ])
    assert lines[0] == "timeline:"
    header, first, second = lines[1:]
    assert header.split() == ["ATTEMPT", "START", "(UTC)", "END", "(UTC)", "CAUSE", "RESUMED", "FROM", "LOST"]
    assert first.split() == ["1", "2026-12-02", "01:00:00", "2026-12-02", "01:05:00", "preempted", "(worker_shutdown)",
                             "start", "1m15s"], first
    assert "running" in second and "epoch 1 step 40 (+12 batches)" in second
    # columns line up
    assert header.index("CAUSE") == first.index("preempted") == second.index("running")
    assert _timeline_lines([]) == []
