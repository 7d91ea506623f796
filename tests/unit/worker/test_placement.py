"""Placement at the claim (worker/supervisor.py): a worker never claims a job that asks for more
GPUs than it has; it leaves the job as it is and sends its message again later for another
worker of the queue. Real SQLite store; the worker's devices and the broker are stand-ins."""
from __future__ import annotations

import logging

from common.devices import Devices, Gpu
from common.store import JobStatus
from tests.support.api import FakeBroker, get_job as _get, new_job as _job
from worker.supervisor import DEFER_S, Supervisor, placement_refusal

TWO = Devices((Gpu("Fake H100", 81559),) * 2, cpus=16)
CPU = Devices(cpus=16)


def _asks(gpus):
    return {"resources": {"gpus": gpus, "processes": 1}}


def _never(*_: object) -> Devices:
    raise AssertionError("devices looked up (or a pause) for a job that asks for no GPUs")


def test_the_placement_rule():
    assert placement_refusal(_asks(2), lambda: TWO) is None
    assert placement_refusal(_asks(1), lambda: TWO) is None
    assert placement_refusal(_asks(4), lambda: TWO) == "asks for 4 GPUs; this worker has 2"
    assert placement_refusal(_asks(1), lambda: CPU) == "asks for 1 GPU; this worker has 0"
    broken = Devices(cpus=16, error="RuntimeError: CUDA driver initialization failed")
    assert placement_refusal(_asks(1), lambda: broken) == (
        "asks for 1 GPU; this worker has 0 (its device probe failed: RuntimeError: CUDA driver initialization failed)")
    # no resources.gpus: any worker (one process, on its GPU if it has one); not even probed
    assert placement_refusal(_asks(None), _never) is None
    assert placement_refusal({}, _never) is None


def test_a_worker_without_the_gpus_leaves_the_job_queued_and_resends_it(app, client, alice, settings, caplog):
    job_id = _job(app, client, alice, resources={"gpus": 2})
    sent, pauses = FakeBroker(), []

    def pause(seconds: float) -> None:  # the message goes back only after the pause
        assert sent.sent == []
        pauses.append(seconds)

    cpu_worker = Supervisor(settings, enqueue=sent, pause=pause, devices=lambda: CPU)
    with caplog.at_level(logging.INFO, logger="worker.supervisor"):
        assert cpu_worker.claim(job_id) is None
    job = _get(app, job_id)
    assert (job.status, job.attempts, job.worker, job.claim_token) == (JobStatus.queued.value, 0, None, None)
    assert sent.sent == [(job_id, "default", job.priority)] and pauses == [DEFER_S]
    assert job.enqueued_at is not None  # the reconciler sees a message on its way
    assert "asks for 2 GPUs; this worker has 0; left for another worker of queue 'default' " \
           "(its message goes back in 5 s)" in caplog.text

    claim = Supervisor(settings, enqueue=sent, pause=pause, devices=lambda: TWO).claim(job_id)
    assert claim is not None and claim.attempt == 1 and _get(app, job_id).status == JobStatus.running.value
    assert len(sent.sent) == 1 and pauses == [DEFER_S]  # nothing more


def test_the_pause_ends_early_when_the_worker_shuts_down(settings):
    import time

    sup = Supervisor(settings, enqueue=FakeBroker(), shutdown_requested=lambda: True, devices=lambda: CPU)
    started = time.monotonic()
    sup._pause(DEFER_S)
    assert time.monotonic() - started < 1


def test_jobs_that_ask_for_no_gpus_are_claimed_by_any_worker(app, client, alice, settings):
    job_id = _job(app, client, alice)
    sent = FakeBroker()
    claim = Supervisor(settings, enqueue=sent, pause=_never, devices=_never).claim(job_id)
    assert claim is not None and sent.sent == []


def test_a_duplicate_message_of_a_running_job_is_dropped_not_resent(app, client, alice, settings):
    job_id = _job(app, client, alice, resources={"gpus": 2})
    assert Supervisor(settings, enqueue=FakeBroker(), devices=lambda: TWO).claim(job_id) is not None
    sent = FakeBroker()
    assert Supervisor(settings, enqueue=sent, pause=_never, devices=lambda: CPU).claim(job_id) is None
    assert sent.sent == [] and _get(app, job_id).attempts == 1  # live elsewhere: nothing to pass on


def test_the_worker_probes_once_and_a_bad_fake_report_means_no_gpus(monkeypatch):
    import worker.celery_app as celery_app
    from common.devices import FAKE_ENV

    calls = []
    monkeypatch.setattr(celery_app, "_devices", None)
    monkeypatch.setattr(celery_app, "probe", lambda python: calls.append(python) or TWO)
    assert celery_app.worker_devices() is TWO and celery_app.worker_devices() is TWO and len(calls) == 1

    monkeypatch.undo()  # the real probe again, now reading a bad variable
    monkeypatch.setattr(celery_app, "_devices", None)
    monkeypatch.setenv(FAKE_ENV, "{bad")
    devices = celery_app.worker_devices()
    assert devices.gpu_count == 0 and devices.source == FAKE_ENV and devices.error.startswith(f"{FAKE_ENV} is not JSON")
    assert placement_refusal({"resources": {"gpus": 1}}, celery_app.worker_devices).startswith(
        "asks for 1 GPU; this worker has 0 (its device probe failed: TEACHER_FAKE_DEVICES is not JSON")
