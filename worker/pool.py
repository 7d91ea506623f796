"""One worker shape: Celery's solo pool, one job at a time, run in the worker's main process.

At start (Celery's ``worker_init``) a worker with any other pool is refused: it prints why and
exits 2 before it consumes anything.

Why solo only. Every deployment runs ``--pool solo --concurrency 1`` (docker-compose.yml,
``teacher serve``, docs/deploy.md): one worker per GPU, one job at a time, and the training runs
in a child process that the supervisor starts anyway, so a pool process would only put a second
process between the worker and its child. With solo:

- the supervisor runs in the process that receives the worker's SIGTERM, so its own signal
  handler stops the child, records the job ``interrupted`` and re-sends it while Celery's warm
  shutdown completes (with prefork the SIGTERM reaches only the main process, which waits for
  the running task: the whole training);
- a dead worker is one process, the one its job's claim names ("host:pid"), so the reconciler
  can tell that it is gone (worker/liveness.py) and its job is re-sent within a few heartbeats;
- nothing forks a process that holds database connections (SQLite's lock bookkeeping does not
  survive a fork while a transaction is open).

Making prefork safe took about 250 lines here (forwarding the shutdown to pool processes,
releasing a dead pool process's job before Celery requeued its message, a gate that kept
database connections out of fork()) and real-process tests of its own; no deployment needed it.
More throughput is more workers (one per GPU), not more pool processes.
"""
from __future__ import annotations

import sys
from typing import Any

from celery import signals

from common.exitcodes import ExitCode
from worker import supervisor

SUPPORTED_POOL = "solo"


def stopping() -> bool:
    """Whether this worker is shutting down (so a delivered job is handed back, not started)."""
    return supervisor.celery_stopping()


def pool_refusal(pool: Any) -> str | None:
    """Why a worker with ``pool`` (a --pool name or class, as Celery's WorkController holds it
    at worker_init) may not run; None for the solo pool."""
    from celery.concurrency import ALIASES, get_implementation
    from celery.concurrency.solo import TaskPool

    impl = get_implementation(pool)
    if impl is TaskPool:
        return None
    name = next((alias for alias, path in ALIASES.items() if path == f"{impl.__module__}:{impl.__name__}"), repr(pool))
    return (f"teacher workers run only with --pool {SUPPORTED_POOL} (got {name}): each worker runs one job at a "
            f"time in its main process, which receives the shutdown signal and hands the job back (see "
            f"worker/pool.py). Start one worker per GPU: celery -A worker.celery_app worker --pool {SUPPORTED_POOL} "
            f"--concurrency 1")


@signals.worker_init.connect
def _refuse_other_pools(sender: Any = None, **_: Any) -> None:
    why = pool_refusal(getattr(sender, "pool_cls", None))
    if why is not None:
        print(f"error: {why}", file=sys.stderr, flush=True)
        raise SystemExit(ExitCode.BAD_INPUT)
