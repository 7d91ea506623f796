"""Benchmark (issue 13): the dashboard's server time with 1,000 jobs in the store (SQLite, the
WSGI app called in process, no network): the jobs list page, its polled rows (200 and 304), a
name filter, and a job page's live view answered 304. The bar: the list renders in < 300 ms; a
poll of an unchanged job is one cheap conditional request, not a re-render.

    python -m bench.ui_pages [--jobs 1000] [--reps 15]

Writes bench/results/ui_pages.json (medians and maxima in ms) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import select

from api import create_app
from common.settings import Settings
from common.store import User, transaction
from common.store.jobs import create_job
from tests.support.api import CFG, mint
from tests.support.ui import csrf_of
from worker.training.synthetic import SyntheticSpec, make_dataset

RESULTS = Path(__file__).resolve().parent / "results"


def timed(call: Callable[[], Any], reps: int, status: int) -> dict[str, float]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        r = call()
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == status, (r.status_code, status)
    return {"median_ms": statistics.median(times), "max_ms": max(times)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    make_dataset(base / "data" / "synthetic", SyntheticSpec(num_classes=4, train_per_class=1, val_per_class=1))
    settings = Settings(database_url=f"sqlite:///{base}/t.db", jobs_root=base / "jobs", data_root=base / "data",
                        state_root=base / "state")
    app = create_app({"TEACHER_SETTINGS": settings, "TEACHER_ENQUEUE": lambda *a: None})
    header = mint(app, "alice")
    svc = app.extensions["teacher"]
    with transaction(svc.sessions) as s:
        user = s.scalar(select(User).where(User.name == "alice"))
        for i in range(args.jobs):
            job = create_job(s, user=user, config=dict(CFG, name=f"job-{i}"), name=f"job-{i}", queue="default",
                             priority=5, max_attempts=3, after_id=None, init_from=None, idempotency=None)
            job.progress = {"status": "running", "epoch": 2, "epochs": 6, "percent": 33.3, "eta_s": 120.0,
                            "latest": {"val.top1": 50.0},
                            "integrity": {"verdict": "warn", "failed": [], "warnings": ["x"]}}
    c = app.test_client()
    page = c.get("/ui/signin")
    c.post("/ui/signin", data={"token": header["Authorization"].split()[1], "csrf_token": csrf_of(page.text)})
    out: dict[str, Any] = {"jobs": args.jobs, "reps": args.reps, "pages": {}}
    for path in ("/ui/jobs", "/ui/jobs/rows", "/ui/jobs?name=job-99", "/ui/jobs?name=nomatch"):
        out["pages"][path] = timed(lambda: c.get(path), args.reps, 200)
    etag = c.get("/ui/jobs/rows").headers["ETag"]
    out["pages"]["/ui/jobs/rows (304)"] = timed(lambda: c.get("/ui/jobs/rows", headers={"If-None-Match": etag}),
                                                args.reps, 304)
    job_id = c.get("/ui/jobs").text.split('data-job="')[1].split('"')[0]
    live = f"/ui/jobs/{job_id}/live.json"
    etag = c.get(live).headers["ETag"]
    out["pages"]["/ui/jobs/<id>/live.json (304)"] = timed(lambda: c.get(live, headers={"If-None-Match": etag}),
                                                          2 * args.reps, 304)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ui_pages.json").write_text(json.dumps(out, indent=2))
    print(f"| page ({args.jobs} jobs, SQLite, in process) | median ms | max ms |\n|---|---|---|")
    for path, t in out["pages"].items():
        print(f"| `{path}` | {t['median_ms']:.1f} | {t['max_ms']:.1f} |")


if __name__ == "__main__":
    main()
