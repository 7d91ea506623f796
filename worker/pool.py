"""Worker-process plumbing for run_job (Celery signals, a Request class, fork safety), kept out of
worker/tasks.py so the tasks stay thin adapters:

- a SIGTERM to the worker hands its job back promptly with any pool (`_hand_back_on_shutdown`);
- a pool process that dies running a job releases the job before Celery requeues it
  (`RunJobRequest`, `release_lost_job`);
- forks of pool processes never copy a held SQLite lock (`_ForkGate`).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery import Task, signals
from celery.worker.request import Request

from worker import supervisor
from worker.liveness import claimant_is_dead_here

log = logging.getLogger(__name__)

# Set in a prefork pool process when its worker (the parent) begins shutting down.
_pool_shutdown = threading.Event()
_worker: Any = None  # the WorkController of this worker's main process


def stopping() -> bool:
    """Whether this worker is shutting down (so a job must be handed back, not started)."""
    # Solo pool: Celery's own flag, set in this (main) process by its SIGTERM/SIGINT handler.
    # Prefork pool: the flag the parent raises in this pool process (below).
    return supervisor.celery_stopping() or _pool_shutdown.is_set()


def clear_pool_shutdown() -> None:
    """Forget a shutdown request (a stray SIGINT to a pool process bounces one delivery, not all)."""
    _pool_shutdown.clear()


class RunJobRequest(Request):
    """run_job's request in the worker's main process: a pool process that died running a job
    releases the job before Celery requeues its message (see release_lost_job)."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        exc = getattr(exc_info, "exception", None)
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, WorkerLostError) and self.args:
            try:
                release_lost_job(str(self.args[0]))
            except Exception:  # the reconciler's stale-heartbeat path still recovers the job
                log.exception("job %s: could not release it after its pool process died", self.args[0])
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


class RunJobTask(Task):
    Request = RunJobRequest


# ------------------------------------------------------------------ prompt hand-back on SIGTERM
# With `--pool solo` the job runs in the worker's main process, which receives the SIGTERM
# itself: the supervisor stops the training child, records the job `interrupted` and re-sends it,
# and Celery's warm shutdown completes. With the prefork pool (Celery's default) the SIGTERM
# reaches only the main process, whose warm shutdown would wait for the running task, i.e. the
# whole training (hours); Docker then SIGKILLs everything after stop_grace_period and the job
# waits for the reconciler. So when the main process starts shutting down it sends SIGINT to its
# pool processes, which Celery makes them ignore otherwise: here it sets a flag that the
# supervisor polls (and, while a job runs, the supervisor's own SIGINT handler sees it too).


@signals.worker_init.connect
def _remember_worker(sender: Any = None, **_: Any) -> None:
    global _worker
    _worker = sender
    _ForkGate.install()


