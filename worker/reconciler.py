"""Periodic repair of the broker from the job store (the truth):

- a running job whose worker is gone becomes `interrupted` and is re-sent; the next claim
  resumes it from its last checkpoint (see :func:`worker_gone` for how "gone" is decided); its
  attempt's row is closed `worker_lost`, with the work lost since the checkpoint read from the
  run directory (when this process sees the job volume);
- a queued or interrupted job with no live message in Redis (publish failed, Redis lost its
  data, the only copy sits in kombu's `unacked` hash for a worker that died) is re-sent;
- a waiting job whose dependency already finished is released or failed;
- the `unacked` entries of dead workers' deliveries are removed once the job's state makes them
  moot (the job finished, or it was re-sent after a newer claim). Without that, one entry per
  SIGKILLed busy worker stayed for the visibility timeout (a week).

A delivery in `unacked` is live only if it is newer than the job's latest claim (an older one
was taken by that claim or an earlier one) and younger than TEACHER_LOST_MESSAGE_GRACE_S (a live
worker claims what it was given within moments; with prefetch 1 it holds no other message).
Each pass re-derives what to send from the store and this snapshot, so a broker error (Redis
killed mid-pass) drops nothing: a job committed `interrupted` whose publish failed has no live
message and is re-sent by the next pass.

Re-sending is safe: the supervisor's claim ignores duplicates. Run it with
`python -m worker.reconciler` (a loop) or as the `reconcile` beat task.

How soon a job whose worker was SIGKILLed runs again (the loop, :func:`next_pass_in`): passes
run at least every ``dead_after_s`` (3 heartbeats: 15 s by default), and a pass that sees a job
running schedules the next one for when its heartbeat turns ``dead_after_s`` old, then every
heartbeat while it is late. A worker provably gone (in the reconciler's host and pid namespace:
`teacher serve`, a soak; or a solo worker whose beat row is older than 3 TEACHER_WORKER_BEAT_S
beats, 30 s by default) is found then; any other only at TEACHER_STALE_AFTER_S (60 s). Then a
free worker takes the message at once. Bound, default settings, plus the wait for a free
worker: 3 x TEACHER_HEARTBEAT_S + max(TEACHER_HEARTBEAT_S, 1 s) = 20 s, or 2 x 15 s = 30 s for
a job claimed and killed between two passes (~35 s via the beat row); else
TEACHER_STALE_AFTER_S + 1 s = 61 s. It was TEACHER_STALE_AFTER_S + TEACHER_RECONCILE_INTERVAL_S
(90 s) + the wait. (As the beat task, passes run only every TEACHER_RECONCILE_INTERVAL_S.)
"""
from __future__ import annotations

import logging
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from common.logs import configure_logging
from common.settings import Settings
from common.store import Job, JobStatus, WorkerBeat, lifecycle, transaction, utcnow
from common.store.attempts import RunView
from common.store.jobs import age_s
from common.store.lifecycle import Publish, Send
from worker.liveness import claimant_is_dead_here
from worker.store import sessions_for

log = logging.getLogger(__name__)

UNACKED, UNACKED_INDEX = "unacked", "unacked_index"  # kombu's Redis transport defaults
JOB_ID = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")
MIN_WAIT_S = 1.0
DEAD_AFTER_BEATS = 3


def _publisher(settings: Settings) -> Publish:
    from worker.celery_app import publish

    return lambda job_id, queue, priority: publish(settings, job_id, queue, priority)


def _redis(settings: Settings) -> Any:
    import redis

    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=10)


def _queue_keys(settings: Settings) -> list[str]:
    return [name for queue in settings.queues for name in [queue] + [f"{queue}:{p}" for p in range(1, 10)]]


def messages_in_broker(settings: Settings, r: Any = None) -> str:
    """Every pending and unacknowledged message body in Redis, concatenated (job ids are
    32 hex characters, so substring search is exact enough)."""
    r = r or _redis(settings)
    chunks: list[bytes] = []
    for name in _queue_keys(settings):
        chunks.extend(r.lrange(name, 0, -1))
    chunks.extend(r.hvals(UNACKED))
    return b"\n".join(chunks).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Delivery:
    """A message a worker took and has not acknowledged (kombu's `unacked` entry)."""

    tag: str
    job_ids: frozenset[str]
    delivered_at: float  # epoch seconds: its score in `unacked_index`


@dataclass
class BrokerSnapshot:
    queued: str = ""  # the bodies of every queued message, concatenated
    deliveries: list[Delivery] = field(default_factory=list)

    @classmethod
    def read(cls, settings: Settings, r: Any) -> "BrokerSnapshot":
        queued = b"\n".join(body for name in _queue_keys(settings) for body in r.lrange(name, 0, -1))
        when = {_text(tag): score for tag, score in r.zrange(UNACKED_INDEX, 0, -1, withscores=True)}
        deliveries = [Delivery(_text(tag), frozenset(JOB_ID.findall(_text(body))), when.get(_text(tag), 0.0))
                      for tag, body in r.hgetall(UNACKED).items()]
        return cls(queued.decode("utf-8", errors="replace"), deliveries)

    def of(self, job_id: str) -> list[Delivery]:
        return [d for d in self.deliveries if job_id in d.job_ids]


