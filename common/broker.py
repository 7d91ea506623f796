"""The broker contract shared by the API (publishes) and the workers (consume): task names,
queues, priorities and the Celery configuration. Celery and kombu only: the API sends a task by
name and never imports the worker (checked by import-linter).

Messages carry only job ids. The job store is the truth; a lost or duplicated message is
repaired by the reconciler and ignored by the supervisor's claim, respectively.
"""
from __future__ import annotations

import threading

from celery import Celery
from kombu import Queue

from common.settings import Settings

RUN_JOB = "worker.tasks.run_job"
RECONCILE = "worker.tasks.reconcile"
CONTROL_QUEUE = "control"


def broker_priority(api_priority: int) -> int:
    """API priorities are 0..9 with 9 first; kombu's Redis transport serves 0 first."""
    return 9 - max(0, min(9, int(api_priority)))


def make_celery(settings: Settings) -> Celery:
    app = Celery("teacher", include=["worker.tasks"])
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        "priority_steps": list(range(10)),
        "sep": ":",
        "queue_order_strategy": "priority",
        # A Redis that stops answering without closing the connection (frozen, failed over, a
        # network cut, a NAT dropping the flow) must not hang a publisher forever: without a
        # socket timeout a publish blocks on the dead socket, so a job POST never returned and
        # each one pinned a gunicorn thread until the API answered nothing at all. With it, the
        # publish fails (about 20 s at worst: 5 s a try, with the publish retries), the job stays
        # recorded for the reconciler, and the POST answers 202.
        # (The worker's consumer runs in the event loop, where this does not apply; kombu's
        # health_check_interval drops a BRPOP connection that stopped answering.)
        "socket_timeout": 5,
        "socket_connect_timeout": 3,
    }
    if settings.visibility_timeout_s:
        # An explicit (short) visibility timeout is only useful with a sweep that notices it:
        # kombu's default sweep runs every ~100 s (interval 10 s x throttle 10).
        transport.update(unacked_restore_interval=1, unacked_restore_throttle=1)
    app.conf.update(
        broker_url=settings.redis_url,
        result_backend=settings.redis_url,
        task_ignore_result=True,  # results live in the job store, not in Redis
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        # The only pool a worker runs (worker/pool.py refuses others): a bare `celery worker` gets it.
        worker_pool="solo",
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        # Redis outages (restart, failover, a long network cut) must never end a worker: Celery's
        # default gives up after 100 reconnect attempts (~45 min at kombu's 30 s back-off cap),
        # and the worker then exits, which also takes down `teacher serve`. Retry forever; the
        # job store keeps the truth meanwhile. (The back-off cap is kombu's: after a long outage
        # a worker may take up to ~30 s to notice that Redis is back.)
        broker_connection_max_retries=None,
        # Pinned, not left to the default, which Celery 6 flips to True: on a broker connection
        # loss Celery would then cancel every running acks-late task, i.e. kill a training
        # that is fine (its supervisor only needs the job store) on every Redis restart, and
        # run it again. A running job's message is acknowledged once the connection is back
        # (tests/system/test_service_infra_faults.py: Redis killed or restarted mid-job, each
        # job runs exactly once, nothing left unacknowledged).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
        task_default_queue=settings.default_queue,
        task_queues=[Queue(q) for q in settings.queues] + [Queue(CONTROL_QUEUE)],
        task_routes={RECONCILE: {"queue": CONTROL_QUEUE}},
        beat_schedule={
            "reconcile": {"task": RECONCILE, "schedule": settings.reconcile_interval_s, "options": {"expires": settings.reconcile_interval_s}},
        },
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    app.conf.teacher_settings = settings
    return app


def send_job(app: Celery, job_id: str, queue: str, priority: int) -> None:
    # ignore_result: nobody waits for a Celery result (the job store has the outcome), but
    # send_task does not apply task_ignore_result to a task it only knows by name. Without it,
    # every publish also subscribed this process to the task's result channel on the result
    # backend's own pub/sub connection, whose timeouts are not the broker's: with Redis frozen
    # or unreachable without a reset (failover, network cut) a job POST hung there instead of
    # failing within the broker's socket timeout and leaving the job to the reconciler.
    app.send_task(RUN_JOB, args=[job_id], queue=queue, priority=broker_priority(priority), ignore_result=True)


_publishers: dict[Settings, Celery] = {}
_publishers_lock = threading.Lock()


def register_publisher(settings: Settings, app: Celery) -> None:
    """Publish with ``app`` (a worker's own Celery app) for these settings."""
    with _publishers_lock:
        _publishers[settings] = app


def publish(settings_: Settings, job_id: str, queue: str, priority: int) -> None:
    """Send a job's message with a Celery app configured from ``settings_`` (one per settings)."""
    with _publishers_lock:
        app = _publishers.get(settings_)
        if app is None:
            app = _publishers[settings_] = make_celery(settings_)
    send_job(app, job_id, queue, priority)


