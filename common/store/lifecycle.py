"""The job lifecycle: the only code that changes a job's status.

Every status change goes through :func:`_move`, which looks the change up in :data:`TRANSITIONS`
(from-status, event) -> to-status and raises :class:`IllegalTransition` for any other. The
functions below are the events; each runs inside the caller's transaction on a row the caller
locked (``common.store.jobs.lock_job``), and returns the messages to :func:`send` once that
transaction has committed (a message sent before the commit could be claimed, and dropped, by a
worker that still sees the old row).

How an attempt (or a delivery that started none) ended is an :class:`Outcome`; each outcome
that ends the job names the :class:`JobStatus` it ends in (``Outcome.status``).

Every attempt has a row in ``attempts`` (common.store.attempts): claim opens it; interrupt,
worker_lost and finish close it with an ``AttemptCause``. The same events keep the two counters
of ended attempts: ``interruptions`` (not the job's fault: a preemption, a graceful stop, a
lost worker, a stall; capped by TEACHER_MAX_INTERRUPTIONS) and ``failures`` (the training
failed, or its process was killed while its worker lived, e.g. OOM; capped by max_attempts).

Adding a job state: a member of JobStatus (common/store/models.py; the column is a string, so no
migration), its rows in TRANSITIONS, the event function that enters it, and the invariants in
tests/unit/common/test_lifecycle.py.
"""
from __future__ import annotations

import enum
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from common.store import attempts as attempt_rows
from common.store.attempts import RunView
from common.store.db import transaction
from common.store.models import FINISHED, AttemptCause, Job, JobStatus, StopCause, utcnow

log = logging.getLogger(__name__)


class JobConflict(Exception):
    """The job's state does not allow the operation (e.g. cancelling a finished job)."""


class IllegalTransition(JobConflict):
    """An event that the job's status does not allow (see TRANSITIONS)."""

    def __init__(self, job_id: str, status: JobStatus, event: "Event", message: str | None = None):
        super().__init__(message or f"job {job_id} is {status.value}: {event.value} is not allowed")
        self.job_id, self.status, self.event = job_id, status, event


class Event(str, enum.Enum):
    release = "release"                      # its `after` job succeeded
    dependency_failed = "dependency_failed"  # its `after` job ended otherwise
    claim = "claim"                          # a worker starts an attempt
    heartbeat = "heartbeat"                  # the attempt's worker is alive
    interrupt = "interrupt"                  # the attempt stopped without finishing; resumes
    worker_lost = "worker_lost"              # the attempt's worker is gone; resumes
    succeed = "succeed"
    fail = "fail"
    cancel = "cancel"


class Outcome(str, enum.Enum):
    """How a delivery of the job to a worker ended: no attempt, or how its attempt ended."""

    succeeded = "succeeded"
    cancelled = "cancelled"
    time_limit = "time_limit"    # failed, not retried (TEACHER_MAX_JOB_SECONDS)
    no_space = "no_space"        # failed, not retried: a full disk is not fixed by retrying
    bad_input = "bad_input"      # failed: invalid config or input (exit 2)
    failed = "failed"            # failed: the training failed (max_attempts times), or the supervisor did
    worker_lost = "worker_lost"  # failed: max_attempts failures (training failed, or its process was killed)
    interrupted_too_often = "interrupted_too_often"  # failed: TEACHER_MAX_INTERRUPTIONS
    interrupted = "interrupted"  # requeued; resumes from the last checkpoint
    retried = "retried"          # the training failed; requeued (a failure), resumes from the last checkpoint
    superseded = "lost"          # another worker claimed the job meanwhile; its outcome is that one's
    skipped = "skipped"          # no attempt: a duplicate delivery, or the job ended at the claim

    @property
    def status(self) -> JobStatus | None:
        """The status this outcome leaves the job in (None: the job is not this attempt's to change)."""
        return _OUTCOME_STATUS.get(self)


_OUTCOME_STATUS = {
    Outcome.succeeded: JobStatus.succeeded, Outcome.cancelled: JobStatus.cancelled,
    Outcome.interrupted: JobStatus.interrupted, Outcome.retried: JobStatus.interrupted,
    **{o: JobStatus.failed for o in (Outcome.time_limit, Outcome.no_space, Outcome.bad_input, Outcome.failed,
                                     Outcome.worker_lost, Outcome.interrupted_too_often)},
}
_FINISH_EVENT = {JobStatus.succeeded: Event.succeed, JobStatus.failed: Event.fail, JobStatus.cancelled: Event.cancel}

Q, W, R, I = JobStatus.queued, JobStatus.waiting, JobStatus.running, JobStatus.interrupted
S, F, C = JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled

