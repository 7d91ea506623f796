"""A job's attempts (the ``attempts`` table, one row per claim): opened and closed by the
lifecycle's event functions (common.store.lifecycle), never elsewhere.

What a row says about the run directory (where the attempt resumed from, how much work it lost)
comes from a :class:`RunView` the caller reads through common.rundir and passes in: the events
run inside a locked transaction and do no file I/O of their own.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.rundir import CheckpointEntry, JobPaths, Manifest, Progress, ResumePoint, RunFileCorrupt
from common.store.models import AttemptCause, Job, JobAttempt, StopCause, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunView:
    """What a job's run directory said when read: the checkpoint a resume would start from
    (the manifest's ``resume_point()``) and the trainer's last progress record. Either is None
    when not written yet or unreadable (a damaged file is logged, never raised: the lifecycle
    event it informs must happen anyway)."""

    resume_point: CheckpointEntry | None = None
    progress: Progress | None = None

    @classmethod
    def read(cls, jobs_root: Path, job_id: str) -> "RunView | None":
        """The job's run directory as it is now; None when ``jobs_root`` is not here at all
        (a host that does not mount the job volume: nothing is known)."""
        if not Path(jobs_root).is_dir():
            return None
        paths = JobPaths.of(jobs_root, job_id)
        return cls(_read(Manifest.read, paths.manifest, lambda m: m.resume_point()),
                   _read(Progress.read, paths.progress, lambda p: p))


def _read(reader: Any, path: Path, pick: Any) -> Any:
    try:
        record = reader(path)
    except (RunFileCorrupt, OSError) as exc:
        log.warning("%s: unreadable (%s); ignored for the attempt record", path, exc)
        return None
    return pick(record) if record is not None else None


# ------------------------------------------------------------------------------ resume points
def point_of_entry(entry: CheckpointEntry | None) -> dict[str, Any] | None:
    """The resume point a manifest entry stands for, as an attempt row stores it: a step file's
    position in its epoch (``batch``) as its entry records it (null when it does not: then
    until the trainer reports it)."""
    if entry is None:
        return None
    batch = 0 if entry.kind == "epoch" else getattr(entry, "batch", None)
    return {"epoch": entry.epoch, "step": entry.step, "batch": batch, "checkpoint": entry.name,
            "created_at": entry.created_at}


def reported_point(progress: Progress | dict[str, Any] | None, since: dt.datetime) -> dict[str, Any] | None:
    """``resumed_from`` from a progress record written at or after ``since`` (by the attempt
    that started then), else None: an older record is an earlier attempt's."""
    if isinstance(progress, Progress):
        updated, point = progress.updated_at, progress.resumed_from
    elif isinstance(progress, dict):
        updated, raw = progress.get("updated_at"), progress.get("resumed_from")
        try:
            point = ResumePoint.from_json(raw) if isinstance(raw, dict) else None
        except (KeyError, TypeError, ValueError, RunFileCorrupt):
            point = None
    else:
        return None
    if point is None or not isinstance(updated, (int, float)) or updated < since.timestamp():
        return None
    return point.to_json()


def lost_seconds(started: dt.datetime, ended: dt.datetime, resume_point: CheckpointEntry | None) -> float:
    """Work the next attempt cannot reuse: from the later of the attempt's start and its last
    checkpoint's writing to its end (never negative: the clocks of two hosts may disagree)."""
    since = started.timestamp()
    if resume_point is not None and resume_point.created_at is not None:
        since = max(since, resume_point.created_at)
    return round(max(0.0, ended.timestamp() - since), 3)


# ------------------------------------------------------------------------------ rows
def current(job: Job) -> JobAttempt | None:
    """The row of the job's latest claim, if it has one."""
    rows = [a for a in job.attempt_rows if a.number == job.attempts]
    return rows[-1] if rows else None


def open_attempt(job: Job, worker: str, run: RunView | None) -> JobAttempt:
    """The row of the claim that just made attempt ``job.attempts``."""
    row = JobAttempt(number=job.attempts, worker=worker, started_at=job.claimed_at or utcnow(),
                     resumed_from=point_of_entry(run.resume_point) if run is not None else None)
    job.attempt_rows.append(row)
    return row


def note_progress(job: Job, progress: dict[str, Any] | None) -> None:
    """A heartbeat's progress: the resume point the running attempt reports replaces the one
    guessed from the manifest at its claim."""
    row = current(job)
    if row is None or not row.is_open:
        return
    point = reported_point(progress, row.started_at)
    if point is not None and point != row.resumed_from:
        row.resumed_from = point


def close_attempt(job: Job, cause: AttemptCause, reason: str | None, *, stop: StopCause | None = None,
                  exit_code: int | None = None, run: RunView | None = None, resumes: bool = False) -> JobAttempt:
    """End the latest attempt's row with ``cause``. ``resumes``: another attempt will continue
    from the checkpoint, so the work since that checkpoint is recorded as lost (``lost_s``;
    null when the run directory could not be read). A running job claimed before this table
    existed gets its row here."""
    row = current(job)
    if row is None or not row.is_open:
        if row is not None:  # closed already (cannot happen through the lifecycle): keep the first end
            log.warning("job %s: attempt %d already ended (%s); not ending it again", job.id, row.number, row.cause)
            return row
        row = JobAttempt(number=job.attempts, worker=job.worker, started_at=job.claimed_at or utcnow())
        job.attempt_rows.append(row)
    now = utcnow()
    row.ended_at = now
    row.cause = cause.value
    row.stop = stop.value if stop is not None else None
    row.exit_code = exit_code
    row.reason = reason
    progress = run.progress if run is not None else None
    point = reported_point(progress if progress is not None else job.progress, row.started_at)
    if point is not None:
        row.resumed_from = point
    if resumes and run is not None:
        row.lost_s = lost_seconds(row.started_at, now, run.resume_point)
    return row


def resumed_from(job: Job) -> dict[str, Any] | None:
    """Where the latest attempt started (null: afresh, or never claimed)."""
    row = job.attempt_rows[-1] if job.attempt_rows else None
    return row.resumed_from if row is not None else None


__all__ = ["RunView", "point_of_entry", "reported_point", "lost_seconds", "current", "open_attempt",
           "note_progress", "close_attempt", "resumed_from"]
