"""Celery tasks: thin adapters that pass job ids to the supervisor and the reconciler. The
worker runs only Celery's solo pool (worker/pool.py says why and refuses any other)."""
from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.exceptions import Reject

from worker import reconciler, supervisor
from worker.celery_app import RECONCILE, RUN_JOB
from worker.pool import stopping


@shared_task(name=RUN_JOB, acks_late=True)
def run_job(job_id: str) -> str:
    if stopping():
        # Delivered after this worker began shutting down: put the message back untouched rather
        # than claim the job (an attempt) only to stop it at once.
        raise Reject("worker shutting down", requeue=True)
    from worker.celery_app import settings

    return supervisor.Supervisor(settings, shutdown_requested=stopping).run(job_id)


@shared_task(name=RECONCILE, acks_late=False)
def reconcile() -> dict[str, Any]:
    return reconciler.reconcile_once()
