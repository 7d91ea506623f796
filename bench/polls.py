"""Benchmark: the API's read path against its limit, and submit latency through the real stack.

For each store (SQLite file, PostgreSQL on 127.0.0.1:5432 when it answers):

- a store with 10,000 jobs of one user, one of them running, while a separate process writes its
  heartbeat (and the worker's liveness row) every second, as a training job's worker does;
- the service (``api:create_app()``) and the baseline (bench/minimal_app.py: hash the token, look
  it up, read the row, the same JSON) each under ``teacher serve``'s gunicorn settings
  (2 workers x 8 threads, gthread), both on that store;
- ``wrk -t2 -c16`` keep-alive clients on ``GET /api/v1/jobs/{id}`` (the status poll) and on
  ``GET /api/v1/jobs`` (a page of 50), alternating service/baseline (the order flips every
  repetition), several repetitions: median and spread of req/s and p99, and the ratio.

Then ``POST /api/v1/jobs`` -> the job ``running`` with an idle worker, through a real stack
(redis-server, gunicorn, a Celery worker; tests/support/stack.py): p50 over several jobs, each
cancelled before the next is sent.

Rate limits are off in the servers measured (TEACHER_RATE_LIMIT=off): the default 600 requests
per minute per token would answer 429 to a load generator within a second.

    python -m bench.polls [--reps 3] [--duration 5] [--stores sqlite,postgresql] [--no-submit]

Needs wrk (``apt-get install wrk``): without it this says so and exits 2 (a Python client on these
two cores would be the bottleneck, not the server). Writes bench/results/polls.json and prints a
markdown summary; docs/performance.md reads the figures.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench._load import (WRK_MISSING, Seeded, Server, create_pg_database, drop_pg_database, have_wrk, seed,
                         start_gunicorn, start_heartbeat, stop, wrk)

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"  # as tests/conftest.py
JOBS = 10_000
GOALS = {"job": {"ratio": 0.5, "p99_ms": 50.0}, "list": {"p99_ms": 100.0}, "submit": {"p50_s": 2.0}}
VARIANTS = ("service", "minimal")


def job_config() -> dict[str, Any]:
    from tests.support.training import TINY_CONFIG

    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["optim"]["epochs"] = 1
    return cfg


def server_env(base: Path, database_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TEACHER_FAULT", None)
    env.update(TEACHER_DATABASE_URL=database_url, TEACHER_RATE_LIMIT="off", TEACHER_SUBMIT_RATE_LIMIT="off",
               TEACHER_REDIS_URL="redis://127.0.0.1:9/0",  # never asked: no rate limits, no submit
               TEACHER_JOBS_ROOT=str(base / "jobs"), TEACHER_DATA_ROOT=str(base / "data"),
               TORCH_HOME=str(base / "torch"), TEACHER_STATE_ROOT=str(base / "state"))
    return env


def same_json(servers: dict[str, Server], path: str, headers: dict[str, str]) -> dict[str, list[str]]:
    """The baseline must answer what the service answers: the same values for the fields both
    return, and the fields only one returns listed (a field the service gained since the baseline
    was written makes the ratio flatter the service; one it lost flatters the baseline)."""
    ours, base = (requests.get(servers[v].url + path, headers=headers, timeout=10).json() for v in VARIANTS)
    job_ours = ours["jobs"][0] if "jobs" in ours else ours
    job_base = base["jobs"][0] if "jobs" in base else base
    moving = ("heartbeat_at", "updated_at", "progress", "integrity", "run_seconds")  # the heartbeat changes them
    differing = [k for k in job_base if k in job_ours and k not in moving and job_base[k] != job_ours[k]]
    if differing:
        raise AssertionError(f"baseline and service disagree on {differing} for {path}")
    return {"service_only_fields": sorted(set(job_ours) - set(job_base)),
            "baseline_only_fields": sorted(set(job_base) - set(job_ours))}


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def stats(variant: str, key: str) -> dict[str, float]:
        values = [r[key] for r in runs[variant]]
        return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}

    def ratio(key: str, invert: bool = False) -> dict[str, float]:
        pairs = [(m[key] / s[key]) if invert else (s[key] / m[key]) for s, m in zip(runs["service"], runs["minimal"])]
        return {"median": round(statistics.median(pairs), 3), "min": round(min(pairs), 3), "max": round(max(pairs), 3)}

    out: dict[str, Any] = {v: {"req_s": stats(v, "req_s"), "p50_ms": stats(v, "p50_ms"), "p99_ms": stats(v, "p99_ms"),
                               "cpu_ms_per_req": stats(v, "cpu_ms_per_req"), "runs": runs[v]} for v in VARIANTS}
    out["ratio_req_s"] = ratio("req_s")  # service / baseline, per adjacent pair
    out["ratio_cpu"] = ratio("cpu_ms_per_req", invert=True)  # baseline CPU / service CPU per request: 1 = as cheap
    return out


def bench_store(store: str, database_url: str, base: Path, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.monotonic()
    seeded: Seeded = seed(database_url, JOBS, job_config())
    headers = {"Authorization": f"Bearer {seeded.token}"}
    env = server_env(base, database_url)
    probe = f"/api/v1/jobs/{seeded.job_id}"
    beat = start_heartbeat(database_url, seeded.job_id)
    servers: dict[str, Server] = {}
    try:
        servers["service"] = start_gunicorn("service", "api:create_app()", env, base / f"{store}-service.log", probe, headers)
        servers["minimal"] = start_gunicorn("minimal", "bench.minimal_app:create_app()", env,
                                            base / f"{store}-minimal.log", probe, headers)
        scenarios = {"job": (probe, args.connections), "list": ("/api/v1/jobs?limit=50", args.list_connections)}
        scenarios = {k: v for k, v in scenarios.items() if k in args.scenarios.split(",")}
        result: dict[str, Any] = {"seconds_setup": round(time.monotonic() - t0, 1)}
        for name, (path, conns) in scenarios.items():
            extra = same_json(servers, path, headers)
            for v in VARIANTS:  # warm-up: imports, connection pools, statement caches
                wrk(servers[v].url + path, headers, connections=conns, duration_s=1)
            runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
            for rep in range(args.reps):
                for v in VARIANTS if rep % 2 == 0 else VARIANTS[::-1]:
                    r = wrk(servers[v].url + path, headers, connections=conns, duration_s=args.duration,
                            server_pid=servers[v].proc.pid)
                    if r.bad:
                        raise AssertionError(f"{store} {name} {v}: {r.bad} failed requests of {r.requests}")
                    runs[v].append(r.to_json())
            result[name] = {"path": path.replace(seeded.job_id, "{id}"), "connections": conns, **extra,
                            **summarize(runs)}
            print(f"  {store} {name}: service {result[name]['service']['req_s']['median']} req/s, baseline "
                  f"{result[name]['minimal']['req_s']['median']} req/s, ratio {result[name]['ratio_req_s']['median']}",
                  flush=True)
        assert beat.poll() is None, "the heartbeat writer died"
        return result
    finally:
        for server in servers.values():
            server.stop()
        stop(beat)


def bench_submit(base: Path, jobs: int) -> dict[str, Any]:
    """POST /jobs -> status running, worker idle, through redis-server + gunicorn + a Celery worker."""
    import subprocess

    import redis

    from tests.support.procs import free_port, stop_process, wait_until
    from tests.support.stack import make_stack
    from worker.training.synthetic import SyntheticSpec, make_dataset

    port = free_port()
    (base / "redis").mkdir()
    redis_proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir",
                                   str(base / "redis"), "--save", "", "--appendonly", "no"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    stack = None
    try:
        wait_until(redis.Redis(port=port).ping, 20, "redis-server")
        make_dataset(base / "data" / "synthetic", SyntheticSpec(num_classes=4, train_per_class=16, val_per_class=8))
        (base / "stack").mkdir()
        stack = make_stack(base / "stack", f"redis://127.0.0.1:{port}/0", base / "data",
                           f"sqlite:///{base / 'stack' / 'teacher.db'}", TEACHER_RATE_LIMIT="off",
                           TEACHER_SUBMIT_RATE_LIMIT="off")
        stack.start_api(workers=2, threads=8)
        stack.headers = stack.token("alice")
        stack.start_worker()
        cfg = job_config()
        latencies, accepted = [], []
        for _ in range(jobs):
            t0 = time.perf_counter()
            r = requests.post(stack.api_url + "/api/v1/jobs", json=cfg, headers=stack.headers, timeout=30)
            assert r.status_code == 202, r.text
            accepted.append(time.perf_counter() - t0)
            job_id = r.json()["id"]
            wait_until(lambda: stack.job(job_id)["status"] == "running", 60, "job running", interval=0.01)
            latencies.append(time.perf_counter() - t0)
            stack.post(f"/api/v1/jobs/{job_id}/cancel")
            wait_until(lambda: stack.job(job_id)["status"] == "cancelled", 120, "job cancelled", interval=0.2)
        return {"jobs": jobs, "p50_s": round(statistics.median(latencies), 3), "min_s": round(min(latencies), 3),
                "max_s": round(max(latencies), 3), "accepted_p50_s": round(statistics.median(accepted), 3),
                "running_s": [round(x, 3) for x in latencies]}
    finally:
        if stack is not None:
            stack.stop()
        stop_process(redis_proc)


def markdown(results: dict[str, Any]) -> str:
    lines = [f"## Status polls and submit latency ({results['date']}, {results['machine']})", "",
             "| store | request | clients | service req/s (min-max) | baseline req/s | ratio (min-max) | "
             "service p99 ms | baseline p99 ms | CPU ms/req service / baseline (ratio) | goal |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for store, res in results["stores"].items():
        if "skipped" in res:
            lines.append(f"| {store} | skipped: {res['skipped']} | | | | | | | | |")
            continue
        for name in ("job", "list"):
            if name not in res:
                continue
            r = res[name]
            goal = GOALS[name]
            met = r["service"]["p99_ms"]["median"] < goal["p99_ms"] and r["ratio_req_s"]["median"] >= goal.get("ratio", 0)
            lines.append(
                f"| {store} | GET {r['path']} | {r['connections']} | {r['service']['req_s']['median']} "
                f"({r['service']['req_s']['min']}-{r['service']['req_s']['max']}) | {r['minimal']['req_s']['median']} | "
                f"{r['ratio_req_s']['median']} ({r['ratio_req_s']['min']}-{r['ratio_req_s']['max']}) | "
                f"{r['service']['p99_ms']['median']} | {r['minimal']['p99_ms']['median']} | "
                f"{r['service']['cpu_ms_per_req']['median']} / {r['minimal']['cpu_ms_per_req']['median']} "
                f"({r['ratio_cpu']['median']}) | "
                f"{'met' if met else 'NOT met'}: " + ", ".join(f"{k} {v}" for k, v in goal.items()) + " |")
    if "submit" in results:
        s = results["submit"]
        lines += ["", f"POST /api/v1/jobs -> running (idle worker, {s['jobs']} jobs): p50 {s['p50_s']} s "
                      f"(min {s['min_s']}, max {s['max_s']}; the POST itself {s['accepted_p50_s']} s); goal p50 < "
                      f"{GOALS['submit']['p50_s']} s: {'met' if s['p50_s'] < GOALS['submit']['p50_s'] else 'NOT met'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of each wrk run")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--list-connections", type=int, default=4)
    ap.add_argument("--stores", default="sqlite,postgresql", help="sqlite, postgresql (none: only the submit part)")
    ap.add_argument("--scenarios", default="job,list", help="job (GET /jobs/{id}), list (GET /jobs)")
    ap.add_argument("--submit-jobs", type=int, default=6)
    ap.add_argument("--no-submit", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench/results/polls.json"))
    args = ap.parse_args(argv)
    if not have_wrk():
        print(WRK_MISSING, file=sys.stderr)
        return 2
    results: dict[str, Any] = {"date": dt.date.today().isoformat(), "machine": f"{os.cpu_count()} cores, "
                               f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
                               "jobs_in_store": JOBS, "reps": args.reps, "duration_s": args.duration, "stores": {}}
    with tempfile.TemporaryDirectory(prefix="teacher-polls-") as tmp:
        base = Path(tmp)
        for store in [name for name in args.stores.split(",") if name in ("sqlite", "postgresql")]:  # "none": skip
            store_base = base / store
            store_base.mkdir()
            if store == "sqlite":
                results["stores"][store] = bench_store(store, f"sqlite:///{store_base / 'teacher.db'}", store_base, args)
                continue
            try:
                url = create_pg_database(PG_SERVER)
            except Exception as exc:  # no server: say so, measure the rest
                results["stores"][store] = {"skipped": f"PostgreSQL at 127.0.0.1:5432 not usable ({type(exc).__name__})"}
                continue
            try:
                results["stores"][store] = bench_store(store, url, store_base, args)
            finally:
                drop_pg_database(url)
        if not args.no_submit:
            (base / "submit").mkdir()
            results["submit"] = bench_submit(base / "submit", args.submit_jobs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"\n(written to {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
