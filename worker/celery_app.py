"""The Celery application: JSON-only messages on Redis, one job at a time per worker.

Run a worker per GPU:   celery -A worker.celery_app worker -Q default --concurrency 1
Optional beat:          celery -A worker.celery_app beat   (sends `reconcile` to the `control`
                        queue; serve it with a small `-Q control` worker, or run
                        `python -m worker.reconciler` instead, which is what `teacher serve` does)

The broker contract (task names, queues, Celery configuration) is common.broker, shared with
the API; this module adds what only a worker process needs: the app instance and its heartbeat.
"""
from __future__ import annotations

import logging
import sys
import threading

from celery import signals

from common import broker
from common.logs import configure_logging, worker_id as worker_name  # hostname:pid, as on the log lines
from common.devices import FAKE_ENV, Devices, DevicesError, describe, host_cpus, probe
from common.broker import CONTROL_QUEUE, RECONCILE, RUN_JOB, broker_priority, make_celery, publish, send_job  # noqa: F401 (re-exported)
from common.settings import Settings

log = logging.getLogger(__name__)


settings = Settings.from_env()
celery_app = make_celery(settings)
broker.register_publisher(settings, celery_app)  # this process's publishes reuse its connection


@signals.setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, logfile: str | None = None, **_: object) -> None:
    # Connected, this replaces Celery's own root-logger setup: JSON lines (common/logs.py) with
    # the worker's name on each, and a job's id and attempt from the supervisor's log_context.
    stream = open(logfile, "a", buffering=1, encoding="utf-8") if logfile else None  # noqa: SIM115 (the process's log)
    configure_logging("worker", level=loglevel or logging.INFO, stream=stream)


# ---------------------------------------------------------------- this worker's devices
_devices: Devices | None = None
_devices_lock = threading.Lock()


def worker_devices() -> Devices:
    """This worker's devices, probed once per process (common.devices: a subprocess with a
    timeout, so a broken CUDA driver cannot hang or crash the worker). The supervisor places
    jobs by it (a job asking for GPUs that arrives during the probe waits for it); the beat
    reports it once known."""
    global _devices
    with _devices_lock:
        if _devices is None:
            try:
                _devices = probe(settings.python or sys.executable)
            except DevicesError as exc:  # a bad test-only TEACHER_FAKE_DEVICES: shown, and no GPU jobs
                _devices = Devices(cpus=host_cpus(), error=str(exc), source=FAKE_ENV)
            if _devices.error:
                log.warning("device probe: %s; this worker takes no job that asks for GPUs", _devices.error)
            log.info("devices: %s (%s)", describe(_devices), _devices.source)
        return _devices


def _probe_in_background() -> None:
    # Off the worker's start: `ready` (and the first beat, so /health counts the worker alive)
    # does not wait for a cold `import torch`; the beat right after the probe reports it.
    worker_devices()
    _beat_now.set()


# ---------------------------------------------------------------- worker liveness for /health
_beat_stop = threading.Event()
_beat_now = threading.Event()  # beat at once (the probe is done, or the worker stops)


def _beat_loop(name: str, queues: str) -> None:
    from common.store import WorkerBeat, transaction, utcnow
    from worker.store import sessions_for

    factory = sessions_for(settings.database_url)  # also applies pending migrations
    while not _beat_stop.is_set():
        known = _devices  # None until the probe is done: "not reported" (the API's check skips it)
        devices = known.to_json() if known is not None else None
        try:
            with transaction(factory) as s:
                beat = s.get(WorkerBeat, name)
                if beat is None:
                    s.add(WorkerBeat(name=name, queues=queues, seen_at=utcnow(), devices=devices))
                else:
                    beat.seen_at = utcnow()
                    beat.devices = devices
        except Exception:  # keep beating through a database blip; /health shows the gap
            log.exception("worker heartbeat failed")
        _beat_now.wait(settings.worker_beat_s)
        _beat_now.clear()


@signals.worker_ready.connect
def _start_worker_beat(sender: object = None, **_: object) -> None:
    app = getattr(sender, "app", celery_app)
    queues = ",".join(sorted(app.amqp.queues.consume_from or ()))
    threading.Thread(target=_probe_in_background, name="teacher-device-probe", daemon=True).start()
    threading.Thread(target=_beat_loop, args=(worker_name(), queues), name="teacher-worker-beat", daemon=True).start()


@signals.worker_shutdown.connect
def _stop_worker_beat(**_: object) -> None:
    _beat_stop.set()
    _beat_now.set()
