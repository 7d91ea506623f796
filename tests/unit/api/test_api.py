"""The HTTP API in-process (Flask test client, fake broker): auth, validation, idempotency,
ownership, cancel, run-directory views, download safety, and the OpenAPI contract."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from common.store import JobStatus, transaction
from common.store.jobs import JobPaths, lock_job
from tests.support.api import CFG, set_status, submit
from tests.support.openapi_check import check_document, check_response


# ------------------------------------------------------------------------------------ auth
def test_every_endpoint_needs_a_token(client, alice):
    job_id = client.post("/api/v1/jobs", json=CFG, headers=alice).json["id"]
    paths = ["/api/v1/jobs", f"/api/v1/jobs/{job_id}", f"/api/v1/jobs/{job_id}/logs",
             f"/api/v1/jobs/{job_id}/metrics", f"/api/v1/jobs/{job_id}/checkpoints",
             f"/api/v1/jobs/{job_id}/checkpoints/best", "/metrics", "/api/v1/nope"]
    for headers in ({}, {"Authorization": "Bearer tch_wrong"}, {"Authorization": "Basic abc"}):
        for path in paths:
            r = client.get(path, headers=headers)
            assert r.status_code == 401, path
            assert r.json["code"] == 401 and r.json["message"] and r.headers["WWW-Authenticate"].startswith("Bearer")
        assert client.post("/api/v1/jobs", json=CFG, headers=headers).status_code == 401
        assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=headers).status_code == 401


def test_tokens_are_stored_hashed(app, alice):
    from sqlalchemy import select

    from common.store import Token

    token = alice["Authorization"].split()[1]
    with app.extensions["teacher"].sessions() as s:
        hashes = list(s.scalars(select(Token.token_hash)))
    assert hashlib.sha256(token.encode()).hexdigest() in hashes and token not in hashes


def test_health_and_openapi_are_public(call, doc):
    check_document(doc)
    r = call("get", "/api/v1/health")
    assert r.status_code == 503 and r.json["checks"]["redis"]["ok"] is False  # no Redis in these tests
    assert r.json["checks"]["database"]["ok"] is True


def test_other_users_jobs_are_404_and_admin_sees_all(call, alice, bob, admin):
    job_id = submit(call, alice).json["id"]
    for path in (f"/api/v1/jobs/{job_id}", f"/api/v1/jobs/{job_id}/logs", f"/api/v1/jobs/{job_id}/metrics",
                 f"/api/v1/jobs/{job_id}/checkpoints", f"/api/v1/jobs/{job_id}/checkpoints/best"):
        assert call("get", path, headers=bob).status_code == 404, path
        assert call("get", path, headers=admin).status_code != 404 or path.endswith("best"), path
    assert call("post", f"/api/v1/jobs/{job_id}/cancel", headers=bob).status_code == 404
    assert call("get", "/api/v1/jobs", headers=bob).json["jobs"] == []
    assert [j["id"] for j in call("get", "/api/v1/jobs", headers=admin).json["jobs"]] == [job_id]
    # a job can not depend on (or initialise from) someone else's job either: the same 404 as
    # for a job that does not exist, and alice's job is untouched
    before = call("get", f"/api/v1/jobs/{job_id}", headers=alice).json
    r = submit(call, bob, {**CFG, "after": job_id})
    assert r.status_code == 404 and "after" in r.json["errors"]
    r = submit(call, bob, {**CFG, "init_from": {"job": job_id, "checkpoint": "best"}})
    assert r.status_code == 404 and "init_from.job" in r.json["errors"], r.json
    assert call("get", "/api/v1/jobs", headers=bob).json["jobs"] == []
    after = call("get", f"/api/v1/jobs/{job_id}", headers=alice).json
    assert {k: v for k, v in after.items() if k != "updated_at"} == {k: v for k, v in before.items() if k != "updated_at"}


# ------------------------------------------------------------------------------ submission
def test_submit_commits_then_enqueues(call, alice, broker, app):
    r = submit(call, alice)
    assert r.status_code == 202
    job = r.json
    assert job["status"] == "queued" and job["attempts"] == 0 and job["user"] == "alice"
    assert r.headers["Location"] == job["links"]["self"] == f"/api/v1/jobs/{job['id']}"
    assert job["config"]["optim"]["momentum"] == 0.9  # defaults resolved by TrainConfigSchema
    assert broker.sent == [(job["id"], "default", 5)]
    got = call("get", job["links"]["self"], headers=alice).json
    assert got["id"] == job["id"] and got["status"] == "queued"


@pytest.mark.parametrize(
    "body, field",
    [
        ({**CFG, "optim": {**CFG["optim"], "lr": -1}}, "optim.lr"),
        ({**CFG, "optim": {**CFG["optim"], "lr": "nan"}}, "optim.lr"),
        ({**CFG, "model": {"arch": "os.system"}}, "model.arch"),
        ({**CFG, "bogus": 1}, "bogus"),
        ({**CFG, "data": {**CFG["data"], "root": "../../etc"}}, "data.root"),
        ({k: v for k, v in CFG.items() if k != "optim"}, "optim"),
        ({**CFG, "queue": "nope"}, "queue"),
        ({**CFG, "priority": 10}, "priority"),
        ({**CFG, "after": "x"}, "after"),
        ({**CFG, "init_from": "abc/run/checkpoints/best.pt"}, "init_from"),
        ({**CFG, "init_from": {"job": "0" * 32, "checkpoint": "../x"}}, "init_from.checkpoint"),
        ({"config": "../configs/demo"}, "config"),
        ({"config": "no_such_config"}, "config"),
        ({"config": "demo", "model": {"arch": "resnet18"}}, "model"),
        ({"config": "demo", "overrides": {"optim.lr": 0}}, "optim.lr"),
        ({"config": "demo", "overrides": {"init_from": "someone/run/checkpoints/best.pt"}}, "init_from"),
        ({"config": "teacher_regional"}, "init_from"),  # its file names a path; the service needs a job
        ([1, 2], "_schema"),
    ],
)
def test_bad_job_is_400_naming_the_field(call, alice, broker, body, field):
    r = submit(call, alice, body)
    assert r.status_code == 400, r.json
    assert field in r.json["errors"], r.json
    assert r.json["message"]
    assert broker.sent == []


def test_unknown_after_job_is_404_naming_the_field(call, alice):
    r = submit(call, alice, {**CFG, "after": "f" * 32})
    assert r.status_code == 404 and "after" in r.json["errors"]


def test_yaml_body_and_unsafe_yaml(call, alice):
    r = call("post", "/api/v1/jobs", data=yaml.safe_dump(CFG), content_type="application/yaml", headers=alice)
    assert r.status_code == 202 and r.json["config"]["name"] == "tiny"
    evil = "!!python/object/apply:os.system ['touch /tmp/pwned']\n"
    r = call("post", "/api/v1/jobs", data=evil, content_type="application/yaml", headers=alice)
    assert r.status_code == 400 and "_schema" in r.json["errors"]
    laughs = "a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nmodel: *c\n"
    r = call("post", "/api/v1/jobs", data=laughs, content_type="application/yaml", headers=alice)
    assert r.status_code == 400 and "alias" in r.json["errors"]["_schema"][0]
    for deep, ctype in (("[" * 50_000, "application/json"), ("[" * 50_000, "application/yaml")):
        r = call("post", "/api/v1/jobs", data=deep, content_type=ctype, headers=alice)
        assert r.status_code == 400 and list(r.json["errors"]) == ["_schema"], r.json
    # huge arrays under the size limit: refused by the schema, naming the field
    huge = {**CFG, "data": {**CFG["data"], "format": "csv", "filter": {"column": "region", "values": ["a"] * 10_001}}}
    body = json.dumps(huge)
    assert len(body) < 64 * 1024  # under the test app's body limit: not the size limit's doing
    r = call("post", "/api/v1/jobs", data=body, content_type="application/json", headers=alice)
    assert r.status_code == 400 and "data.filter.values" in json.dumps(r.json["errors"]), r.json
    r = call("post", "/api/v1/jobs", data=json.dumps({**CFG, "junk": [0] * 15_000}), content_type="application/json",
             headers=alice)
    assert r.status_code == 400 and "junk" in json.dumps(r.json["errors"]), r.json
    r = call("post", "/api/v1/jobs", data="{not json", content_type="application/json", headers=alice)
    assert r.status_code == 400 and r.json["errors"] == {"_schema": ["not valid JSON"]}  # the body as a whole
    r = call("post", "/api/v1/jobs", data=b"name: \xff", content_type="application/yaml", headers=alice)
    assert r.status_code == 400 and list(r.json["errors"]) == ["_schema"]
    r = call("post", "/api/v1/jobs", data="x", content_type="text/plain", headers=alice)
    assert r.status_code == 415


def test_named_config_with_overrides(call, alice):
    body = {"config": "teacher_global", "overrides": {"optim.epochs": 3, "data": {"image_size": 64}}, "name": "g1",
            "queue": "gpu-large", "priority": 9}
    r = submit(call, alice, body)
    assert r.status_code == 202, r.json
    cfg = r.json["config"]
    assert cfg["optim"]["epochs"] == 3 and cfg["data"]["image_size"] == 64 and cfg["name"] == "g1"
    assert cfg["model"]["arch"] == "resnet50"
    assert r.json["queue"] == "gpu-large" and r.json["priority"] == 9


def test_body_over_limit_is_413(call, alice):
    big = {**CFG, "name": "x" * (70 * 1024)}
    r = submit(call, alice, big)
    assert r.status_code == 413 and r.json["code"] == 413


def test_idempotency_key(call, alice, bob, broker):
    key = {"Idempotency-Key": "abc-123"}
    first = submit(call, {**alice, **key})
    again = submit(call, {**alice, **key})
    assert first.status_code == again.status_code == 202
    assert again.json["id"] == first.json["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert len(broker.sent) == 1
    other = submit(call, {**alice, **key}, {**CFG, "name": "other"})
    assert other.status_code == 422 and other.json["code"] == 422
    # keys are per user
    assert submit(call, {**bob, **key}).json["id"] != first.json["id"]
    bad = submit(call, {**alice, "Idempotency-Key": "a b"})
    assert bad.status_code == 400


@pytest.fixture(params=["sqlite", "postgres"])
def any_store_app(request, app, settings, broker):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        return app
    from api import create_app

    url = request.getfixturevalue("pg_database_url")
    pg_app = create_app({"TEACHER_SETTINGS": dataclasses.replace(settings, database_url=url),
                         "TEACHER_ENQUEUE": broker, "TESTING": True})
    request.addfinalizer(pg_app.extensions["teacher"].engine.dispose)
    return pg_app


def test_concurrent_requests_with_one_key_create_one_job(any_store_app, broker):
    from tests.support.api import mint

    app = any_store_app
    alice = mint(app, "alice")
    ids: list[str] = []
    barrier = threading.Barrier(6)

    def post() -> None:
        c = app.test_client()
        barrier.wait()
        r = c.post("/api/v1/jobs", json=CFG, headers={**alice, "Idempotency-Key": "race"})
        assert r.status_code == 202, r.json
        ids.append(r.json["id"])

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(ids) == 6 and len(set(ids)) == 1
    assert len(broker.sent) == 1


# ------------------------------------------------------------------------------ list, cancel
def test_list_filters_and_paginates_newest_first(call, alice, app):
    ids = [submit(call, alice, {**CFG, "name": f"j{i}"}).json["id"] for i in range(5)]
    set_status(app, ids[1], JobStatus.failed)
    seen, cursor = [], None
    while True:
        r = call("get", "/api/v1/jobs?limit=2" + (f"&cursor={cursor}" if cursor else ""), headers=alice)
        assert r.status_code == 200
        seen += [j["id"] for j in r.json["jobs"]]
        cursor = r.json["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]
    failed = call("get", "/api/v1/jobs?status=failed", headers=alice).json["jobs"]
    assert [j["id"] for j in failed] == [ids[1]]
    for bad in ("status=bogus", "limit=0", "limit=x", "cursor=!!!", "cursor=cGs6eA"):
        r = call("get", f"/api/v1/jobs?{bad}", headers=alice)
        assert r.status_code == 400 and r.json["message"], bad


def test_cancel(call, alice, app, broker):
    queued = submit(call, alice).json["id"]
    r = call("post", f"/api/v1/jobs/{queued}/cancel", headers=alice)
    assert r.status_code == 202 and r.json["status"] == "cancelled"
    assert call("post", f"/api/v1/jobs/{queued}/cancel", headers=alice).status_code == 409

    running = submit(call, alice).json["id"]
    set_status(app, running, JobStatus.running)
    r = call("post", f"/api/v1/jobs/{running}/cancel", headers=alice)
    assert r.status_code == 202 and r.json["status"] == "running" and r.json["cancel_requested"] is True
    assert call("get", "/api/v1/jobs/" + "0" * 32, headers=alice).status_code == 404
    assert call("get", "/api/v1/jobs/not-an-id", headers=alice).status_code == 404


def test_after_and_init_from_chaining(call, alice, app, broker):
    first = submit(call, alice).json["id"]
    second = submit(call, alice, {**CFG, "init_from": {"job": first, "checkpoint": "best"}})
    assert second.status_code == 202, second.json
    job = second.json
    assert job["status"] == "waiting" and job["after"] == first
    assert job["config"]["init_from"] == f"{first}/run/checkpoints/best.pt"
    assert [s[0] for s in broker.sent] == [first]
    regional = submit(call, alice, {"config": "teacher_regional", "init_from": {"job": first, "checkpoint": "last"}})
    assert regional.status_code == 202, regional.json
    assert regional.json["config"]["init_from"] == f"{first}/run/checkpoints/last.pt"
    # when the first fails, the dependent fails with the reason; cancelling works the same way
    third = submit(call, alice, {**CFG, "after": first}).json["id"]
    call("post", f"/api/v1/jobs/{first}/cancel", headers=alice)
    for jid in (job["id"], third, regional.json["id"]):
        got = call("get", f"/api/v1/jobs/{jid}", headers=alice).json
        assert got["status"] == "failed" and first in got["failure_reason"]
    # depending on a job that already failed can never start
    assert submit(call, alice, {**CFG, "after": first}).status_code == 409


# ------------------------------------------------------------------------------ run files
@pytest.fixture
def finished_job(call, alice, app, settings) -> tuple[str, JobPaths]:
    job_id = submit(call, alice).json["id"]
    paths = JobPaths.of(settings.jobs_root, job_id)
    paths.checkpoints.mkdir(parents=True)
    paths.log.write_text("".join(f"line {i}\n" for i in range(50)) + "partial")
    payload = os.urandom(5000)
    (paths.checkpoints / "best.pt").write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    paths.manifest.write_text(json.dumps({"checkpoints": [
        {"name": "best.pt", "epoch": 1, "step": 3, "size": 5000, "sha256": sha, "metrics": {"val.top1": 50.0}}]}))
    paths.history.write_text(json.dumps({"format": "teacher-history/1", "epochs": [{"epoch": 1, "val": {"top1": 50.0}}]}))
    set_status(app, job_id, JobStatus.running,
               progress={"status": "running", "epoch": 1, "epochs": 1, "step": 3, "total_steps": 3, "percent": 100.0,
                         "eta_s": 0.0, "throughput": 100.0, "latest": {"train.loss": 1.0}, "updated_at": 1.0})
    return job_id, paths


@pytest.mark.parametrize("content", ["[1, 2]", "{not json"])
def test_a_damaged_run_file_is_a_500_naming_the_file_not_its_path(client, alice, finished_job, settings, content):
    job_id, paths = finished_job
    paths.history.write_text(content)
    r = client.get(f"/api/v1/jobs/{job_id}/metrics", headers=alice)
    assert r.status_code == 500 and "history.json is damaged" in r.json["message"], r.json
    assert str(settings.jobs_root) not in r.get_data(as_text=True)


def test_logs_tail_and_follow(call, client, alice, app, finished_job):
    job_id, paths = finished_job
    r = call("get", f"/api/v1/jobs/{job_id}/logs?tail=3", headers=alice)
    assert r.json["lines"] == ["line 47", "line 48", "line 49"]  # the incomplete last line is not shown
    assert call("get", f"/api/v1/jobs/{job_id}/logs?tail=0", headers=alice).status_code == 400
    assert call("get", f"/api/v1/jobs/{job_id}/logs?follow=maybe", headers=alice).status_code == 400
    set_status(app, job_id, JobStatus.succeeded)
    r = client.get(f"/api/v1/jobs/{job_id}/logs?tail=2&follow=true", headers=alice)
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    text = r.get_data(as_text=True)
    assert "data: line 49\n\n" in text and "data: partial" in text and text.endswith("event: end\ndata: succeeded\n\n")


def test_progress_metrics_and_checkpoints(call, alice, finished_job):
    job_id, _ = finished_job
    job = call("get", f"/api/v1/jobs/{job_id}", headers=alice).json
    assert job["progress"]["percent"] == 100.0 and job["progress"]["latest"] == {"train.loss": 1.0}
    assert call("get", f"/api/v1/jobs/{job_id}/metrics", headers=alice).json["epochs"][0]["epoch"] == 1
    ckpts = call("get", f"/api/v1/jobs/{job_id}/checkpoints", headers=alice).json["checkpoints"]
    assert ckpts[0]["name"] == "best.pt" and ckpts[0]["url"].endswith("/checkpoints/best.pt")


@pytest.mark.parametrize("status, shown", [
    (JobStatus.failed, "failed"), (JobStatus.succeeded, "succeeded"), (JobStatus.cancelled, "stopped"),
    (JobStatus.interrupted, "stopped"), (JobStatus.queued, "stopped"), (JobStatus.running, "running"),
])
def test_progress_status_never_contradicts_the_job(call, alice, app, finished_job, status, shown):
    """A trainer killed mid-epoch leaves progress.json at "running"; the job then fails (or is
    cancelled, or interrupted and queued again). Its responses show the progress as it was when
    the attempt ended, with a status that agrees with the job's (docs/api.md, Progress)."""
    job_id, _ = finished_job  # its row holds progress {"status": "running", "percent": 100.0, ...}
    set_status(app, job_id, status)
    for job in (call("get", f"/api/v1/jobs/{job_id}", headers=alice).json,
                call("get", "/api/v1/jobs", headers=alice).json["jobs"][0]):
        assert job["status"] == status.value
        assert job["progress"]["status"] == shown, job["progress"]
        assert job["progress"]["percent"] == 100.0 and job["progress"]["latest"] == {"train.loss": 1.0}
    # what the trainer did record about how the attempt ended is shown as it is
    set_status(app, job_id, JobStatus.failed, progress={"status": "stopped", "epoch": 1, "updated_at": 2.0})
    assert call("get", f"/api/v1/jobs/{job_id}", headers=alice).json["progress"]["status"] == "stopped"


