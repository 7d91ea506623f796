"""The service side of multi-GPU placement in-process (Flask test client, fake broker, real
SQLite store): POST /jobs refuses resources.gpus that no live worker of the job's queue offers
(400 naming the field; the dashboard's form says the same), /health shows workers' devices to
admins only, and the admin workers page has a devices column. With real processes:
tests/system/test_service_placement.py."""
from __future__ import annotations

import datetime as dt
import re

import pytest
import yaml

from common.devices import FAKE_ENV, Devices, Gpu
from common.store import WorkerBeat, transaction, utcnow
from tests.support.api import CFG, mint
from tests.support.ui import csrf_of

TWO_H100 = Devices((Gpu("NVIDIA H100 80GB", 81559),) * 2, cpus=32)


@pytest.fixture
def app(settings, broker):  # type: ignore[no-untyped-def]
    import dataclasses

    from api import create_app

    settings = dataclasses.replace(settings, queues=("default", "gpu"))
    app = create_app({"TEACHER_SETTINGS": settings, "TEACHER_ENQUEUE": broker, "TESTING": True,
                      "SECRET_KEY": "test-secret"})
    yield app
    app.extensions["teacher"].engine.dispose()


def beat(app, name: str, devices: Devices | None, queues: str = "gpu", age_s: float = 0.0) -> None:
    with transaction(app.extensions["teacher"].sessions) as s:
        s.merge(WorkerBeat(name=name, queues=queues, seen_at=utcnow() - dt.timedelta(seconds=age_s),
                           devices=devices.to_json() if devices else None))


def post(client, headers, gpus, queue="gpu"):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/jobs", json={**CFG, "queue": queue, "resources": {"gpus": gpus}}, headers=headers)


def test_more_gpus_than_any_live_worker_of_the_queue_is_a_400_naming_the_field(app, client, alice, broker):
    beat(app, "big:1", TWO_H100)
    beat(app, "small:1", Devices(cpus=8))
    r = post(client, alice, 4)
    assert r.status_code == 400, r.json
    assert r.json["errors"] == {"resources.gpus": ["asks for 4 GPUs; the live workers of queue 'gpu' have at most 2"]}
    assert broker.sent == []  # nothing stored, nothing sent
    assert client.get("/api/v1/jobs", headers=alice).json["jobs"] == []
    assert post(client, alice, 2).status_code == 202
    assert post(client, alice, 1).status_code == 202
    assert client.post("/api/v1/jobs", json={**CFG, "queue": "gpu"}, headers=alice).status_code == 202  # no gpus asked


def test_only_live_workers_of_the_job_queue_count(app, client, alice):
    beat(app, "gone:1", Devices((Gpu("X", 1),) * 8, cpus=8), age_s=3600)  # dead: does not count
    beat(app, "other:1", Devices((Gpu("X", 1),) * 8, cpus=8), queues="default")  # another queue
    beat(app, "cpu:1", Devices(cpus=8))
    r = post(client, alice, 1)
    assert r.status_code == 400 and r.json["errors"]["resources.gpus"] == [
        "asks for 1 GPU; the live workers of queue 'gpu' have at most 0"]
    assert post(client, alice, 8, queue="default").status_code == 202


def test_with_no_live_worker_that_reported_devices_the_job_waits_queued(app, client, alice, broker):
    assert post(client, alice, 8).status_code == 202  # no worker at all: one may be starting
    beat(app, "old:1", None)  # a worker that does not report devices (older code)
    beat(app, "gone:1", Devices(cpus=8), age_s=3600)
    r = post(client, alice, 8)
    assert r.status_code == 202 and len(broker.sent) == 2


def test_the_dashboard_form_gets_the_same_error(app, client, alice):
    from tests.unit.api.test_ui_pages import signed_in

    beat(app, "big:1", TWO_H100)
    signed_in(client, alice)
    page = client.get("/ui/submit")
    text = yaml.safe_dump({**CFG, "queue": "gpu", "resources": {"gpus": 4}})
    r = client.post("/ui/submit", data={"yaml": text, "csrf_token": csrf_of(page.text)})
    assert r.status_code == 400
    assert 'data-field="resources.gpus"' in r.text and "have at most 2" in r.text, r.text


def test_health_shows_devices_to_admins_only(app, client, alice):
    beat(app, "big:1", TWO_H100)
    beat(app, "fake:1", Devices((Gpu("Fake H100", 81559),), cpus=2, source=FAKE_ENV))
    beat(app, "old:1", None, queues="default,gpu")
    admin = mint(app, "root", admin=True)
    for headers in ({}, alice, {"Authorization": "Bearer not-a-token"}):
        r = client.get("/api/v1/health", headers=headers)
        assert "workers" not in r.json["checks"]["worker"], headers
        assert "H100" not in r.text and "cpus" not in r.text
    workers = client.get("/api/v1/health", headers=admin).json["checks"]["worker"]["workers"]
    assert [(w["name"], w["queues"], w["alive"], w["summary"]) for w in workers] == [
        ("big:1", ["gpu"], True, "2 × NVIDIA H100 80GB"), ("fake:1", ["gpu"], True, "1 × Fake H100"),
        ("old:1", ["default", "gpu"], True, "not reported")]
    assert workers[0]["devices"] == TWO_H100.to_json() and workers[1]["devices"]["source"] == FAKE_ENV
    assert workers[2]["devices"] is None


def test_the_admin_workers_page_has_a_devices_column(app, client):
    from tests.unit.api.test_ui_pages import signed_in

    beat(app, "big:1", TWO_H100)
    beat(app, "cpu:1", Devices(cpus=16))
    beat(app, "broken:1", Devices(cpus=4, error="RuntimeError: CUDA driver initialization failed"))
    beat(app, "old:1", None)
    signed_in(client, mint(app, "root", admin=True))
    html = client.get("/ui/admin/workers").text

    def cell(name: str) -> str:
        row = re.search(rf'<tr data-worker="{re.escape(name)}">(.*?)</tr>', html, re.S)
        assert row, html
        return re.search(r'<td class="devices">(.*?)</td>', row.group(1), re.S).group(1)

    assert "2 × NVIDIA H100 80GB" in cell("big:1") and 'title="NVIDIA H100 80GB 80 GiB; NVIDIA H100 80GB 80 GiB"' in cell("big:1")
    assert "CPU (16 cores)" in cell("cpu:1")
    assert "probe failed" in cell("broken:1") and "CUDA driver initialization failed" in cell("broken:1")
    assert "not reported" in cell("old:1")