class _ForkGate:
    """Keeps the main process's database sessions out of fork(). The main process uses the job
    store too (the worker heartbeat thread of worker/celery_app.py, release_lost_job), and
    billiard forks a new pool process whenever one dies. SQLite keeps its per-process lock
    bookkeeping in memory: a child forked while a thread of the parent held a transaction
    believes "a connection of this process" holds the lock forever, and every transaction it
    starts waits out the busy timeout and fails (seen as a fresh pool process hanging in
    sqlite3InvokeBusyHandler). So fork waits until no connection of the main process's engine
    is checked out, and none is checked out until the fork is done."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.busy = 0
        self.forking = False

    @classmethod
    def install(cls) -> None:
        from sqlalchemy import event

        from worker.celery_app import settings
        from worker.store import sessions_for

        gate = cls()
        engine = sessions_for(settings.database_url).kw["bind"]
        event.listen(engine, "checkout", gate.checkout)
        event.listen(engine, "checkin", gate.checkin)
        os.register_at_fork(before=gate.before_fork, after_in_parent=gate.after_fork)

    def checkout(self, *_: Any) -> None:
        with self.cond:
            self.cond.wait_for(lambda: not self.forking)
            self.busy += 1

    def checkin(self, *_: Any) -> None:
        with self.cond:
            self.busy = max(0, self.busy - 1)
            self.cond.notify_all()

    def before_fork(self) -> None:
        with self.cond:
            # bounded: a session the forking thread itself holds would never be checked in
            self.cond.wait_for(lambda: self.busy == 0, timeout=10)
            self.forking = True

    def after_fork(self) -> None:
        with self.cond:
            self.forking = False
            self.cond.notify_all()


@signals.worker_process_init.connect
def _listen_for_parent_shutdown(**_: Any) -> None:
    from billiard.process import current_process

    if current_process()._name == "MainProcess":  # the solo pool sends this signal too
        return
    signal.signal(signal.SIGINT, lambda *_: _pool_shutdown.set())


@signals.worker_shutting_down.connect
def _hand_back_on_shutdown(sig: str = "", how: str = "", **_: Any) -> None:
    try:
        pids = list(_worker.pool.info.get("processes") or ()) if _worker is not None else []
    except Exception:  # no pool (solo) or it is already gone
        pids = []
    for pid in pids:
        if pid and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    if pids:  # in a signal handler: no logging (its locks), like Celery's own message
        from celery.apps.worker import safe_say

        safe_say(f"worker: {how} shutdown: asked {len(pids)} pool process(es) to hand their jobs back")


# ------------------------------------------------------------------ a pool process that died
# When a prefork pool process dies while running a job (OOM kill, crash), Celery raises
# WorkerLostError in the main process and, with task_reject_on_worker_lost, requeues the message
# at once. But the job is still `running` in the store with a fresh heartbeat, so the claim would
# drop that redelivery as a duplicate and the job would wait for the reconciler (stale_after_s).
# RunJobRequest.on_failure runs this in the main process before the message is requeued: if the job's claimant
# was a process of this host that is gone, and no training process of the job is left (an
# orphan would be SIGTERMed by PR_SET_PDEATHSIG; we SIGKILL it so that it cannot write into the
# run directory beside the next attempt), the job becomes `interrupted`, and the redelivery
# resumes it, counting the attempt (capped: then it fails with "worker lost"; an attempt lost
# before it trained counts as an interruption instead, see common.store.lifecycle.worker_lost).


def release_lost_job(job_id: str, settings: Any = None) -> bool:
    from sqlalchemy import select

    from common.store import Job, JobStatus, lifecycle, transaction
    from common.store.jobs import lock_job
    from worker.store import sessions_for

    if settings is None:
        from worker.celery_app import settings
    sessions = sessions_for(settings.database_url)
    with sessions() as s:
        job = s.scalar(select(Job).where(Job.id == job_id))
        if job is None or job.job_status != JobStatus.running or not claimant_is_dead_here(job.worker):
            return False
        claimant, token = job.worker, job.claim_token
    if not _kill_training_of(job_id):
        log.warning("job %s: a training process survives its dead pool process; leaving the job to the "
                    "reconciler", job_id)
        return False
    with transaction(sessions) as s:
        job = lock_job(s, job_id)
        if job is None or job.job_status != JobStatus.running or (job.worker, job.claim_token) != (claimant, token):
            return False
        lifecycle.worker_lost(job, "worker lost (its pool process died); will resume from the last checkpoint")
    log.warning("job %s: its pool process %s died; interrupted, the requeued message resumes it", job_id, claimant)
    return True


def _training_pids(job_id: str) -> list[int] | None:
    """Live processes running `teacher train` for this job (the guard, the trainer, its data
    loaders): their command lines name the job's directory. None where /proc is unavailable."""
    proc = Path("/proc")
    if not (proc / "self" / "cmdline").is_file():
        return None
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()  # empty for zombies
        except OSError:
            continue
        if job_id.encode() in cmdline and b"common.apps.cli" in cmdline:
            pids.append(int(entry.name))
    return pids


def _kill_training_of(job_id: str, timeout: float = 5.0) -> bool:
    """SIGKILL whatever still trains this job; True once nothing does."""
    deadline = time.monotonic() + timeout
    while True:
        pids = _training_pids(job_id)
        if pids is None:
            return False
        if not pids:
            return True
        if time.monotonic() > deadline:
            return False
        for pid in pids:
            try:
                pgid = os.getpgid(pid)
                if pgid != os.getpgrp():
                    os.killpg(pgid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