def test_download_with_etag_and_range(client, alice, finished_job):
    job_id, paths = finished_job
    payload = (paths.checkpoints / "best.pt").read_bytes()
    r = client.get(f"/api/v1/jobs/{job_id}/checkpoints/best", headers=alice)
    assert r.status_code == 200 and r.data == payload
    assert int(r.headers["Content-Length"]) == len(payload)
    assert r.headers["ETag"].strip('"') == hashlib.sha256(payload).hexdigest()
    r2 = client.get(f"/api/v1/jobs/{job_id}/checkpoints/best.pt", headers={**alice, "Range": "bytes=100-199"})
    assert r2.status_code == 206 and r2.data == payload[100:200] and r2.headers["Content-Range"] == "bytes 100-199/5000"
    r3 = client.get(f"/api/v1/jobs/{job_id}/checkpoints/best.pt", headers={**alice, "If-None-Match": r.headers["ETag"]})
    assert r3.status_code == 304


def test_download_is_confined_to_the_checkpoint_dir(client, alice, finished_job, tmp_path):
    job_id, paths = finished_job
    secret = tmp_path / "secret.pt"
    secret.write_bytes(b"secret")
    (paths.checkpoints / "escape.pt").symlink_to(secret)
    (paths.root / "sibling.pt").write_bytes(b"x")
    for name in ("escape.pt", "../sibling.pt", "..%2Fsibling.pt", "%2E%2E/%2E%2E/secret.pt", "/etc/passwd",
                 "%2Fetc%2Fpasswd", "manifest.json", "a\\b.pt", "nope.pt", ".hidden.pt", "best.pt%00"):
        r = client.get(f"/api/v1/jobs/{job_id}/checkpoints/{name}", headers=alice)
        if r.status_code == 308:  # "//etc/passwd": werkzeug merges the slashes, then we judge it
            r = client.get(r.headers["Location"], headers=alice)
        assert r.status_code in (400, 404), (name, r.status_code)
        assert b"secret" not in r.data and r.json["message"]


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["model", "data", "optim", "name", "queue", "priority", "after", "init_from", "config",
                         "overrides", "arch", "lr", "epochs", "x"]) | st.text(max_size=8), children, max_size=5),
    max_leaves=20))