def delivery_is_live(d: Delivery, claimed_at: float | None, now: float, grace_s: float) -> bool:
    """A worker holds it and will claim the job: it came after the job's latest claim, and not
    so long ago that a live worker would have claimed it already."""
    return (claimed_at is None or d.delivered_at > claimed_at) and now - d.delivered_at < grace_s


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _ts(when: Any) -> float | None:
    return when.timestamp() if when is not None else None


# ------------------------------------------------------------------------------ dead workers
def dead_after_s(settings: Settings) -> float:
    """A heartbeat this old, with proof that its worker is gone, is enough (a live supervisor
    beats every TEACHER_HEARTBEAT_S)."""
    return min(settings.stale_after_s, DEAD_AFTER_BEATS * settings.heartbeat_s)


def worker_gone(job: Job, settings: Settings, beats: dict[str, Any], now: Any = None) -> str | None:
    """Why the running job's worker is presumed gone, or None while it may be alive: its
    heartbeat is older than TEACHER_STALE_AFTER_S; or older than :func:`dead_after_s` and
    either its process is gone from this host, or its worker's beat (a solo worker beats under
    the job's worker name) is older than WorkerBeat.ALIVE_BEATS beats. A wrong verdict costs a
    restart, not a duplicate run: the live supervisor sees the claim taken at its next
    heartbeat and stops its child."""
    age = age_s(job.heartbeat_at, now)
    if age is None or age > settings.stale_after_s:
        return f"heartbeat {age:.0f}s old" if age is not None else "no heartbeat"
    if age < dead_after_s(settings):
        return None
    if claimant_is_dead_here(job.worker):
        return f"its process {job.worker} is gone (heartbeat {age:.1f}s old)"
    beat = beats.get(job.worker or "")
    beat_age = age_s(beat, now)
    if beat_age is not None and not WorkerBeat.is_alive(beat_age, settings.worker_beat_s):
        return f"its worker stopped beating {beat_age:.0f}s ago (heartbeat {age:.1f}s old)"
    return None


def _beats(s: Any) -> dict[str, Any]:
    return {b.name: b.seen_at for b in s.scalars(select(WorkerBeat))}


# ------------------------------------------------------------------------------ one pass
def reconcile_once(settings: Settings | None = None, *, enqueue: Publish | None = None,
                   redis_client: Any = None) -> dict[str, Any]:
    """One pass. Reports the job ids it found stale, found without a live message, released,
    could not send (kept for the next pass), and whose dead deliveries it cleared."""
    if settings is None:
        from worker.celery_app import settings as app_settings

        settings = app_settings
    enqueue = enqueue or _publisher(settings)
    sessions = sessions_for(settings.database_url)
    r = redis_client or _redis(settings)
    report: dict[str, list[str]] = {"stale": [], "lost": [], "released": [], "unsent": [], "cleared": []}
    # Read first: with Redis down the pass ends here, before it changes anything.
    broker = BrokerSnapshot.read(settings, r)
    to_send = _mark_stale_and_release(settings, sessions, report)
    to_send += _find_lost(settings, sessions, broker, {msg.job_id for msg in to_send}, report)
    # Redis may go away mid-pass: the next pass finds what could not be sent without a message.
    unsent = {msg.job_id for msg in lifecycle.send(sessions, enqueue, to_send)}
    report["unsent"] = [msg.job_id for msg in to_send if msg.job_id in unsent]
    sent = {msg.job_id for msg in to_send} - unsent
    report["cleared"] = _clear_moot_deliveries(settings, sessions, broker, sent, r)
    return report


def _mark_stale_and_release(settings: Settings, sessions: Any, report: dict[str, list[str]]) -> list[Send]:
    to_send: list[Send] = []
    with transaction(sessions) as s:
        beats = _beats(s)
        for job in s.scalars(select(Job).where(Job.status == JobStatus.running.value).with_for_update()):
            why = worker_gone(job, settings, beats)
            if why is None:
                continue
            log.warning("job %s: worker %s presumed lost (%s); re-sending", job.id, job.worker, why)
            to_send += lifecycle.worker_lost(job, f"worker lost ({why}); will resume from the last checkpoint",
                                             RunView.read(settings.jobs_root, job.id))
            report["stale"].append(job.id)
        for job in s.scalars(select(Job).where(Job.status == JobStatus.waiting.value).with_for_update()):
            dep = s.scalar(select(Job).where(Job.id == job.after_id)) if job.after_id else None
            if dep is None or dep.job_status.finished:
                released = lifecycle.release_dependents(s, dep) if dep is not None else []
                report["released"] += [msg.job_id for msg in released]
                to_send += released
    return to_send


