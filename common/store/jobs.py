"""Job-store operations shared by the API, the worker and the reconciler.

Each function runs inside a caller's transaction (``with transaction(factory) as s``) and takes
the row lock it needs: ``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite every transaction is
``BEGIN IMMEDIATE`` and therefore already exclusive.
"""
from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.store.models import FINISHED, IdempotencyKey, Job, JobStatus, User, utcnow


class JobNotFound(LookupError):
    """No such job, or not one the caller may see (both answer 404, so ids do not leak)."""


class JobConflict(Exception):
    """The job's state does not allow the operation (e.g. cancelling a finished job)."""


class IdempotencyMismatch(Exception):
    """An Idempotency-Key was reused with a different request body."""


def new_job_id() -> str:
    return uuid.uuid4().hex


def lock_job(session: Session, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id).with_for_update())


def visible_job(session: Session, user: User, job_id: str, *, for_update: bool = False) -> Job:
    stmt = select(Job).where(Job.id == job_id, Job.deleted_at.is_(None))
    if not user.is_admin:
        stmt = stmt.where(Job.user_id == user.id)
    if for_update:
        stmt = stmt.with_for_update()
    job = session.scalar(stmt)
    if job is None:
        raise JobNotFound(job_id)
    return job


def find_idempotent(session: Session, user: User, key: str, body_hash: str) -> Job | None:
    row = session.scalar(select(IdempotencyKey).where(IdempotencyKey.user_id == user.id, IdempotencyKey.key == key))
    if row is None:
        return None
    if row.body_hash != body_hash:
        raise IdempotencyMismatch(key)
    return session.scalar(select(Job).where(Job.id == row.job_id))


def create_job(
    session: Session,
    *,
    user: User,
    config: dict[str, Any],
    name: str,
    queue: str,
    priority: int,
    max_attempts: int,
    after_id: str | None = None,
    init_from: dict[str, Any] | None = None,
    idempotency: tuple[str, str] | None = None,
) -> Job:
    """Insert a job (queued, or waiting when it depends on an unfinished job).

    With ``idempotency=(key, body_hash)`` the key row is inserted in the same transaction; a
    concurrent request with the same key then fails on the unique constraint (IntegrityError),
    and the caller retries, finding the first request's job.
    """
    status = JobStatus.queued
    if after_id is not None:
        dep = session.scalar(select(Job).where(Job.id == after_id))
        if dep is None:
            raise JobNotFound(after_id)
        if dep.status != JobStatus.succeeded.value:
            if dep.job_status.finished:
                raise JobConflict(f"job {after_id} ended {dep.status}; it will never succeed")
            status = JobStatus.waiting
    job = Job(
        id=new_job_id(), user_id=user.id, name=name, queue=queue, priority=priority, status=status.value,
        config=config, after_id=after_id, init_from=init_from, max_attempts=max_attempts,
    )
    session.add(job)
    session.flush()
    if idempotency is not None:
        key, body_hash = idempotency
        session.add(IdempotencyKey(user_id=user.id, key=key, body_hash=body_hash, job_id=job.id))
        session.flush()  # raises IntegrityError on a concurrent duplicate key
    return job


def list_jobs(
    session: Session, user: User, *, statuses: Sequence[str] = (), before_pk: int | None = None, limit: int = 50
) -> list[Job]:
    stmt = select(Job).where(Job.deleted_at.is_(None)).order_by(Job.pk.desc()).limit(limit)
    if not user.is_admin:
        stmt = stmt.where(Job.user_id == user.id)
    if statuses:
        stmt = stmt.where(Job.status.in_(list(statuses)))
    if before_pk is not None:
        stmt = stmt.where(Job.pk < before_pk)
    return list(session.scalars(stmt))


def finish_dependents(session: Session, job: Job) -> list[Job]:
    """After ``job`` finished: release its waiting dependents (queued) if it succeeded, else fail
    them. Returns the jobs that became queued (the caller enqueues them after commit)."""
    released: list[Job] = []
    for dep in session.scalars(
        select(Job).where(Job.after_id == job.id, Job.status == JobStatus.waiting.value).with_for_update()
    ):
        if job.status == JobStatus.succeeded.value:
            dep.status = JobStatus.queued.value
            released.append(dep)
        else:
            dep.status = JobStatus.failed.value
            dep.finished_at = utcnow()
            dep.failure_reason = f"dependency {job.id} ended {job.status}"
            finish_dependents(session, dep)
    return released


def request_cancel(session: Session, job: Job) -> Job:
    """Cancel a job that has not started at once; ask a running one to stop (the supervisor
    sees the flag at its next heartbeat and stops the child, which keeps its last checkpoint)."""
    status = job.job_status
    if status.finished:
        raise JobConflict(f"job already {status.value}")
    if status in (JobStatus.queued, JobStatus.waiting, JobStatus.interrupted):
        job.status = JobStatus.cancelled.value
        job.finished_at = utcnow()
        job.cancel_requested = True
        finish_dependents(session, job)
    else:
        job.cancel_requested = True
    return job


def mark_enqueued(session: Session, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))


def age_s(when: dt.datetime | None, now: dt.datetime | None = None) -> float | None:
    if when is None:
        return None
    return ((now or utcnow()) - when).total_seconds()


# ------------------------------------------------------------------------- attempts
def attempt_started_training(job: Job) -> bool:
    """Whether the latest attempt got as far as training: the progress its training process
    reported (copied into the row at each heartbeat) is newer than the claim. Training writes
    progress only once a batch is done, so a run that was still starting, or whose worker died
    within a heartbeat of its first batch, counts as not started."""
    if job.claimed_at is None or not isinstance(job.progress, dict):
        return False
    updated = job.progress.get("updated_at")
    return isinstance(updated, (int, float)) and updated >= job.claimed_at.timestamp()


def lost_attempts(job: Job) -> int:
    """Ended attempts that count against ``max_attempts``: their worker or training process died
    while training (the others were interruptions). Call it while no attempt runs."""
    return max(0, (job.attempts or 0) - (job.interruptions or 0))


def end_lost_attempt(job: Job, reason: str) -> bool:
    """The running job's worker is gone: make it `interrupted` (to be re-sent and resumed).
    An attempt lost before it trained counts as an interruption, not against max_attempts.
    Returns whether it counted as an interruption."""
    interruption = not attempt_started_training(job)
    job.status = JobStatus.interrupted.value
    job.claim_token = None
    job.child_pid = None
    job.failure_reason = reason
    if interruption:
        job.interruptions = (job.interruptions or 0) + 1
    return interruption


__all__ = [
    "JobNotFound", "JobConflict", "IdempotencyMismatch", "IntegrityError", "FINISHED", "new_job_id",
    "lock_job", "visible_job", "find_idempotent", "create_job", "list_jobs", "finish_dependents",
    "request_cancel", "mark_enqueued", "age_s", "JobPaths", "init_from_path", "attempt_started_training",
    "lost_attempts", "end_lost_attempt",
]


# ------------------------------------------------------------------------- on-disk job layout


from common.rundir import JobPaths  # noqa: F401


def init_from_path(job_id: str, checkpoint: str) -> str:
    """The config `init_from` value (relative to TEACHER_RUNS_ROOT = the jobs root)."""
    name = checkpoint if checkpoint.endswith(".pt") else f"{checkpoint}.pt"
    return f"{job_id}/run/checkpoints/{name}"

