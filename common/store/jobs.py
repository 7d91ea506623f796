"""Job-store operations shared by the API, the worker and the reconciler.

Status changes are common.store.lifecycle's (re-exported here: request_cancel, ...). Each
function runs inside a caller's transaction (``with transaction(factory) as s``) and takes
the row lock it needs: ``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite every transaction is
``BEGIN IMMEDIATE`` and therefore already exclusive.
"""
from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Protocol, Sequence

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from common import rundir
from common.rundir import JobPaths  # noqa: F401 (re-exported: the job directory's layout is common.rundir's)
from common.store.lifecycle import (JobConflict, attempt_started_training, lost_attempts, mark_enqueued,
                                    request_cancel, submit_status)
from common.store.models import FINISHED, IdempotencyKey, Job, JobTag, utcnow


class JobNotFound(LookupError):
    """No such job, or not one the caller may see (both answer 404, so ids do not leak)."""


class IdempotencyMismatch(Exception):
    """An Idempotency-Key was reused with a different request body."""


def new_job_id() -> str:
    return uuid.uuid4().hex


def lock_job(session: Session, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id).with_for_update())


class Principal(Protocol):
    """Whoever asks for jobs: a ``User`` row, or the API's authenticated caller
    (``common.auth.Caller``, a value read without the ORM). Only these two are read."""

    @property
    def id(self) -> int: ...

    @property
    def is_admin(self) -> bool: ...


def visible_job(session: Session, user: Principal, job_id: str, *, for_update: bool = False) -> Job:
    stmt = select(Job).where(Job.id == job_id, Job.deleted_at.is_(None))
    if not user.is_admin:
        stmt = stmt.where(Job.user_id == user.id)
    if for_update:
        stmt = stmt.with_for_update()
    job = session.scalar(stmt)
    if job is None:
        raise JobNotFound(job_id)
    return job


def find_idempotent(session: Session, user: Principal, key: str, body_hash: str) -> Job | None:
    row = session.scalar(select(IdempotencyKey).where(IdempotencyKey.user_id == user.id, IdempotencyKey.key == key))
    if row is None:
        return None
    if row.body_hash != body_hash:
        raise IdempotencyMismatch(key)
    return session.scalar(select(Job).where(Job.id == row.job_id))


def create_job(
    session: Session,
    *,
    user: Principal,
    config: dict[str, Any],
    name: str,
    queue: str,
    priority: int,
    max_attempts: int,
    after_id: str | None = None,
    init_from: dict[str, Any] | None = None,
    idempotency: tuple[str, str] | None = None,
    tags: Sequence[str] = (),
) -> Job:
    """Insert a job (queued, or waiting when it depends on an unfinished job).

    With ``idempotency=(key, body_hash)`` the key row is inserted in the same transaction; a
    concurrent request with the same key then fails on the unique constraint (IntegrityError),
    and the caller retries, finding the first request's job.
    """
    dep = None
    if after_id is not None:
        dep = session.scalar(select(Job).where(Job.id == after_id))
        if dep is None:
            raise JobNotFound(after_id)
    status = submit_status(dep)  # JobConflict: the dependency ended without succeeding
    job = Job(
        id=new_job_id(), user_id=user.id, name=name, queue=queue, priority=priority, status=status.value,
        config=config, after_id=after_id, init_from=init_from, max_attempts=max_attempts,
        attempt_rows=[],  # no attempt yet (and loaded: the API dumps the timeline after the session)
        tag_rows=[JobTag(tag=tag, position=i) for i, tag in enumerate(dict.fromkeys(tags))],
    )
    session.add(job)
    session.flush()
    if idempotency is not None:
        key, body_hash = idempotency
        session.add(IdempotencyKey(user_id=user.id, key=key, body_hash=body_hash, job_id=job.id))
        session.flush()  # raises IntegrityError on a concurrent duplicate key
    return job


def list_jobs(
    session: Session, user: Principal, *, statuses: Sequence[str] = (), before_pk: int | None = None, limit: int = 50,
    name: str | None = None, tags: Sequence[str] = (),
) -> list[Job]:
    """The caller's jobs (everyone's for an admin), newest first. ``name``: the exact name, or a
    prefix when it ends with ``*``; ``tags``: jobs having every one of them. Filtered in SQL,
    so that a page holds ``limit`` matching jobs."""
    # The owner is joined into the page's SELECT (a many-to-one: one row each, no statement of its
    # own); the API dumps it after the session ends. attempt_rows and tag_rows, collections, are
    # one selectin statement each (models.py): a page is three statements whatever its size.
    stmt = (select(Job).options(joinedload(Job.user, innerjoin=True)).where(Job.deleted_at.is_(None))
            .order_by(Job.pk.desc()).limit(limit))
    if not user.is_admin:
        stmt = stmt.where(Job.user_id == user.id)
    if statuses:
        stmt = stmt.where(Job.status.in_(list(statuses)))
    if before_pk is not None:
        stmt = stmt.where(Job.pk < before_pk)
    if name:
        stmt = stmt.where(_name_matches(name))
    for tag in dict.fromkeys(tags):
        stmt = stmt.where(Job.id.in_(select(JobTag.job_id).where(JobTag.tag == tag)))
    return list(session.scalars(stmt))


def _name_matches(pattern: str) -> Any:
    if not pattern.endswith("*"):
        return Job.name == pattern
    # A literal, case-sensitive prefix on every backend (SQLite's LIKE ignores case, and % or _
    # in a name would be wildcards).
    prefix = pattern[:-1]
    return func.substr(Job.name, 1, len(prefix)) == prefix


def age_s(when: dt.datetime | None, now: dt.datetime | None = None) -> float | None:
    if when is None:
        return None
    return ((now or utcnow()) - when).total_seconds()


__all__ = [
    "JobNotFound", "JobConflict", "IdempotencyMismatch", "IntegrityError", "FINISHED", "new_job_id",
    "lock_job", "visible_job", "find_idempotent", "create_job", "list_jobs", "request_cancel", "mark_enqueued",
    "age_s", "JobPaths", "init_from_path", "attempt_started_training", "lost_attempts",
]


def init_from_path(job_id: str, checkpoint: str) -> str:
    """The config `init_from` value (relative to TEACHER_RUNS_ROOT = the jobs root)."""
    name = checkpoint if checkpoint.endswith(".pt") else f"{checkpoint}.pt"
    return f"{job_id}/{rundir.JOB_RUN}/{rundir.CHECKPOINTS}/{name}"