def test_random_bodies_never_500(client, alice, body):
    r = client.post("/api/v1/jobs", json=body, headers=alice)
    assert r.status_code in (202, 400, 409, 413, 415), (body, r.status_code, r.get_data(as_text=True))
    assert r.json["code" if r.status_code != 202 else "id"]


def test_api_never_imports_torch(tmp_path):
    """In a fresh interpreter (pytest itself may have imported torch for other tests)."""
    script = f"""
import sys
from api import create_app
from common.settings import Settings
from tests.support.api import mint
from worker.training.synthetic import SyntheticSpec, make_dataset  # PIL and numpy only
make_dataset(__import__("pathlib").Path("{tmp_path}/data/synthetic"), SyntheticSpec(num_classes=4, train_per_class=1, val_per_class=1))
app = create_app({{"TEACHER_SETTINGS": Settings(database_url="sqlite:///{tmp_path}/t.db", jobs_root=__import__("pathlib").Path("{tmp_path}/jobs"),
                                             data_root=__import__("pathlib").Path("{tmp_path}/data")),
                  "TEACHER_ENQUEUE": lambda *a: None}})
c = app.test_client()
h = mint(app, "alice")
job = c.post("/api/v1/jobs", json={CFG!r}, headers=h).json["id"]
for path in ("/api/v1/jobs", "/api/v1/jobs/" + job, "/api/v1/jobs/" + job + "/logs", "/api/v1/jobs/" + job + "/metrics",
             "/api/v1/jobs/" + job + "/checkpoints", "/api/v1/jobs/" + job[:8], "/api/v1/jobs/" + job + "/export",
             "/api/v1/jobs/" + job + "/export/model.pt", "/metrics", "/api/v1/openapi.json", "/api/v1/health"):
    assert c.get(path, headers=h).status_code < 500, path
assert c.delete("/api/v1/jobs/" + job, headers=h).status_code == 409  # queued
import worker.supervisor, worker.reconciler, worker.tasks  # the worker's parent process too
print("TORCH" if "torch" in sys.modules else "NO-TORCH")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout + out.stderr


def test_prometheus_metrics(client, alice):
    client.post("/api/v1/jobs", json=CFG, headers=alice)
    text = client.get("/metrics", headers=alice).get_data(as_text=True)
    assert 'teacher_jobs{status="queued"} 1.0' in text and "teacher_job_duration_seconds_bucket" in text