# (from, event) -> to. A job enters as queued, or waiting while its `after` job has not succeeded
# (submit_status). Finished statuses (FINISHED) have no row: they never change again.
TRANSITIONS: dict[tuple[JobStatus, Event], JobStatus] = {
    (W, Event.release): Q,
    (W, Event.dependency_failed): F,
    (W, Event.cancel): C,
    (Q, Event.claim): R,
    (I, Event.claim): R,
    (Q, Event.cancel): C,
    (I, Event.cancel): C,      # cancelled at once, or a cancel requested while it ran, seen at the claim
    (Q, Event.succeed): S,     # at the claim: its run on disk had already finished
    (I, Event.succeed): S,
    (Q, Event.fail): F,        # at the claim: a cap reached, its init_from checkpoint gone
    (I, Event.fail): F,
    (R, Event.heartbeat): R,
    (R, Event.interrupt): I,
    (R, Event.worker_lost): I,
    (R, Event.succeed): S,
    (R, Event.fail): F,
    (R, Event.cancel): C,      # the attempt ended after a cancel request
}
del Q, W, R, I, S, F, C


def _move(job: Job, event: Event) -> JobStatus:
    to = TRANSITIONS.get((job.job_status, event))
    if to is None:
        raise IllegalTransition(job.id, job.job_status, event)
    job.status = to.value
    return to


@dataclass(frozen=True)
class Send:
    """A message to publish (after the commit): "please look at job X"."""

    job_id: str
    queue: str
    priority: int

    @classmethod
    def of(cls, job: Job) -> "Send":
        return cls(job.id, job.queue, job.priority)


@dataclass(frozen=True)
class Claim:
    """A running attempt, as its supervisor knows it."""

    job_id: str
    attempt: int
    token: str
    config: dict[str, Any]
    run_seconds: float = 0.0  # training time of the earlier attempts


# ------------------------------------------------------------------------------ events
def submit_status(dependency: Job | None) -> JobStatus:
    """The status a new job starts in: queued, or waiting for an unfinished ``after`` job.
    Raises JobConflict when that job ended without succeeding (it never will)."""
    if dependency is None or dependency.job_status == JobStatus.succeeded:
        return JobStatus.queued
    if dependency.job_status.finished:
        raise JobConflict(f"job {dependency.id} ended {dependency.status}; it will never succeed")
    return JobStatus.waiting


def claim(job: Job, worker: str, run: RunView | None = None) -> Claim:
    """Start a new attempt of a queued or interrupted job on ``worker`` ("host:pid") and open
    its row; ``run``: the run directory at the claim (where the attempt will resume from)."""
    _move(job, Event.claim)
    now = utcnow()
    job.attempts = (job.attempts or 0) + 1
    job.claim_token = uuid.uuid4().hex
    job.worker = worker
    job.heartbeat_at = job.claimed_at = now
    job.started_at = job.started_at or now
    job.exit_code = None
    job.failure_reason = None
    attempt_rows.open_attempt(job, worker, run)
    return Claim(job.id, job.attempts, job.claim_token, dict(job.config), job.run_seconds or 0.0)


def locked_attempt(session: Session, job_id: str, token: str) -> Job | None:
    """The job, locked, if ``token``'s attempt still holds it (else another worker claimed it)."""
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    return job if job is not None and job.claim_token == token else None


def heartbeat(job: Job, *, child_pid: int, run_seconds: float, progress: dict[str, Any] | None) -> bool:
    """The attempt is alive; returns whether a cancel was requested."""
    _move(job, Event.heartbeat)
    job.heartbeat_at = utcnow()
    job.child_pid = child_pid
    job.run_seconds = run_seconds  # a dead worker loses at most one beat of it
    if progress is not None:
        job.progress = progress
        attempt_rows.note_progress(job, progress)
    return bool(job.cancel_requested)


# How an attempt that is resumed counts: an interruption (not the job's fault) or a failure.
INTERRUPTION_CAUSES = frozenset({AttemptCause.preempted, AttemptCause.stalled})
FAILURE_CAUSES = frozenset({AttemptCause.training_failed, AttemptCause.killed})


def interrupt(job: Job, reason: str, *, cause: AttemptCause, stop: StopCause | None = None,
              exit_code: int | None = None, run: RunView | None = None) -> list[Send]:
    """The attempt stopped without finishing; the job is re-sent and resumes from its last
    checkpoint. ``cause`` says how it counts: a requested stop (preempted) is an interruption;
    a training failure, or a training process killed by a signal nobody sent (typically the
    OOM killer), is a failure, counted against max_attempts. ``run``: the run directory now
    (for the work lost since its last checkpoint)."""
    if cause not in INTERRUPTION_CAUSES | FAILURE_CAUSES:
        raise ValueError(f"an attempt ended {cause.value} is not resumed")
    _move(job, Event.interrupt)
    _count(job, cause in FAILURE_CAUSES)
    attempt_rows.close_attempt(job, cause, reason, stop=stop, exit_code=exit_code, run=run, resumes=True)
    _end_attempt(job, reason)
    return [Send.of(job)]


def worker_lost(job: Job, reason: str, run: RunView | None = None) -> list[Send]:
    """The running job's worker is gone (its host lost power or was reclaimed without notice, the
    container was killed): interrupted, to be re-sent and resumed, an interruption, as a
    preemption is (issue 15: interruptions are not failures; TEACHER_MAX_INTERRUPTIONS caps a job
    that keeps losing its worker). A training process that dies while its worker lives (the OOM
    killer) is the supervisor's ``killed``: a failure."""
    _move(job, Event.worker_lost)
    _count(job, False)
    attempt_rows.close_attempt(job, AttemptCause.worker_lost, reason, run=run, resumes=True)
    _end_attempt(job, reason)
    return [Send.of(job)]


