"""SQLAlchemy 2 models of the job store: the single source of truth for jobs.

Redis only carries "please look at job X" messages; everything a client or a worker needs to
decide anything lives in these rows.
"""
from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the job store; use utcnow()")
        return value.astimezone(dt.timezone.utc)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


class JobStatus(str, enum.Enum):
    """Where a job is. Which status follows which is common.store.lifecycle's (TRANSITIONS), the
    only code that changes it; how an attempt ended is a lifecycle.Outcome."""

    queued = "queued"          # committed, a message is (or will be) on the broker
    waiting = "waiting"        # waits for its `after` job to succeed; no message yet
    running = "running"        # claimed by a worker that heartbeats
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    interrupted = "interrupted"  # stopped without finishing (worker shutdown/lost); will resume

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    tokens: Mapped[list["Token"]] = relationship(back_populates="user")


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    # sha256 hex of the bearer token; the token itself is never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)

    user: Mapped[User] = relationship(back_populates="tokens")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_user_pk", "user_id", "pk"),
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_after", "after_id"),
    )

    # Integer key gives a stable newest-first order for cursor pagination; `id` is public.
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(128))
    queue: Mapped[str] = mapped_column(String(64))
    priority: Mapped[int] = mapped_column(Integer, default=5)
    status: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # resolved TrainConfigSchema output
    after_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    init_from: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    claim_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    child_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Seconds its training processes have run, summed over attempts (updated at every heartbeat):
    # TEACHER_MAX_JOB_SECONDS limits this total, so a requeued job does not get a fresh budget.
    run_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # Attempts that ended without the job being at fault: stopped gracefully (worker shutdown,
    # preemption: exit 3), a lost worker, a stall. They are capped by TEACHER_MAX_INTERRUPTIONS.
    interruptions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Attempts that ended by a failure of the job's own: its training failed (exit 1, retried
    # from its checkpoint) or its training process was killed while its worker lived (OOM). Capped by
    # max_attempts. interruptions + failures <= attempts (the others finished the job).
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When the latest attempt claimed the job: a broker delivery older than this was consumed by
    # that claim (or an earlier one), so it is not a message still waiting to be claimed.
    claimed_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)

    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    # Set by DELETE /jobs/{id} once the job's files are removed: the row stays (idempotency keys
    # and dependents refer to it) but no longer lists and answers 404.
    deleted_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)

    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    user: Mapped[User] = relationship()
    # One row per attempt (claim), oldest first: the job's timeline. Loaded with the job (one
    # query for a page of jobs), as the API dumps it after the session ended.
    attempt_rows: Mapped[list["JobAttempt"]] = relationship(
        back_populates="job", lazy="selectin", order_by="JobAttempt.number")
    # The job's tags, in the order submitted (the rows' insertion order: id). Loaded with the
    # job, as attempt_rows is: a page of jobs costs one query more, not one per job.
    tag_rows: Mapped[list["JobTag"]] = relationship(
        lazy="selectin", order_by="JobTag.position", cascade="all, delete-orphan")

    @property
    def tags(self) -> list[str]:
        return [row.tag for row in self.tag_rows]

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.status)


class AttemptCause(str, enum.Enum):
    """How one attempt ended (``attempts.cause``); null while it runs. Which ones count as an
    interruption or a failure is common.store.lifecycle's."""

    succeeded = "succeeded"
    cancelled = "cancelled"
    failed = "failed"                    # the job failed for a reason a retry cannot fix (bad input,
                                         # no space, time limit, an integrity stop, a cap, ...)
    training_failed = "training_failed"  # the training raised (exit 1): a failure, retried from its checkpoint
    preempted = "preempted"              # stopped on request (worker SIGTERM/shutdown, exit 3): an interruption
    killed = "killed"                    # its training process died by a signal nobody sent (OOM kill): a failure
    worker_lost = "worker_lost"          # its worker vanished (the reconciler or a later claim found it)
    stalled = "stalled"                  # killed by the stall watchdog (no progress): an interruption


class StopCause(str, enum.Enum):
    """What the supervisor acted on when it stopped the training child (``attempts.stop``)."""

    worker_shutdown = "worker_shutdown"  # SIGTERM/SIGINT to the worker, or Celery's warm shutdown
    cancel = "cancel"                    # a cancel request
    time_limit = "time_limit"            # TEACHER_MAX_JOB_SECONDS
    superseded = "superseded"            # another worker claimed the job
    stalled = "stalled"                  # the stall watchdog: no training progress for the stall timeout


class JobAttempt(Base):
    """One attempt of a job: opened by lifecycle.claim, closed (ended_at, cause) by the event
    that ends it: interrupt, worker_lost or finish."""

    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("job_id", "number", name="uq_attempts_job_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id"))
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, ...: jobs.attempts at its claim
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    cause: Mapped[str | None] = mapped_column(String(32), nullable=True)   # an AttemptCause
    stop: Mapped[str | None] = mapped_column(String(32), nullable=True)    # a StopCause
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the child's; < 0: a signal
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Where it started: {epoch, step, batch, checkpoint, created_at} (rundir.ResumePoint's
    # keys; batch null when not known yet); null for a fresh start.
    resumed_from: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # An attempt the next one resumes after: seconds of work since the last checkpoint, lost.
    lost_s: Mapped[float | None] = mapped_column(Float, nullable=True)

    job: Mapped[Job] = relationship(back_populates="attempt_rows")

    @property
    def is_open(self) -> bool:
        return self.ended_at is None


class JobTag(Base):
    """One tag of a job (a label the list filters by: ``GET /jobs?tag=``)."""

    __tablename__ = "job_tags"
    __table_args__ = (Index("ix_job_tags_tag", "tag"),)

    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)  # keeps the submitted order


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key", name="uq_idempotency_user_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    key: Mapped[str] = mapped_column(String(255))
    body_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class UiSession(Base):
    """A web dashboard sign-in (api/ui/session.py; access in common/store/ui_sessions.py).

    The browser's cookie holds a random secret; the row is keyed by its sha256, so a copy of
    the store signs no one in. Deleting the row (sign-out) ends the session for every copy of
    the cookie; so does revoking (or deleting) its token."""

    __tablename__ = "ui_sessions"
    __table_args__ = (Index("ix_ui_sessions_token", "token_id"), Index("ix_ui_sessions_expires", "expires_at"))

    USER_AGENT_MAX = 255

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the cookie's secret
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column()
    # Written at most once a minute (common.store.ui_sessions.TOUCH_INTERVAL), not per request.
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    user_agent: Mapped[str | None] = mapped_column(String(USER_AGENT_MAX), nullable=True)

    token: Mapped[Token] = relationship()


class WorkerBeat(Base):
    """Liveness of Celery worker processes, for /health and `teacher doctor`."""

    __tablename__ = "worker_beats"

    # A worker counts as alive while its last beat is younger than this many beat intervals.
    ALIVE_BEATS = 3

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    queues: Mapped[str] = mapped_column(String(255), default="")
    seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # What the worker probed at its start (common.devices.Devices.to_json: GPUs, CPU cores, the
    # probe's error); None for a worker that does not report devices (older code).
    devices: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    @classmethod
    def is_alive(cls, age_s: float, beat_s: float) -> bool:
        return age_s < cls.ALIVE_BEATS * beat_s