def _find_lost(settings: Settings, sessions: Any, broker: BrokerSnapshot, sending: set[str],
               report: dict[str, list[str]]) -> list[Send]:
    """Queued or interrupted jobs with no live message (checked on every pass)."""
    to_send: list[Send] = []
    now = utcnow()
    with sessions() as s:
        for job in s.scalars(select(Job).where(Job.status.in_([JobStatus.queued.value, JobStatus.interrupted.value]))):
            if job.id in sending or job.id in broker.queued:
                continue
            claimed = _ts(job.claimed_at)
            if any(delivery_is_live(d, claimed, now.timestamp(), settings.lost_message_grace_s) for d in broker.of(job.id)):
                continue
            since = age_s(job.enqueued_at or job.created_at, now)
            if since is not None and since > settings.lost_message_grace_s:
                log.warning("job %s: %s with no live broker message; re-sending", job.id, job.status)
                report["lost"].append(job.id)
                to_send.append(Send.of(job))
    return to_send


def _clear_moot_deliveries(settings: Settings, sessions: Any, broker: BrokerSnapshot, sent: set[str], r: Any) -> list[str]:
    """Remove the `unacked` entries nobody will act on: every delivery of a finished job, and a
    not-live delivery of a queued/interrupted job that has a live message now. Those of a
    running job wait until it ends (one of them may be its own worker's). Removing an entry
    that a live worker then acknowledges is harmless (the ack removes nothing)."""
    ids = {job_id for d in broker.deliveries for job_id in d.job_ids}
    if not ids:
        return []
    now = time.time()
    with sessions() as s:
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(sorted(ids))))}
    fresh = BrokerSnapshot.read(settings, r) if sent else broker  # the messages just sent
    moot: dict[str, set[str]] = {}
    for d in broker.deliveries:
        for job_id in d.job_ids:
            job = jobs.get(job_id)
            if job is None:
                continue  # not ours to judge (another store sharing this Redis db?)
            claimed = _ts(job.claimed_at)
            if job.job_status.finished:
                moot.setdefault(job_id, set()).add(d.tag)
            elif job.job_status in (JobStatus.queued, JobStatus.interrupted) \
                    and not delivery_is_live(d, claimed, now, settings.lost_message_grace_s) \
                    and (job_id in fresh.queued or any(delivery_is_live(o, claimed, now, settings.lost_message_grace_s)
                                                       for o in fresh.of(job_id))):
                moot.setdefault(job_id, set()).add(d.tag)
    for job_id, tags in moot.items():
        pipe = r.pipeline(transaction=True)
        for tag in tags:
            pipe.zrem(UNACKED_INDEX, tag).hdel(UNACKED, tag)
        pipe.execute()
        log.info("job %s (%s): removed %d dead worker delivery(ies) from `unacked`", job_id, jobs[job_id].status, len(tags))
    return sorted(moot)


# ------------------------------------------------------------------------------ the loop
def next_pass_in(settings: Settings, *, retry_soon: bool = False) -> float:
    """Seconds until the next pass is due: TEACHER_RECONCILE_INTERVAL_S or dead_after_s, whichever
    is shorter, at most; sooner when a running job's heartbeat is about to pass dead_after_s or
    stale_after_s (or its worker's beat about to go stale), so that a dead worker's job is
    re-sent when it may be, not up to an interval later; soon after a pass that could not send."""
    # At least every dead_after_s: a job claimed during a longer sleep could otherwise lose its
    # worker unseen until the interval ends.
    interval = min(settings.reconcile_interval_s, max(dead_after_s(settings), MIN_WAIT_S))
    due = [min(interval, 5.0)] if retry_soon else [interval]
    sessions = sessions_for(settings.database_url)
    with sessions() as s:
        beats = _beats(s)
        for job in s.scalars(select(Job).where(Job.status == JobStatus.running.value)):
            age = age_s(job.heartbeat_at)
            if age is None:
                return MIN_WAIT_S
            due += [t - age for t in (dead_after_s(settings), settings.stale_after_s)]
            if dead_after_s(settings) <= age < settings.stale_after_s:
                # Late, not (yet) proven gone: look again a heartbeat later, not only at the
                # stale threshold (a busy box delays beats; a dead worker is found then).
                due.append(max(MIN_WAIT_S, settings.heartbeat_s))
            beat_age = age_s(beats.get(job.worker or ""))
            if beat_age is not None:
                due.append(WorkerBeat.ALIVE_BEATS * settings.worker_beat_s - beat_age)
    ahead = [t for t in due if t > 0]
    return max(MIN_WAIT_S, min(ahead) + 0.1 if ahead else MIN_WAIT_S)


def main() -> None:  # pragma: no cover - exercised by `teacher serve`
    configure_logging("reconciler")
    from worker.celery_app import settings

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        wait = settings.reconcile_interval_s
        try:
            report = reconcile_once(settings)
            if any(report.values()):
                log.info("reconciled: %s", report)
            wait = next_pass_in(settings, retry_soon=bool(report["unsent"]))
        except Exception:  # one bad tick (Redis or DB down) must not end the loop
            wait = min(wait, 5.0)
            log.exception("reconcile failed; retrying in %.0fs", wait)
        stop.wait(wait)


if __name__ == "__main__":  # pragma: no cover
    main()
