"""Periodic repair of the broker from the job store (the truth):

- a running job whose heartbeat went stale (worker killed, host rebooted) becomes
  `interrupted` and is re-sent; the next claim resumes it from its last checkpoint and counts
  the attempt (capped);
- a queued or interrupted job with no message anywhere in Redis (publish failed, Redis lost its
  data) is re-sent;
- a waiting job whose dependency already finished is released or failed.

Re-sending is safe: the supervisor's claim ignores duplicates. Run it with
`python -m worker.reconciler` (a loop) or as the `reconcile` beat task.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Callable

from sqlalchemy import select

from common.settings import Settings
from common.store import Job, JobStatus, transaction, utcnow
from common.store.jobs import age_s, finish_dependents, mark_enqueued
from worker.store import sessions_for

log = logging.getLogger(__name__)

Enqueue = Callable[[str, str, int], None]


def _publisher(settings: Settings) -> Enqueue:
    from worker.celery_app import publish

    return lambda job_id, queue, priority: publish(settings, job_id, queue, priority)


def _redis(settings: Settings) -> Any:
    import redis

    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=10)


def messages_in_broker(settings: Settings, r: Any = None) -> str:
    """Every pending and unacknowledged message body in Redis, concatenated (job ids are
    32 hex characters, so substring search is exact enough)."""
    r = r or _redis(settings)
    chunks: list[bytes] = []
    for queue in settings.queues:
        for name in [queue] + [f"{queue}:{p}" for p in range(1, 10)]:
            chunks.extend(r.lrange(name, 0, -1))
    chunks.extend(r.hvals("unacked"))
    return b"\n".join(chunks).decode("utf-8", errors="replace")


def reconcile_once(settings: Settings | None = None, *, enqueue: Enqueue | None = None,
                   redis_client: Any = None) -> dict[str, Any]:
    if settings is None:
        from worker.celery_app import settings as app_settings

        settings = app_settings
    enqueue = enqueue or _publisher(settings)
    sessions = sessions_for(settings.database_url)
    to_send: list[tuple[str, str, int]] = []
    report: dict[str, list[str]] = {"stale": [], "lost": [], "released": []}

    with transaction(sessions) as s:
        for job in s.scalars(select(Job).where(Job.status == JobStatus.running.value).with_for_update()):
            age = age_s(job.heartbeat_at)
            if age is None or age > settings.stale_after_s:
                log.warning("job %s: heartbeat %ss old; presumed lost, re-sending", job.id, age)
                job.status = JobStatus.interrupted.value
                job.claim_token = None
                job.failure_reason = "worker lost (stale heartbeat); will resume from the last checkpoint"
                report["stale"].append(job.id)
                to_send.append((job.id, job.queue, job.priority))
        for job in s.scalars(select(Job).where(Job.status == JobStatus.waiting.value).with_for_update()):
            dep = s.scalar(select(Job).where(Job.id == job.after_id)) if job.after_id else None
            if dep is None or dep.job_status.finished:
                released = finish_dependents(s, dep) if dep is not None else []
                for r in released:
                    report["released"].append(r.id)
                    to_send.append((r.id, r.queue, r.priority))

    pending = messages_in_broker(settings, redis_client)
    sent = {job_id for job_id, _, _ in to_send}
    now = utcnow()
    with sessions() as s:
        for job in s.scalars(select(Job).where(Job.status.in_([JobStatus.queued.value, JobStatus.interrupted.value]))):
            if job.id in sent or job.id in pending:
                continue
            since = age_s(job.enqueued_at or job.created_at, now)
            if since is not None and since > settings.lost_message_grace_s:
                log.warning("job %s: %s with no broker message; re-sending", job.id, job.status)
                report["lost"].append(job.id)
                to_send.append((job.id, job.queue, job.priority))

    for job_id, queue, priority in to_send:
        enqueue(job_id, queue, priority)
        with transaction(sessions) as s:
            mark_enqueued(s, job_id)
    return report


def main() -> None:  # pragma: no cover - exercised by `teacher serve`
    logging.basicConfig(level=logging.INFO, format="%(asctime)s reconciler %(levelname)s %(message)s")
    from worker.celery_app import settings

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        try:
            report = reconcile_once(settings)
            if any(report.values()):
                log.info("reconciled: %s", report)
        except Exception:  # one bad tick (Redis or DB down) must not end the loop
            log.exception("reconcile failed; retrying in %.0fs", settings.reconcile_interval_s)
        stop.wait(settings.reconcile_interval_s)


if __name__ == "__main__":  # pragma: no cover
    main()
