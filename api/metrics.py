"""Prometheus /metrics: jobs by status, queue depth, job durations. Collected from the store
and Redis at scrape time, so every gunicorn worker reports the same numbers.

Scoped to the token: an admin's token sees every job and the broker's queue depths; any other
token sees its own user's jobs only (counts and durations) and no queue depths, which would
tell one user about everyone else's work."""
from __future__ import annotations

from typing import Any, Iterator

from flask import Blueprint, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from api.extensions import Services, current_user, services
from common.store import Job, JobStatus

blp = Blueprint("metrics", __name__)

DURATION_BUCKETS = (60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 72 * 3600)


class StoreCollector(Collector):
    def __init__(self, svc: Services, user_id: int | None):
        self.svc = svc
        self.user_id = user_id  # None: every user's jobs (an admin's scrape)

    def _scoped(self, stmt: Any) -> Any:
        stmt = stmt.where(Job.deleted_at.is_(None))
        return stmt if self.user_id is None else stmt.where(Job.user_id == self.user_id)

    def collect(self) -> Iterator[Any]:
        by_status = GaugeMetricFamily("teacher_jobs", "Jobs by status", labels=["status"])
        durations: list[tuple[str, float]] = []
        with self.svc.sessions() as s:
            counts = dict(s.execute(self._scoped(select(Job.status, func.count())).group_by(Job.status)).all())
            rows = s.execute(
                self._scoped(select(Job.status, Job.started_at, Job.finished_at))
                .where(Job.finished_at.is_not(None), Job.started_at.is_not(None))
                .order_by(Job.pk.desc()).limit(10_000)
            ).all()
        for status in JobStatus:
            by_status.add_metric([status.value], counts.get(status.value, 0))
        yield by_status
        for status, started, finished in rows:
            durations.append((status, (finished - started).total_seconds()))
        hist = HistogramMetricFamily("teacher_job_duration_seconds", "Wall time of finished jobs (newest 10k)",
                                     labels=["status"])
        for status in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled):
            values = [d for st, d in durations if st == status.value]
            buckets = [(str(b), sum(1 for v in values if v <= b)) for b in DURATION_BUCKETS] + [("+Inf", len(values))]
            hist.add_metric([status.value], buckets, sum(values))
        yield hist
        if self.user_id is not None:
            return
        depth = GaugeMetricFamily("teacher_queue_depth", "Messages waiting in each broker queue", labels=["queue"])
        try:
            r = self.svc.redis()
            for queue in self.svc.settings.queues:
                names = [queue] + [f"{queue}:{p}" for p in range(1, 10)]
                depth.add_metric([queue], sum(int(r.llen(n)) for n in names))  # type: ignore[attr-defined]
        except Exception:  # Redis down: omit the samples; /health reports the outage
            pass
        yield depth


@blp.route("/metrics")
def prometheus_metrics() -> Response:
    registry = CollectorRegistry(auto_describe=False)
    user = current_user()
    registry.register(StoreCollector(services(), None if user.is_admin else user.id))
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4; charset=utf-8")
