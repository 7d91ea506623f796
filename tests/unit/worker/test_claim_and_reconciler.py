"""Fast checks of the worker side without training: Celery settings, the claim protocol, and the
reconciler against a real Redis."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time

import redis as redis_lib
from sqlalchemy import select

from common.settings import Settings
from common.store import Job, JobStatus, transaction, utcnow
from common.store.jobs import lock_job
from tests.support.api import FakeBroker
from tests.support.api import CFG, get_job as _get, new_job as _job, set_fields as _set


def test_celery_is_json_only_acks_late_and_visibility_covers_max_job_time():
    from worker.celery_app import make_celery

    s = Settings(max_job_seconds=3600, queues=("default", "big"))
    conf = make_celery(s).conf
    assert conf.task_serializer == conf.result_serializer == "json"
    assert list(conf.accept_content) == ["json"] and list(conf.result_accept_content) == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] > 3600
    assert conf.result_backend_transport_options["visibility_timeout"] > 3600
    assert {q.name for q in conf.task_queues} >= {"default", "big"}











def test_claim_is_idempotent_and_capped(app, client, alice, settings):
    from worker.supervisor import Supervisor

    sup = Supervisor(settings, enqueue=FakeBroker())
    job_id = _job(app, client, alice)
    first = sup.claim(job_id)
    assert first is not None and first.attempt == 1
    assert sup.claim(job_id) is None  # live elsewhere: a duplicate message does nothing
    assert _get(app, job_id).attempts == 1
    # heartbeat went stale after training started: the next delivery takes over; a lost worker
    # is an interruption (a host gone without notice), not a failure of the job
    trained = {"status": "running", "updated_at": time.time() + 1}
    _set(app, job_id, heartbeat_at=utcnow() - dt.timedelta(seconds=settings.stale_after_s + 1), progress=trained)
    second = sup.claim(job_id)
    assert second is not None and second.attempt == 2 and second.token != first.token
    assert (_get(app, job_id).interruptions, _get(app, job_id).failures) == (1, 0)
    # ... capped by TEACHER_MAX_INTERRUPTIONS
    sup.settings = dataclasses.replace(sup.settings, max_interruptions=2)
    _set(app, job_id, heartbeat_at=utcnow() - dt.timedelta(hours=1), progress={**trained, "updated_at": time.time() + 1})
    assert sup.claim(job_id) is None
    job = _get(app, job_id)
    assert job.status == "failed" and "interrupted too often" in job.failure_reason and job.attempts == 2
    assert (job.interruptions, job.failures) == (2, 0)
    assert sup.claim(job_id) is None and _get(app, job_id).status == "failed"  # finished: nothing
    assert sup.claim("0" * 32) is None  # unknown id: dropped


def test_cancelled_and_waiting_jobs_are_not_claimed(app, client, alice, settings):
    from worker.supervisor import Supervisor

    sup = Supervisor(settings, enqueue=FakeBroker())
    a = _job(app, client, alice)
    b = _job(app, client, alice, after=a)
    client.post(f"/api/v1/jobs/{a}/cancel", headers=alice)
    assert sup.claim(a) is None and _get(app, a).status == "cancelled"
    assert _get(app, b).status == "failed"  # its dependency will never succeed
    c = _job(app, client, alice)
    d = _job(app, client, alice, after=c)
    assert sup.claim(d) is None and _get(app, d).status == "waiting"


def test_init_from_checkpoint_must_exist_at_claim(app, client, alice, settings):
    from worker.supervisor import Supervisor

    sup = Supervisor(settings, enqueue=FakeBroker())
    a = _job(app, client, alice)
    b = _job(app, client, alice, init_from={"job": a})
    _set(app, a, status=JobStatus.succeeded.value)
    _set(app, b, status=JobStatus.queued.value)
    assert sup.claim(b) is None
    job = _get(app, b)
    assert job.status == "failed" and "init_from checkpoint not found" in job.failure_reason


def test_reconciler_resends_lost_and_stale_jobs_and_releases_waiting(app, client, alice, settings, redis_server):
    from worker.reconciler import reconcile_once

    url = redis_server.rsplit("/", 1)[0] + "/15"
    r = redis_lib.Redis.from_url(url)
    r.flushdb()
    s = dataclasses.replace(settings, redis_url=url, lost_message_grace_s=0.0, stale_after_s=30.0)
    lost = _job(app, client, alice)                       # its message never reached Redis
    present = _job(app, client, alice)                    # its message is still queued
    r.lpush("default", json.dumps({"headers": {"id": "x", "argsrepr": f"['{present}']"}, "body": ""}))
    stale = _job(app, client, alice)
    _set(app, stale, status="running", heartbeat_at=utcnow() - dt.timedelta(minutes=5))
    live = _job(app, client, alice)
    _set(app, live, status="running", heartbeat_at=utcnow())
    dep = _job(app, client, alice)
    waiting = _job(app, client, alice, after=dep)
    _set(app, dep, status="succeeded")

    broker = FakeBroker()
    report = reconcile_once(s, enqueue=broker, redis_client=r)
    sent = {job_id for job_id, _, _ in broker.sent}
    assert sent == {lost, stale, waiting}  # not `present` (message queued), `live` or `dep`
    assert report["stale"] == [stale] and report["released"] == [waiting]
    assert _get(app, stale).status == "interrupted" and _get(app, waiting).status == "queued"


def test_job_is_committed_before_enqueue_and_survives_a_broker_outage(settings):
    from api import create_app
    from tests.support.api import mint

    seen: list[str] = []

    def broken_broker(job_id: str, queue: str, priority: int) -> None:
        # the record must already be committed (visible to another connection) when we publish
        with app.extensions["teacher"].sessions() as s:
            seen.append(s.scalar(select(Job.status).where(Job.id == job_id)))
        raise ConnectionError("redis is down")

    app = create_app({"TEACHER_SETTINGS": settings, "TEACHER_ENQUEUE": broken_broker})
    r = app.test_client().post("/api/v1/jobs", json=CFG, headers=mint(app, "alice"))
    assert r.status_code == 202 and seen == ["queued"]
    job = _get(app, r.json["id"])
    assert job.status == "queued" and job.enqueued_at is None  # the reconciler will send it
    app.extensions["teacher"].engine.dispose()
