"""The status-poll benchmark's baseline (bench/minimal_app.py) answers what the service answers, so
that the ratio of the two measures the service's own layers; and the benchmark starts its servers
as `teacher serve` does."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from bench._load import SERVE_GUNICORN_ARGS, parse_wrk, progress
from bench.minimal_app import create_app as create_minimal_app
from common.store import JobStatus, lifecycle, transaction, utcnow
from common.store.jobs import lock_job
from tests.support.api import CFG, mint, set_status


def test_the_baseline_returns_the_services_json(client, app, alice):
    job_id = client.post("/api/v1/jobs", json=CFG, headers=alice).json["id"]
    other = client.post("/api/v1/jobs", json={**CFG, "name": "other"}, headers=alice).json["id"]
    with transaction(app.extensions["teacher"].sessions) as s:  # a claimed attempt: a timeline
        lifecycle.claim(lock_job(s, job_id), "host:1")
    set_status(app, job_id, JobStatus.running, heartbeat_at=utcnow(), progress=progress(42), run_seconds=12.34567)
    set_status(app, other, JobStatus.failed, finished_at=utcnow(), progress={**progress(7)}, exit_code=1)
    baseline = create_minimal_app(app.extensions["teacher"].settings.database_url).test_client()
    for job in (job_id, other):
        ours = client.get(f"/api/v1/jobs/{job}", headers=alice)
        theirs = baseline.get(f"/api/v1/jobs/{job}", headers=alice)
        assert ours.status_code == theirs.status_code == 200
        # the same values for every field both return (a field JobSchema gained since is reported
        # by bench/polls.py as one the baseline lacks)
        common = set(ours.json) & set(theirs.json)
        assert {k: theirs.json[k] for k in common} == {k: ours.json[k] for k in common} and len(common) >= 25
    assert theirs.json["progress"]["status"] == "failed"  # the service's rule for a record left at running
    ours, theirs = client.get("/api/v1/jobs", headers=alice), baseline.get("/api/v1/jobs", headers=alice)
    assert theirs.json["next_cursor"] == ours.json["next_cursor"]
    assert [{k: job[k] for k in mine if k in job} for job, mine in zip(ours.json["jobs"], theirs.json["jobs"])] == \
        [{k: mine[k] for k in mine if k in job} for job, mine in zip(ours.json["jobs"], theirs.json["jobs"])]
    assert len(theirs.json["jobs"]) == 2
    assert baseline.get(f"/api/v1/jobs/{job_id}", headers=mint(app, "bob")).status_code == 404
    assert baseline.get(f"/api/v1/jobs/{job_id}", headers={"Authorization": "Bearer tch_nope"}).status_code == 401


def test_the_benchmark_runs_gunicorn_as_teacher_serve_does():
    serve = (Path(__file__).resolve().parents[3] / "common" / "apps" / "serve.py").read_text()
    command = serve[serve.index('start("api"'):]
    flat = " ".join(re.findall(r'"([^"]*)"', command[:command.index("api:create_app()")]))
    for flag, value in zip(SERVE_GUNICORN_ARGS[::2], SERVE_GUNICORN_ARGS[1::2]):
        assert f"{flag} {value}" in flat, (flag, value, flat)


def test_wrk_output_is_parsed():
    out = """Running 3s test @ http://127.0.0.1:1/api/v1/jobs/x
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    18.21ms   12.02ms 205.13ms   90.21%
  Latency Distribution
     50%   15.90ms
     75%   20.01ms
     90%   27.43ms
     99%    1.02s
  2622 requests in 3.01s, 5.03MB read
  Non-2xx or 3xx responses: 3
Requests/sec:    871.63
Transfer/sec:      1.67MB
"""
    r = parse_wrk(out)
    assert dataclasses.astuple(r)[:6] == (871.63, 15.9, 27.43, 1020.0, 2622, 3)