def finish(session: Session, job: Job, outcome: Outcome, reason: str | None = None, *,
           exit_code: int | None = None, result: dict[str, Any] | None = None,
           cause: AttemptCause | None = None, stop: StopCause | None = None,
           run: RunView | None = None) -> list[Send]:
    """End the job with ``outcome`` (one that finishes it) and release or fail its dependents.
    A running attempt's row is closed with ``cause`` (by default the outcome's: succeeded,
    cancelled or failed); one whose training failed (``training_failed``) counts as a failure.
    Returns the dependents' messages."""
    status = outcome.status
    if status is None or not status.finished:
        raise ValueError(f"outcome {outcome.value} does not finish a job")
    running = job.job_status == JobStatus.running
    _move(job, _FINISH_EVENT[status])
    if running:
        cause = cause or _FINISH_CAUSE.get(status, AttemptCause.failed)
        if cause in FAILURE_CAUSES:
            _count(job, True)
        attempt_rows.close_attempt(job, cause, reason, stop=stop, exit_code=exit_code, run=run)
    _end_attempt(job, reason)
    job.finished_at = utcnow()
    if exit_code is not None:
        job.exit_code = exit_code
    if result is not None:
        job.result = result
    return release_dependents(session, job)


def request_cancel(session: Session, job: Job) -> None:
    """Cancel a job that is not running at once; ask a running one to stop (its supervisor sees
    the flag at its next heartbeat and stops the child, which keeps its last checkpoint). A
    cancelled job's dependents fail, so nothing is to be sent."""
    if job.job_status.finished:
        raise IllegalTransition(job.id, job.job_status, Event.cancel, f"job already {job.status}")  # the API's 409
    job.cancel_requested = True
    if job.job_status != JobStatus.running:
        finish(session, job, Outcome.cancelled)


def release_dependents(session: Session, job: Job) -> list[Send]:
    """After ``job`` finished: queue its waiting dependents if it succeeded, else fail them (and
    theirs). Returns the messages of the jobs that became queued. JobConflict while ``job`` has
    not finished (its dependents wait)."""
    if not job.job_status.finished:
        raise JobConflict(f"job {job.id} is {job.status}: its dependents wait for it to finish")
    sends: list[Send] = []
    waiting = select(Job).where(Job.after_id == job.id, Job.status == JobStatus.waiting.value).with_for_update()
    for dep in session.scalars(waiting):
        if job.job_status == JobStatus.succeeded:
            _move(dep, Event.release)
            sends.append(Send.of(dep))
        else:
            _move(dep, Event.dependency_failed)
            dep.finished_at = utcnow()
            dep.failure_reason = f"dependency {job.id} ended {job.status}"
            release_dependents(session, dep)
    return sends


_FINISH_CAUSE = {JobStatus.succeeded: AttemptCause.succeeded, JobStatus.cancelled: AttemptCause.cancelled}


def _count(job: Job, failure: bool) -> None:
    if failure:
        job.failures = (job.failures or 0) + 1
    else:
        job.interruptions = (job.interruptions or 0) + 1


def _end_attempt(job: Job, reason: str | None) -> None:
    job.claim_token = None
    job.child_pid = None
    job.failure_reason = reason


# ------------------------------------------------------------------------------ attempts
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
    """Ended attempts that count against ``max_attempts`` (``jobs.failures``): their training
    failed, or their training process was killed by a signal nobody sent (the OOM killer)."""
    return job.failures or 0


# ------------------------------------------------------------------------------ after the commit
Publish = Callable[[str, str, int], None]


def send(factory: "sessionmaker[Session]", publish: Publish, sends: Iterable[Send]) -> list[Send]:
    """Publish each message (call after the commit) and note when it was sent. Returns the ones
    that could not be published: the reconciler finds those jobs without a message and sends
    them again."""
    unsent: list[Send] = []
    for msg in sends:
        try:
            publish(msg.job_id, msg.queue, msg.priority)
        except Exception as exc:
            log.warning("job %s: could not send (%s: %s); the reconciler will", msg.job_id, type(exc).__name__, exc)
            unsent.append(msg)
            continue
        with transaction(factory) as s:
            mark_enqueued(s, msg.job_id)
    return unsent


def mark_enqueued(session: Session, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))


__all__ = [
    "JobConflict", "IllegalTransition", "Event", "Outcome", "TRANSITIONS", "FINISHED", "Send", "Claim",
    "submit_status", "claim", "locked_attempt", "heartbeat", "interrupt", "worker_lost", "finish",
    "request_cancel", "release_dependents", "RunView", "INTERRUPTION_CAUSES", "FAILURE_CAUSES",
    "attempt_started_training", "lost_attempts", "send", "mark_enqueued", "Publish",
]
