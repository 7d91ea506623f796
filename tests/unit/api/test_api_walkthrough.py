"""What a newcomer's walk-through of the API found (issue 9), in-process (Flask test client, fake
broker, files on disk): job-id prefixes, strict integers, submit-time dataset checks without
server paths in errors, reports of jobs that ended without metrics, upload form fields and
names, /metrics scoping, SSE ids and resume, DELETE and the export endpoints."""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from common.store import JobStatus
from common.store.jobs import JobPaths
from tests.support.api import CFG, set_status, submit


@pytest.fixture
def fixed_ids(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Job ids handed out in this order (so that tests can make prefixes collide)."""
    import common.store.jobs as store_jobs

    queue: list[str] = []
    real = store_jobs.new_job_id
    monkeypatch.setattr(store_jobs, "new_job_id", lambda: queue.pop(0) if queue else real())
    return queue


def error_text(r: Any) -> str:
    return r.get_data(as_text=True)


# ------------------------------------------------------------------------ §2.2 id prefixes
def test_a_unique_prefix_names_a_job_everywhere(call, alice, finished_job_files):
    job_id = finished_job_files
    short = job_id[:12]  # what the CLI prints
    assert call("get", f"/api/v1/jobs/{short}", headers=alice).json["id"] == job_id
    assert call("get", f"/api/v1/jobs/{job_id[:6].upper()}", headers=alice).json["id"] == job_id
    for tail in ("logs", "metrics", "checkpoints", "report", "plots"):
        r = call("get", f"/api/v1/jobs/{short}/{tail}", headers=alice)
        assert r.status_code == 200, (tail, r.json)
    assert call("get", f"/api/v1/jobs/{short}/plots", headers=alice).json["plots"][0]["url"].startswith(f"/api/v1/jobs/{job_id}/")
    r = call("get", f"/api/v1/jobs/{short}/checkpoints/best", headers=alice)
    assert r.status_code == 200 and r.headers["Content-Disposition"].endswith(f"{job_id}-best.pt")
    # a dependent job may name it by prefix too; the stored reference is the full id
    r = submit(call, alice, {**CFG, "after": short, "init_from": {"job": job_id[:8], "checkpoint": "best"}})
    assert r.status_code == 202, r.json
    assert r.json["after"] == job_id and r.json["init_from"]["job"] == job_id
    assert r.json["config"]["init_from"] == f"{job_id}/run/checkpoints/best.pt"


def test_short_and_ambiguous_prefixes_are_400_listing_the_matches(call, alice, bob, fixed_ids):
    fixed_ids += ["abcdef01" + "0" * 24, "abcdef02" + "0" * 24, "abcdef03" + "0" * 24]
    a1 = submit(call, alice).json["id"]
    a2 = submit(call, alice).json["id"]
    b1 = submit(call, bob).json["id"]
    assert (a1, a2, b1) == tuple(f"abcdef0{i}" + "0" * 24 for i in (1, 2, 3))
    r = call("get", "/api/v1/jobs/abcdef", headers=alice)
    assert r.status_code == 400 and "ambiguous" in r.json["message"]
    assert a1 in r.json["message"] and a2 in r.json["message"] and "job_id" in r.json["errors"]
    assert b1 not in error_text(r)  # bob's job is no candidate for alice
    r = call("post", "/api/v1/jobs/abcdef/cancel", headers=alice)
    assert r.status_code == 400 and call("get", f"/api/v1/jobs/{a1}", headers=alice).json["status"] == "queued"
    # for bob the same prefix is unique (his own job), and alice's prefixes do not resolve for him
    assert call("get", "/api/v1/jobs/abcdef", headers=bob).json["id"] == b1
    assert call("get", "/api/v1/jobs/abcdef01", headers=bob).status_code == 404
    r = call("get", "/api/v1/jobs/abcde", headers=alice)
    assert r.status_code == 400 and "at least 6" in r.json["message"]
    r = submit(call, alice, {**CFG, "after": "abcdef"})
    assert r.status_code == 400 and "after" in r.json["errors"] and a1 in r.json["errors"]["after"][0]
    r = submit(call, alice, {**CFG, "after": "abcde"})
    assert r.status_code == 400 and "after" in r.json["errors"]
    r = submit(call, bob, {**CFG, "init_from": {"job": "abcdef01"}})
    assert r.status_code == 404 and "init_from.job" in r.json["errors"]


# ------------------------------------------------------------------------ §2.3 strict integers
@pytest.mark.parametrize("body, field", [
    ({**CFG, "optim": {**CFG["optim"], "epochs": 2.5}}, "optim.epochs"),
    ({**CFG, "optim": {**CFG["optim"], "batch_size": 64.9}}, "optim.batch_size"),
    ({**CFG, "optim": {**CFG["optim"], "epochs": True}}, "optim.epochs"),
    ({**CFG, "priority": 5.5}, "priority"),
    ({"config": "demo", "overrides": {"optim.epochs": 2.5}}, "optim.epochs"),
])
def test_non_integers_are_400_not_truncated(call, alice, broker, body, field):
    r = submit(call, alice, body)
    assert r.status_code == 400 and field in r.json["errors"], r.json
    assert broker.sent == []


def test_yaml_booleans_are_not_integers(call, alice):
    text = yaml.safe_dump(CFG).replace("epochs: 1", "epochs: true")
    r = call("post", "/api/v1/jobs", data=text, content_type="application/yaml", headers=alice)
    assert r.status_code == 400 and list(r.json["errors"]) == ["optim.epochs"], r.json


# ------------------------------------------------------------------------ §5 named config, one bad key
def test_named_config_with_one_bad_service_key_reports_that_key_only(call, alice):
    r = submit(call, alice, {"config": "demo", "priority": 10})
    assert r.status_code == 400 and list(r.json["errors"]) == ["priority"], r.json
    r = submit(call, alice, {"config": "demo", "after": "xyz", "overrides": {"optim.lr": 0}})
    assert r.status_code == 400 and set(r.json["errors"]) == {"after", "optim.lr"}, r.json


# ------------------------------------------------------------------------ §3 checked at submit
def _copy_dataset(settings: Any, name: str) -> Path:
    target = settings.data_root / name
    shutil.copytree(settings.data_root / "synthetic", target)
    return target


def test_dataset_problems_are_400_at_submit_naming_the_field(call, alice, broker, settings, tmp_path):
    data_root = str(settings.data_root)
    csv_cfg = {**CFG, "data": {**CFG["data"], "format": "csv"}}

    def bad(body: dict[str, Any], field: str, fragment: str) -> None:
        r = submit(call, alice, body)
        assert r.status_code == 400 and field in r.json["errors"], (field, r.json)
        assert fragment in " ".join(r.json["errors"][field]), (fragment, r.json)
        assert data_root not in error_text(r) and str(settings.data_root.resolve()) not in error_text(r)
        assert str(tmp_path) not in error_text(r)

    bad({**CFG, "data": {**CFG["data"], "root": "nosuchdataset"}}, "data.root", "no dataset 'nosuchdataset'")
    bad({**CFG, "model": {"arch": "resnet18", "num_classes": 7}}, "model.num_classes", "has 4")
    bad({**CFG, "data": {**CFG["data"], "val_split": "test"}}, "data.val_split", "no split folder 'test'")
    bad({**csv_cfg, "data": {**csv_cfg["data"], "manifest": "nope.csv"}}, "data.manifest", "no manifest 'nope.csv'")
    bad({**csv_cfg, "model": {"arch": "resnet18", "num_classes": 3}}, "model.num_classes", "has 4")
    bad({**csv_cfg, "data": {**csv_cfg["data"], "filter": {"column": "country", "values": ["x"]}}},
        "data.filter.column", "no column 'country'")
    bad({**csv_cfg, "data": {**csv_cfg["data"], "filter": {"column": "region", "values": ["atlantis"]}}},
        "data.manifest", "no 'train' rows after the filter")

    mismatched = _copy_dataset(settings, "mismatched")
    shutil.rmtree(next((mismatched / "val").iterdir()))
    bad({**CFG, "data": {**CFG["data"], "root": "mismatched"}}, "data.root", "only in train")
    empty = _copy_dataset(settings, "empty")
    for f in next((empty / "train").iterdir()).iterdir():
        f.unlink()
    bad({**CFG, "data": {**CFG["data"], "root": "empty"}}, "data.root", "without images")
    (settings.data_root / "escape").symlink_to(tmp_path)
    bad({**CFG, "data": {**CFG["data"], "root": "escape"}}, "data.root", "leaves the data root")
    (tmp_path / "outside.csv").write_text("path,label,split\n")
    (mismatched / "link.csv").symlink_to(tmp_path / "outside.csv")
    bad({**csv_cfg, "data": {**csv_cfg["data"], "root": "mismatched", "manifest": "link.csv"}}, "data.manifest",
        "leaves the data root")
    assert broker.sent == []
    # the named configs and a good dataset still pass
    assert submit(call, alice, {"config": "teacher_regional", "init_from": {"job": submit(call, alice).json["id"]}}).status_code == 202


def test_init_from_a_finished_job_without_that_checkpoint_is_400(call, alice, app, settings):
    done = submit(call, alice).json["id"]
    set_status(app, done, JobStatus.succeeded)
    ckpts = JobPaths.of(settings.jobs_root, done).checkpoints
    ckpts.mkdir(parents=True)
    (ckpts / "last.pt").write_bytes(b"x")
    r = submit(call, alice, {**CFG, "init_from": {"job": done, "checkpoint": "best"}})
    assert r.status_code == 400 and "init_from.checkpoint" in r.json["errors"], r.json
    assert str(settings.jobs_root) not in error_text(r)
    assert submit(call, alice, {**CFG, "init_from": {"job": done, "checkpoint": "last"}}).status_code == 202


def test_no_error_body_shows_a_server_path(client, alice, finished_job_files, settings, tmp_path):
    """A checkpoint symlink escaping the job's folder is refused without naming the folder."""
    job_id = finished_job_files
    (JobPaths.of(settings.jobs_root, job_id).checkpoints / "escape.pt").symlink_to(tmp_path)
    r = client.get(f"/api/v1/jobs/{job_id}/checkpoints/escape.pt", headers=alice)
    assert r.status_code == 400 and r.json["errors"]
    assert str(tmp_path) not in error_text(r) and str(settings.jobs_root) not in error_text(r)


# ------------------------------------------------------------------------ §2.5 report of a dead job
def test_report_of_a_job_that_ended_without_metrics_is_410_with_the_reason(call, alice, app):
    job_id = submit(call, alice).json["id"]
    set_status(app, job_id, JobStatus.running)
    assert call("get", f"/api/v1/jobs/{job_id}/report", headers=alice).status_code == 409  # may still come
    set_status(app, job_id, JobStatus.failed, failure_reason="training exited with code 2: data.root: bad")
    for path in (f"/api/v1/jobs/{job_id}/report", f"/api/v1/jobs/{job_id}/plots", f"/api/v1/jobs/{job_id}/plots/loss.png"):
        r = call("get", path, headers=alice)
        assert r.status_code == 410, (path, r.status_code)
        assert "ended failed without metrics" in r.json["message"] and "exited with code 2" in r.json["message"]
        assert "try again" not in r.json["message"]


# ------------------------------------------------------------------------ §2.4, §5 uploads
def upload(call, headers, data):  # type: ignore[no-untyped-def]
    return call("post", "/api/v1/analyses", data=data, headers=headers, content_type="multipart/form-data")


CUSTOM_LOG = "".join(f"[ep {e}] trn_loss {2.0 / e:.4f} | vl_loss {2.1 / e:.4f}\n" for e in range(1, 6))
CUSTOM_PATTERN = r"^\[ep (?P<epoch>\d+)\] trn_loss (?P<train_loss>[\d.]+) \| vl_loss (?P<val_loss>[\d.]+)"


def test_upload_pattern_field_reads_a_custom_log(call, alice):
    r = upload(call, alice, {"files": [(io.BytesIO(CUSTOM_LOG.encode()), "mine.log")]})
    assert r.status_code == 400 and "--pattern" not in r.json["message"]
    assert "`pattern` form field" in r.json["message"], r.json
    r = upload(call, alice, {"files": [(io.BytesIO(CUSTOM_LOG.encode()), "mine.log")], "pattern": CUSTOM_PATTERN,
                             "num_classes": "10"})
    assert r.status_code == 201, r.json
    assert r.json["num_classes"] == 10 and {"train.loss", "val.loss"} <= set(r.json["report"]["sources"][0]["metrics"])
    r = upload(call, alice, {"files": [(io.BytesIO(b'{"loss": [1, 0.5]}'), "h.json")], "pattern": "(unclosed"})
    assert r.status_code == 400 and "pattern" in r.json["errors"], r.json


def test_upload_unknown_form_fields_are_400_naming_them(call, alice):
    r = upload(call, alice, {"files": [(io.BytesIO(CUSTOM_LOG.encode()), "mine.log")], "patern": CUSTOM_PATTERN,
                             "numclasses": "3"})
    assert r.status_code == 400 and set(r.json["errors"]) == {"patern", "numclasses"}, r.json
    r = upload(call, alice, {"file": [(io.BytesIO(CUSTOM_LOG.encode()), "mine.log")]})
    assert r.status_code == 400 and "file" in r.json["errors"], r.json


def test_reports_and_legends_name_uploads_by_their_original_names(call, alice, monkeypatch):
    import common.analysis.plots as plots

    legends: list[str] = []
    real = plots.plot_epoch_metrics

    def spy(run, *args, **kwargs):  # type: ignore[no-untyped-def]
        legends.extend(series.source for source in run.sources for series in source.series.values())
        return real(run, *args, **kwargs)

    monkeypatch.setattr(plots, "plot_epoch_metrics", spy)
    history = {"train_loss": [0.0] * 4, "val_loss": [9.5393] * 4}
    log = "".join(f"Epoch {e} [Train]: loss={9.0 - e:.4f}, top1=1.00%\n" for e in range(1, 5))
    r = upload(call, alice, {"files": [(io.BytesIO(json.dumps(history).encode()), "../runs/my history.json"),
                                       (io.BytesIO(log.encode()), "console.log")], "num_classes": "9500"})
    assert r.status_code == 201, r.json
    report = r.json["report"]
    assert [s["name"] for s in report["sources"]] == ["my history.json", "console.log"]
    assert {s["path"] for s in report["sources"]} == {"upload_0.json", "upload_1.log"}  # stored names, not paths given
    sources = {c["source"] for c in report["checks"] if c.get("source")}
    assert sources and not any("upload_" in s for s in sources), sources
    assert legends and set(legends) <= {"my history.json", "console.log"}, legends


# ------------------------------------------------------------------------ §2.7 /metrics
def test_prometheus_metrics_are_scoped_to_the_token(client, alice, bob, admin):
    for _ in range(2):
        assert client.post("/api/v1/jobs", json=CFG, headers=alice).status_code == 202
    assert client.post("/api/v1/jobs", json=CFG, headers=bob).status_code == 202
    bob_text = client.get("/metrics", headers=bob).get_data(as_text=True)
    assert 'teacher_jobs{status="queued"} 1.0' in bob_text and "teacher_queue_depth" not in bob_text
    alice_text = client.get("/metrics", headers=alice).get_data(as_text=True)
    assert 'teacher_jobs{status="queued"} 2.0' in alice_text
    admin_text = client.get("/metrics", headers=admin).get_data(as_text=True)
    assert 'teacher_jobs{status="queued"} 3.0' in admin_text and "teacher_queue_depth" in admin_text


# ------------------------------------------------------------------------ §5 SSE ids and resume
def sse_events(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line.startswith(":"):
                key, _, value = line.partition(": ")
                fields[key] = value
        if fields:
            events.append(fields)
    return events


def test_sse_events_have_ids_and_last_event_id_resumes(client, alice, app, finished_job_files, settings):
    job_id = finished_job_files
    set_status(app, job_id, JobStatus.succeeded)
    log = JobPaths.of(settings.jobs_root, job_id).log
    url = f"/api/v1/jobs/{job_id}/logs?follow=true&tail=5"
    events = sse_events(client.get(url, headers=alice).get_data(as_text=True))
    lines = [e for e in events if "event" not in e]
    assert [e["data"] for e in lines] == ["line 46", "line 47", "line 48", "line 49", "partial"]
    assert all(re.fullmatch(r"\d+", e["id"]) for e in lines)
    data = log.read_bytes()
    assert int(lines[0]["id"]) == data.index(b"line 47")  # the offset just after its line
    assert int(lines[-1]["id"]) == len(data)
    assert events[-1] == {"event": "end", "data": "succeeded"}
    # a reconnect after "line 47" gets what followed it, not the whole tail (nor the whole log) again
    again = sse_events(client.get(url, headers={**alice, "Last-Event-ID": lines[1]["id"]}).get_data(as_text=True))
    assert [e["data"] for e in again if "event" not in e] == ["line 48", "line 49", "partial"]
    # from the very end: only the end event; an id that is not ours: the tail as on a first connect
    end = sse_events(client.get(url, headers={**alice, "Last-Event-ID": lines[-1]["id"]}).get_data(as_text=True))
    assert end == [{"event": "end", "data": "succeeded"}]
    other = sse_events(client.get(url, headers={**alice, "Last-Event-ID": "abc"}).get_data(as_text=True))
    assert [e["data"] for e in other if "event" not in e] == [e["data"] for e in lines]
    replaced = sse_events(client.get(url, headers={**alice, "Last-Event-ID": str(10**9)}).get_data(as_text=True))
    assert [e["data"] for e in replaced if "event" not in e] == [e["data"] for e in lines]


# ------------------------------------------------------------------------ §4 DELETE
@pytest.fixture
def finished_job_files(call, alice, settings) -> Iterator[str]:
    """A job with the files a worker leaves: a run with metrics, a checkpoint, a console log."""
    from common.analysis.synthetic import SyntheticRun, write_synthetic_run

    job_id = submit(call, alice).json["id"]
    paths = JobPaths.of(settings.jobs_root, job_id)
    write_synthetic_run(paths.run, SyntheticRun(epochs=2))
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    payload = b"weights" * 100
    (paths.checkpoints / "best.pt").write_bytes(payload)
    paths.manifest.write_text(json.dumps({"checkpoints": [
        {"name": "best.pt", "epoch": 2, "step": 4, "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}]}))
    paths.log.write_text("".join(f"line {i}\n" for i in range(50)) + "partial")
    yield job_id


def test_delete_a_finished_job(call, alice, bob, admin, app, settings, finished_job_files):
    job_id = finished_job_files
    root = JobPaths.of(settings.jobs_root, job_id).root
    for status in (JobStatus.running, JobStatus.queued, JobStatus.interrupted):
        set_status(app, job_id, status)
        r = call("delete", f"/api/v1/jobs/{job_id}", headers=alice)
        assert r.status_code == 409 and status.value in r.json["message"], status
    set_status(app, job_id, JobStatus.succeeded)
    waiting = submit(call, alice, {**CFG, "after": job_id}).json
    assert waiting["status"] == "queued"  # released at once: its after-job succeeded
    r = call("delete", f"/api/v1/jobs/{job_id}", headers=alice)
    assert r.status_code == 409 and waiting["id"] in r.json["message"]
    call("post", f"/api/v1/jobs/{waiting['id']}/cancel", headers=alice)
    assert call("delete", f"/api/v1/jobs/{job_id}", headers=bob).status_code == 404  # not bob's
    assert root.is_dir()
    r = call("delete", f"/api/v1/jobs/{job_id[:10]}", headers=alice)
    assert r.status_code == 204, r.get_data(as_text=True)
    assert not root.exists() and not list(settings.jobs_root.glob(f"*{job_id}*"))
    assert call("get", f"/api/v1/jobs/{job_id}", headers=alice).status_code == 404
    assert call("get", f"/api/v1/jobs/{job_id}", headers=admin).status_code == 404
    assert job_id not in {j["id"] for j in call("get", "/api/v1/jobs", headers=alice).json["jobs"]}
    assert call("delete", f"/api/v1/jobs/{job_id}", headers=alice).status_code == 404
    # a deleted job no longer counts for prefixes or metrics, and cannot be a dependency
    assert call("get", f"/api/v1/jobs/{job_id[:8]}", headers=alice).status_code == 404
    assert submit(call, alice, {**CFG, "after": job_id}).status_code == 404
    # an admin may delete anyone's finished job
    other = submit(call, bob).json["id"]
    set_status(app, other, JobStatus.failed)
    assert call("delete", f"/api/v1/jobs/{other}", headers=admin).status_code == 204
    assert call("get", f"/api/v1/jobs/{other}", headers=bob).status_code == 404


def test_idempotent_replay_of_a_deleted_job_is_409(call, alice, app):
    key = {"Idempotency-Key": "once"}
    job_id = submit(call, {**alice, **key}).json["id"]
    set_status(app, job_id, JobStatus.cancelled)
    assert call("delete", f"/api/v1/jobs/{job_id}", headers=alice).status_code == 204
    r = submit(call, {**alice, **key})
    assert r.status_code == 409 and "Idempotency-Key" in r.json["errors"]


# ------------------------------------------------------------------------ §4 export
def test_export_endpoints_serve_the_files_the_exporter_wrote(call, client, alice, app, settings, finished_job_files):
    job_id = finished_job_files
    assert call("get", f"/api/v1/jobs/{job_id}", headers=alice).json["links"]["export"] == f"/api/v1/jobs/{job_id}/export"
    set_status(app, job_id, JobStatus.running)
    r = call("get", f"/api/v1/jobs/{job_id}/export", headers=alice)
    assert r.status_code == 409 and "running" in r.json["message"]
    set_status(app, job_id, JobStatus.failed)
    for path in ("export", "export/model.pt"):
        r = call("get", f"/api/v1/jobs/{job_id}/{path}", headers=alice)
        assert r.status_code == 404 and "no export" in r.json["message"], path
    set_status(app, job_id, JobStatus.succeeded)
    export = JobPaths.of(settings.jobs_root, job_id).run / "export"
    export.mkdir()
    weights = b"\x80state-dict" * 1000
    meta = {"format": "teacher-export/1", "arch": "resnet18", "class_names": ["a", "b", "c", "d"],
            "sha256": hashlib.sha256(weights).hexdigest()}
    (export / "model.pt").write_bytes(weights)
    (export / "model.json").write_text(json.dumps(meta))
    r = call("get", f"/api/v1/jobs/{job_id[:8]}/export", headers=alice)
    assert r.status_code == 200 and r.mimetype == "application/json" and r.json == meta
    r = call("get", f"/api/v1/jobs/{job_id}/export/model.pt", headers=alice)
    assert r.status_code == 200 and r.data == weights and r.mimetype == "application/octet-stream"
    assert int(r.headers["Content-Length"]) == len(weights)
    assert r.headers["ETag"].strip('"') == meta["sha256"]
    assert r.headers["Content-Disposition"].endswith(f"{job_id}-model.pt")
    r = client.get(f"/api/v1/jobs/{job_id}/export/model.pt", headers={**alice, "If-None-Match": r.headers["ETag"]})
    assert r.status_code == 304
    r = client.get(f"/api/v1/jobs/{job_id}/export/model.pt", headers={**alice, "Range": "bytes=0-9"})
    assert r.status_code == 206 and r.data == weights[:10]


# ------------------------------------------------------------------------ review follow-ups
def test_an_idempotent_replay_returns_its_job_even_if_the_dataset_is_gone_now(call, alice, settings):
    key = {"Idempotency-Key": "replay-after-move"}
    first = submit(call, {**alice, **key})
    assert first.status_code == 202, first.json
    data = settings.data_root / CFG["data"]["root"]
    moved = data.with_name(data.name + "-moved")
    data.rename(moved)
    try:
        again = submit(call, {**alice, **key})
        assert again.status_code == 202 and again.json["id"] == first.json["id"], again.json
        assert again.headers.get("Idempotent-Replayed") == "true"
        fresh = submit(call, alice)  # a new job is still checked
        assert fresh.status_code == 400 and "data.root" in fresh.json["errors"]
    finally:
        moved.rename(data)


def test_failure_reasons_shown_to_clients_carry_no_server_path(call, alice, app, settings):
    job_id = submit(call, alice).json["id"]
    secret = f"split folder 'val' not found under {settings.data_root}/synthetic; see {settings.jobs_root}/{job_id}"
    set_status(app, job_id, JobStatus.failed, failure_reason=secret)
    body = call("get", f"/api/v1/jobs/{job_id}", headers=alice).json
    assert str(settings.data_root) not in body["failure_reason"] and str(settings.jobs_root) not in body["failure_reason"]
    assert "split folder 'val' not found under <the data root>/synthetic" in body["failure_reason"]
