"""How the supervisor ends an attempt, on a real SQLite store and a run directory on disk (no
training): a training failure is retried from its checkpoint until max_attempts failures, an
integrity stop and bad input are not, a graceful stop is an interruption that names the
signal; each attempt's row gets its cause, resume point and lost work (common.store.attempts)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from sqlalchemy import select

from common.rundir import JobPaths
from common.settings import Settings
from common.store import Job, User, transaction
from common.store.attempts import RunView, lost_seconds
from common.store.jobs import create_job
from tests.support.training import TINY_CONFIG
from worker import supervisor as sup
from worker.store import sessions_for


def _setup(tmp_path: Path, *, max_attempts: int = 3, config: dict | None = None):
    from common.auth import create_token

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'state.db'}", jobs_root=tmp_path / "jobs",
                        max_attempts=max_attempts)
    sessions = sessions_for(settings.database_url)
    with transaction(sessions) as s:
        create_token(s, "alice")
        job_id = create_job(s, user=s.scalar(select(User)), config=dict(config or TINY_CONFIG), name="t",
                            queue="default", priority=5, max_attempts=max_attempts).id
    sent: list = []
    return settings, sessions, job_id, sup.Supervisor(settings, enqueue=lambda *a: sent.append(a)), sent


def _row(sessions, job_id: str) -> Job:
    with sessions() as s:
        return s.scalar(select(Job).where(Job.id == job_id))


def _run_files(paths: JobPaths, *, error: str | None = None, integrity_failed: list[str] | None = None,
               checkpoint_age_s: float = 20.0, resumed: dict | None = None) -> None:
    """What a trainer leaves: its config (so a claim resumes), a manifest with a step checkpoint
    written ``checkpoint_age_s`` ago, and a progress record."""
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    (paths.run / "config.yaml").write_text("x: 1\n")
    entry = {"name": "step_00000040.pt", "epoch": 1, "step": 40, "size": 1, "sha256": "0" * 64, "metrics": {},
             "created_at": time.time() - checkpoint_age_s}
    paths.manifest.write_text(json.dumps({"best_metric": "val.top1", "best": None, "checkpoints": [entry]}))
    progress = {"status": "failed" if error else "running", "updated_at": time.time() + 1, "error": error,
                "integrity": {"verdict": "fail" if integrity_failed else "pass", "failed": integrity_failed or [],
                              "warnings": []}}
    if resumed is not None:
        progress["resumed_from"] = resumed
    paths.progress.write_text(json.dumps(progress))


def test_a_training_failure_is_retried_from_its_checkpoint_until_max_attempts(tmp_path):
    settings, sessions, job_id, supervisor, sent = _setup(tmp_path, max_attempts=2)
    paths = JobPaths.of(settings.jobs_root, job_id)
    claim = supervisor.claim(job_id)
    _run_files(paths, error="training loss became nan at epoch 1, step 3")
    assert supervisor._record_outcome(claim, paths, 1, None, 1.0, 0.0) == sup.Outcome.retried
    row = _row(sessions, job_id)
    assert (row.status, row.failures, row.interruptions, len(sent)) == ("interrupted", 1, 0, 1)
    first = row.attempt_rows[0]
    assert (first.cause, first.exit_code) == ("training_failed", 1) and "loss became nan" in first.reason
    assert first.lost_s is not None and first.lost_s >= 0

    claim = supervisor.claim(job_id)  # attempt 2 resumes from the step checkpoint
    assert claim.attempt == 2
    resumed = _row(sessions, job_id).attempt_rows[1].resumed_from
    assert resumed["checkpoint"] == "step_00000040.pt" and resumed["step"] == 40
    _run_files(paths, error="training loss became nan at epoch 1, step 3")
    assert supervisor._record_outcome(claim, paths, 1, None, 2.0, 0.0) == sup.Outcome.failed
    row = _row(sessions, job_id)
    assert (row.status, row.failures, row.attempts) == ("failed", 2, 2)
    assert row.failure_reason == "training loss became nan at epoch 1, step 3"  # the training's error, as it said it
    assert [a.cause for a in row.attempt_rows] == ["training_failed", "training_failed"]
    assert row.attempt_rows[1].lost_s is None  # it ended the job


def test_an_integrity_stop_and_bad_input_are_not_retried(tmp_path):
    cfg = {**TINY_CONFIG, "integrity": {"on_fail": "stop"}}
    settings, sessions, job_id, supervisor, _ = _setup(tmp_path, config=cfg)
    paths = JobPaths.of(settings.jobs_root, job_id)
    claim = supervisor.claim(job_id)
    _run_files(paths, error="integrity check failed: train_metrics_zero", integrity_failed=["train_metrics_zero"])
    assert supervisor._record_outcome(claim, paths, 1, None, 1.0, 0.0) == sup.Outcome.failed
    row = _row(sessions, job_id)
    assert (row.status, row.failures, row.attempt_rows[0].cause) == ("failed", 0, "failed")

    settings, sessions, job_id, supervisor, _ = _setup(tmp_path / "b")
    paths = JobPaths.of(settings.jobs_root, job_id)
    claim = supervisor.claim(job_id)
    _run_files(paths, error="invalid config")
    assert supervisor._record_outcome(claim, paths, 2, None, 1.0, 0.0) == sup.Outcome.bad_input
    row = _row(sessions, job_id)
    assert (row.status, row.failures, row.attempt_rows[0].cause) == ("failed", 0, "failed")


def test_a_graceful_stop_for_a_worker_sigterm_is_an_interruption_that_names_it(tmp_path):
    settings, sessions, job_id, supervisor, _ = _setup(tmp_path)
    paths = JobPaths.of(settings.jobs_root, job_id)
    claim = supervisor.claim(job_id)
    point = {"epoch": 1, "step": 40, "batch": 40, "checkpoint": "step_00000040.pt", "created_at": 1.0}
    _run_files(paths, checkpoint_age_s=5.0, resumed=point)
    supervisor._stop_signal = "SIGTERM"  # what _SignalScope saw
    assert supervisor._record_outcome(claim, paths, 3, sup.Outcome.interrupted, 1.0, 0.0) == sup.Outcome.interrupted
    row = _row(sessions, job_id)
    attempt = row.attempt_rows[0]
    assert (row.interruptions, row.failures) == (1, 0)
    assert (attempt.cause, attempt.stop, attempt.exit_code) == ("preempted", "worker_shutdown", 3)
    assert "SIGTERM to the worker" in attempt.reason and "worker shutdown" in row.failure_reason
    assert attempt.resumed_from == point  # what this attempt's trainer reported
    # the claim was moments ago: lost is since the claim, not since the (older) checkpoint
    assert 0 <= attempt.lost_s < 5


def test_a_training_process_killed_by_a_signal_nobody_sent_is_a_failure(tmp_path):
    settings, sessions, job_id, supervisor, _ = _setup(tmp_path)
    paths = JobPaths.of(settings.jobs_root, job_id)
    claim = supervisor.claim(job_id)
    _run_files(paths)
    assert supervisor._record_outcome(claim, paths, -9, None, 1.0, 0.0) == sup.Outcome.interrupted
    row = _row(sessions, job_id)
    assert (row.failures, row.interruptions, row.attempt_rows[0].cause) == (1, 0, "killed")


def test_run_view_reads_the_resume_point_and_tolerates_damaged_files(tmp_path):
    jobs = tmp_path / "jobs"
    assert RunView.read(tmp_path / "not-mounted", "a" * 32) is None
    assert RunView.read(jobs.parent, "a" * 32) == RunView()  # nothing written yet
    paths = JobPaths.of(jobs, "a" * 32)
    _run_files(paths)
    view = RunView.read(jobs, "a" * 32)
    assert view.resume_point.name == "step_00000040.pt" and view.progress is not None
    paths.manifest.write_text("{not json")
    assert RunView.read(jobs, "a" * 32).resume_point is None


def test_lost_seconds_count_from_the_later_of_start_and_checkpoint():
    from common.rundir import CheckpointEntry
    from common.store.models import utcnow
    import datetime as dt

    end = utcnow()
    start = end - dt.timedelta(seconds=100)
    entry = lambda age: CheckpointEntry("e", 1, 1, 1, "0", {}, end.timestamp() - age)  # noqa: E731
    assert lost_seconds(start, end, None) == 100
    assert lost_seconds(start, end, entry(30)) == 30
    assert lost_seconds(start, end, entry(500)) == 100  # written before this attempt: all of it lost
    assert lost_seconds(start, end, entry(-5)) == 0  # another host's clock ahead: never negative
