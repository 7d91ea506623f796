"""Celery tasks: thin adapters that pass job ids to the supervisor and the reconciler. The
worker-process plumbing behind run_job (prompt hand-back on SIGTERM with any pool, a dead pool
process's job, fork safety) lives in worker/pool.py."""
from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.exceptions import Reject

from worker import reconciler, supervisor
from worker.celery_app import RECONCILE, RUN_JOB
from worker.pool import RunJobTask, clear_pool_shutdown, stopping


@shared_task(name=RUN_JOB, base=RunJobTask, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str:
    if stopping():
        # Delivered after this worker began shutting down: put the message back untouched rather
        # than claim the job (an attempt) only to stop it at once. The pool flag is cleared, so
        # that a stray SIGINT to a pool process bounces at most one delivery, not every one.
        clear_pool_shutdown()
        raise Reject("worker shutting down", requeue=True)
    from worker.celery_app import settings

    return supervisor.Supervisor(settings, shutdown_requested=stopping).run(job_id)


@shared_task(name=RECONCILE, acks_late=False)
def reconcile() -> dict[str, Any]:
    return reconciler.reconcile_once()


