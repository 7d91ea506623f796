"""Celery tasks: thin adapters that pass job ids to the supervisor and the reconciler."""
from __future__ import annotations

from typing import Any

from celery import shared_task

from worker import reconciler, supervisor
from worker.celery_app import RECONCILE, RUN_JOB


@shared_task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str:
    return supervisor.run_job(job_id)


@shared_task(name=RECONCILE, acks_late=False)
def reconcile() -> dict[str, Any]:
    return reconciler.reconcile_once()
