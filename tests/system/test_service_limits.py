"""Per-token rate limits (fixed windows in Redis) and the per-user cap on queued jobs: 429 with
Retry-After and the API's error shape, nothing stored or enqueued when refused, fail-open while
Redis is unreachable, clear startup errors for bad settings, and 429 in the OpenAPI document.

Tests that need a real redis-server (the session's `redis_server`) or start processes are
marked slow; the rest run in-process with the fake broker."""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import closing
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import func, select

from common.settings import RateLimit, Settings, parse_rate_limit
from api.limits import (
    KEY_PREFIX,
    PENDING_STATUSES,
    QUEUED_CAP_RETRY_AFTER_S,
    RateLimiter,
    retry_after_s,
)
from common.store import Job, JobStatus, Token
from tests.support.api import FakeBroker, mint
from tests.support.procs import wait_until
from tests.support.stack import Stack
from tests.support.training import ROOT
from tests.support.openapi_check import check_response
from tests.support.api import CFG, set_status

REDIS_DB = 15  # a database of the session's redis-server that no stack uses (they use 1..14)
OFF = dict(rate_limit=None, submit_rate_limit=None, max_queued_per_user=0)


# ---------------------------------------------------------------------------------- helpers
@pytest.fixture
def make_app(settings: Settings) -> Iterator[Callable[..., Any]]:
    """An in-process app from the `settings` fixture with some fields replaced."""
    apps: list[Any] = []

    def factory(broker: FakeBroker | None = None, **changes: Any) -> Any:
        from api import create_app

        s = dataclasses.replace(settings, **changes)
        app = create_app({"TEACHER_SETTINGS": s, "TEACHER_ENQUEUE": broker or FakeBroker(), "TESTING": True})
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["teacher"].engine.dispose()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    import redis

    url = redis_server.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    client = redis.Redis.from_url(url)

    def clear() -> None:  # only the limiter's keys: other tests may share this database
        for key in client.scan_iter(f"{KEY_PREFIX}:*"):
            client.delete(key)

    clear()
    yield url
    clear()
    client.close()


class Caller:
    """A test client whose every /api/v1 response is checked against the app's OpenAPI document."""

    def __init__(self, app: Any):
        self.client = app.test_client()
        self.doc = self.client.get("/api/v1/openapi.json").json

    def __call__(self, method: str, path: str, **kw: Any) -> Any:
        r = getattr(self.client, method)(path, **kw)
        check_response(self.doc, method, path, r.status_code, r.content_type or "", r.get_json(silent=True))
        return r


def assert_429(r: Any, *, max_retry_after: int, message: str) -> int:
    """A 429 in the API's error shape with an integer Retry-After in [1, max_retry_after]."""
    assert r.status_code == 429, (r.status_code, r.get_json(silent=True))
    body = r.get_json()
    assert body["code"] == 429 and body["errors"] == {} and message in body["message"], body
    retry_after = r.headers["Retry-After"]
    assert retry_after.isdigit(), retry_after
    assert 1 <= int(retry_after) <= max_retry_after, retry_after
    return int(retry_after)


def job_count(app: Any, user: str | None = None) -> int:
    from common.store import User

    with app.extensions["teacher"].sessions() as s:
        stmt = select(func.count()).select_from(Job)
        if user is not None:
            stmt = stmt.join(User, User.id == Job.user_id).where(User.name == user)
        return int(s.scalar(stmt) or 0)


def token_id_of(app: Any, headers: dict[str, str]) -> int:
    from common.auth import hash_token

    secret = headers["Authorization"].split()[1]
    with app.extensions["teacher"].sessions() as s:
        return int(s.scalar(select(Token.id).where(Token.token_hash == hash_token(secret))))


# ------------------------------------------------------------------------------- settings
def test_limit_settings_parse_default_and_disable():
    s = Settings.from_env({})
    assert (s.rate_limit, s.submit_rate_limit, s.max_queued_per_user) == (RateLimit(600, 60), RateLimit(60, 60), 100)
    s = Settings.from_env({"TEACHER_RATE_LIMIT": " 5/2 ", "TEACHER_SUBMIT_RATE_LIMIT": "1/3600",
                           "TEACHER_MAX_QUEUED_PER_USER": "7"})
    assert (s.rate_limit, s.submit_rate_limit, s.max_queued_per_user) == (RateLimit(5, 2), RateLimit(1, 3600), 7)
    for off in ("0", "off", "OFF"):
        s = Settings.from_env({"TEACHER_RATE_LIMIT": off, "TEACHER_SUBMIT_RATE_LIMIT": off,
                               "TEACHER_MAX_QUEUED_PER_USER": off})
        assert (s.rate_limit, s.submit_rate_limit, s.max_queued_per_user) == (None, None, 0)
    hash(s)  # Settings stay hashable (the worker keys its Celery apps by them)


@pytest.mark.parametrize("name,value", [
    ("TEACHER_RATE_LIMIT", "600"), ("TEACHER_RATE_LIMIT", "fast"), ("TEACHER_RATE_LIMIT", "10/0"),
    ("TEACHER_RATE_LIMIT", "0/60"), ("TEACHER_RATE_LIMIT", "-5/60"), ("TEACHER_RATE_LIMIT", "5/1.5"),
    ("TEACHER_SUBMIT_RATE_LIMIT", "60/"), ("TEACHER_SUBMIT_RATE_LIMIT", "1/2/3"),
    ("TEACHER_MAX_QUEUED_PER_USER", "-1"), ("TEACHER_MAX_QUEUED_PER_USER", "many"),
    ("TEACHER_MAX_QUEUED_PER_USER", "2.5"),
])
def test_bad_limit_values_are_rejected_naming_the_variable(name, value):
    with pytest.raises(ValueError) as info:
        Settings.from_env({name: value})
    assert name in str(info.value) and repr(value) in str(info.value)
    if "RATE" in name:
        with pytest.raises(ValueError, match=name):
            parse_rate_limit(name, value)


@pytest.mark.slow
def test_the_api_does_not_start_with_a_bad_limit(tmp_path):
    """What gunicorn runs ("api:create_app()"), in a fresh process: it stops with the variable's
    name in the error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    env.update(TEACHER_DATABASE_URL=f"sqlite:///{tmp_path / 'teacher.db'}", TEACHER_JOBS_ROOT=str(tmp_path / "jobs"),
               TEACHER_RATE_LIMIT="lots")
    proc = subprocess.run([sys.executable, "-c", "from api import create_app; create_app()"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "TEACHER_RATE_LIMIT must be '<requests>/<seconds>'" in proc.stderr and "'lots'" in proc.stderr, proc.stderr
    assert not (tmp_path / "teacher.db").exists()  # stopped before touching the store


# ------------------------------------------------------------------------ window arithmetic
@pytest.mark.parametrize("pttl_ms,window,expected", [
    (60_000, 60, 60), (59_001, 60, 60), (59_000, 60, 59), (1_500, 2, 2), (1_000, 2, 1), (999, 2, 1),
    (1, 60, 1), (0, 60, 1),
    (-1, 60, 60),  # no TTL (never left so by the limiter): a whole window
    (-2, 60, 1),   # the key expired between INCR and PTTL: the window is free already
])
def test_retry_after_is_whole_seconds_until_the_window_frees(pttl_ms, window, expected):
    assert retry_after_s(pttl_ms, window) == expected


class FailingRedis:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        raise ConnectionError("Redis is down")


def test_limiter_fails_open_and_backs_off(caplog):
    now = [100.0]
    client = FailingRedis()
    limiter = RateLimiter(client, backoff_s=5.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="api.limits"):
        assert limiter.hit("api", 1, RateLimit(1, 60)) is None  # allowed, not counted
        assert limiter.backing_off and client.calls == 1
        for _ in range(50):  # while backing off Redis is not asked at all
            assert limiter.hit("api", 1, RateLimit(1, 60)) is None
        assert client.calls == 1
        now[0] += 5.01
        assert not limiter.backing_off
        assert limiter.hit("api", 1, RateLimit(1, 60)) is None
        assert client.calls == 2 and limiter.backing_off
    warnings = [r for r in caplog.records if "rate limits are not enforced" in r.getMessage()]
    assert len(warnings) == 2 and "Redis is down" in warnings[0].getMessage()  # one per outage period


# ------------------------------------------------------------------------------- OpenAPI
def test_every_authenticated_operation_documents_429_with_retry_after(client):
    doc = client.get("/api/v1/openapi.json").json
    component = doc["components"]["responses"]["TOO_MANY_REQUESTS"]
    assert component["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 1}
    assert component["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    operations = [(path, method, op) for path, ops in doc["paths"].items() for method, op in ops.items()
                  if method in ("get", "post", "put", "patch", "delete")]
    assert len(operations) >= 14
    for path, method, op in operations:
        if path == "/api/v1/health":
            assert "429" not in op["responses"], "public endpoints are not rate-limited"
        else:
            assert op["responses"].get("429") == {"$ref": "#/components/responses/TOO_MANY_REQUESTS"}, (method, path)


# ----------------------------------------------------------------------- queued-jobs cap
def test_queued_cap_refuses_with_429_and_stores_nothing(make_app):
    broker = FakeBroker()
    app = make_app(broker, **{**OFF, "max_queued_per_user": 3})
    call = Caller(app)
    alice, bob = mint(app, "alice"), mint(app, "bob")

    def post(headers: dict[str, str], body: dict[str, Any] = CFG, key: str | None = None) -> Any:
        extra = {"Idempotency-Key": key} if key else {}
        return call("post", "/api/v1/jobs", json=body, headers={**headers, **extra})

    first = post(alice).json
    assert post(alice, {**CFG, "after": first["id"]}).json["status"] == "waiting"  # counts too
    third = post(alice, key="k3").json
    set_status(app, third["id"], JobStatus.interrupted)  # will resume: still counts
    assert len(broker.sent) == 2

    r = post(alice)
    assert_429(r, max_retry_after=QUEUED_CAP_RETRY_AFTER_S, message="user alice has 3 queued jobs (limit 3")
    assert r.headers["Retry-After"] == str(QUEUED_CAP_RETRY_AFTER_S)
    assert job_count(app) == 3 and len(broker.sent) == 2  # nothing stored, nothing enqueued
    assert_429(post(alice, key="new"), max_retry_after=30, message="queued jobs")
    with app.extensions["teacher"].sessions() as s:  # nor an idempotency key for a refused job
        from common.store import IdempotencyKey

        assert list(s.scalars(select(IdempotencyKey.key))) == ["k3"]
    # replaying an earlier request returns its job: not a new job, so not refused
    replay = post(alice, key="k3")
    assert replay.status_code == 202 and replay.json["id"] == third["id"] and replay.headers["Idempotent-Replayed"]
    # another user is not affected
    assert post(bob).status_code == 202

    # a running job no longer counts
    set_status(app, third["id"], JobStatus.running)
    started = post(alice)
    assert started.status_code == 202 and started.json["status"] == "queued"
    assert_429(post(alice), max_retry_after=30, message="has 3 queued jobs")
    # cancelling a queued job frees a place (its waiting dependent fails with it: two places)
    assert call("post", f"/api/v1/jobs/{first['id']}/cancel", headers=alice).json["status"] == "cancelled"
    assert post(alice).status_code == 202
    assert post(alice).status_code == 202
    assert_429(post(alice), max_retry_after=30, message="has 3 queued jobs")
    assert job_count(app, "alice") == 6 and job_count(app, "bob") == 1
    with app.extensions["teacher"].sessions() as s:
        pending = s.scalar(select(func.count()).select_from(Job).where(Job.status.in_(PENDING_STATUSES),
                                                                      Job.user.has(name="alice")))
    assert pending == 3


def test_queued_cap_off_and_not_tripped_by_default(make_app):
    app = make_app(FakeBroker(), max_queued_per_user=0)
    call = Caller(app)
    alice = mint(app, "alice")
    assert all(call("post", "/api/v1/jobs", json=CFG, headers=alice).status_code == 202 for _ in range(4))
    app = make_app(FakeBroker())  # the defaults: 100 pending jobs
    assert app.extensions["teacher"].settings.max_queued_per_user == 100


def test_queued_cap_holds_under_concurrent_submissions_on_postgres(make_app, pg_database_url):
    broker = FakeBroker()
    app = make_app(broker, **{**OFF, "max_queued_per_user": 2}, database_url=pg_database_url)
    alice = mint(app, "alice")
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def post() -> None:
        c = app.test_client()
        barrier.wait()
        statuses.append(c.post("/api/v1/jobs", json=CFG, headers=alice).status_code)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(statuses) == [202, 202] + [429] * 6
    assert job_count(app) == 2 and len(broker.sent) == 2


# ------------------------------------------------------------------- Redis down: fail open
@pytest.fixture
def silent_redis() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) but never answers: every Redis
    command times out, the slow way for Redis to be down."""
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"redis://127.0.0.1:{s.getsockname()[1]}/0"


@pytest.mark.parametrize("down", ["refused", "silent"])
def test_rate_limits_fail_open_and_stay_fast_while_redis_is_down(make_app, settings, silent_redis, down, caplog):
    url = settings.redis_url if down == "refused" else silent_redis  # the fixture's URL: nothing listens
    app = make_app(FakeBroker(), redis_url=url, rate_limit=RateLimit(1, 60), submit_rate_limit=RateLimit(1, 60))
    call = Caller(app)
    alice = mint(app, "alice")
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="api.limits"):
        assert call("post", "/api/v1/jobs", json=CFG, headers=alice).status_code == 202
        assert call("post", "/api/v1/jobs", json=CFG, headers=alice).status_code == 202
        for _ in range(20):
            assert call("get", "/api/v1/jobs", headers=alice).status_code == 200
    elapsed = time.monotonic() - t0
    # Without the back-off each request would wait for Redis (0.5 s each when it is silent).
    assert elapsed < 5, elapsed
    assert app.extensions["teacher"].limiter.backing_off
    assert sum("rate limits are not enforced" in r.getMessage() for r in caplog.records) == 1


# ------------------------------------------------------------------ real Redis, in-process
@pytest.mark.slow
def test_rate_limit_per_token_window_and_recovery(make_app, redis_url):
    import redis

    app = make_app(FakeBroker(), redis_url=redis_url, rate_limit=RateLimit(5, 4), submit_rate_limit=None)
    call = Caller(app)
    alice, alice2, bob = mint(app, "alice"), mint(app, "alice"), mint(app, "bob")

    statuses = [call("get", "/api/v1/jobs", headers=alice).status_code for _ in range(5)]
    assert statuses == [200] * 5
    r = call("get", "/api/v1/jobs", headers=alice)
    retry_after = assert_429(r, max_retry_after=4, message="at most 5 requests per 4 s")
    assert_429(call("post", "/api/v1/jobs", json=CFG, headers=alice), max_retry_after=4, message="rate limit")
    assert job_count(app) == 0
    # per token: bob, and alice's other token, have their own windows; public endpoints no limit
    assert call("get", "/api/v1/jobs", headers=bob).status_code == 200
    assert call("get", "/api/v1/jobs", headers=alice2).status_code == 200
    assert call("get", "/api/v1/health").status_code in (200, 503)

    # the counters live in Redis under the token's id, never the token itself
    client = redis.Redis.from_url(redis_url)
    keys = sorted(k.decode() for k in client.scan_iter(f"{KEY_PREFIX}:*"))
    ids = sorted(token_id_of(app, h) for h in (alice, alice2, bob))
    assert keys == sorted(f"{KEY_PREFIX}:api:{i}" for i in ids)
    secrets = [h["Authorization"].split()[1] for h in (alice, alice2, bob)]
    assert not any(secret in key for key in keys for secret in secrets)
    assert int(client.get(f"{KEY_PREFIX}:api:{token_id_of(app, alice)}")) == 7
    assert 0 < client.pttl(f"{KEY_PREFIX}:api:{token_id_of(app, alice)}") <= 4000

    # once the window has passed, alice is served again (refusals do not extend the window)
    t0 = time.monotonic()
    wait_until(lambda: call("get", "/api/v1/jobs", headers=alice).status_code == 200, retry_after + 5,
               "alice's window to free up", interval=0.25)
    assert time.monotonic() - t0 <= retry_after + 1


@pytest.mark.slow
def test_submit_rate_limit_refuses_without_storing_or_enqueueing(make_app, redis_url):
    broker = FakeBroker()
    app = make_app(broker, redis_url=redis_url, rate_limit=RateLimit(1000, 60), submit_rate_limit=RateLimit(2, 60),
                   max_queued_per_user=0)
    call = Caller(app)
    alice, alice2 = mint(app, "alice"), mint(app, "alice")
    assert [call("post", "/api/v1/jobs", json=CFG, headers=alice).status_code for _ in range(2)] == [202, 202]
    r = call("post", "/api/v1/jobs", json=CFG, headers={**alice, "Idempotency-Key": "x"})
    assert_429(r, max_retry_after=60, message="at most 2 job submissions per 60 s")
    assert job_count(app) == 2 and len(broker.sent) == 2
    # the other endpoints use only the general limit
    assert call("get", "/api/v1/jobs", headers=alice).status_code == 200
    assert call("post", f"/api/v1/jobs/{broker.sent[0][0]}/cancel", headers=alice).status_code == 202
    # the limit is per token
    assert call("post", "/api/v1/jobs", json=CFG, headers=alice2).status_code == 202
    assert job_count(app) == 3 and len(broker.sent) == 3


@pytest.mark.slow
def test_a_counter_without_ttl_gets_one_instead_of_blocking_for_good(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.set(f"{KEY_PREFIX}:api:42", 1000)  # e.g. left by a manual INCR: no TTL
    limiter = RateLimiter(lambda: client)
    hit = limiter.hit("api", 42, RateLimit(5, 30))
    assert hit is not None and not hit.allowed and hit.count == 1001 and hit.retry_after == 30
    assert 0 < client.pttl(f"{KEY_PREFIX}:api:42") <= 30_000
    fresh = limiter.hit("api", 43, RateLimit(5, 30))
    assert fresh is not None and fresh.allowed and fresh.count == 1 and fresh.retry_after == 30


# ------------------------------------------------------------------------ real gunicorn stack
def broker_messages(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    return sum(int(client.llen(k)) for k in client.scan_iter() if client.type(k) == b"list")


@pytest.mark.slow
def test_stack_rate_limit_and_queued_cap(stack_factory):
    """gunicorn (8 threads), the Celery broker in Redis, no worker (jobs stay queued): every
    response is checked against the served OpenAPI document by Stack."""
    stack: Stack = stack_factory(TEACHER_RATE_LIMIT="5/3", TEACHER_SUBMIT_RATE_LIMIT="off",
                                 TEACHER_MAX_QUEUED_PER_USER="2")
    stack.start_api()
    owner, reader = stack.token("alice"), stack.token("alice")

    # queued cap (owner's token: 5 requests at most, under its rate limit in any window)
    ids = [stack.post("/api/v1/jobs", json=CFG, headers=owner).json()["id"] for _ in range(2)]
    wait_until(lambda: broker_messages(stack.settings.redis_url) == 2, 30, "two messages on the broker")
    r = stack.post("/api/v1/jobs", json=CFG, headers=owner)
    assert r.status_code == 429 and r.headers["Retry-After"] == str(QUEUED_CAP_RETRY_AFTER_S), r.text
    assert r.json()["message"].startswith("user alice has 2 queued jobs (limit 2")
    from worker.store import sessions_for

    with sessions_for(stack.settings.database_url)() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 2
    assert broker_messages(stack.settings.redis_url) == 2
    assert stack.post(f"/api/v1/jobs/{ids[0]}/cancel", headers=owner).json()["status"] == "cancelled"
    assert stack.post("/api/v1/jobs", json=CFG, headers=owner).status_code == 202

    # rate limit, on another token of the same user
    stack.headers = reader
    assert [stack.get("/api/v1/jobs").status_code for _ in range(5)] == [200] * 5
    r = stack.get("/api/v1/jobs")
    assert r.status_code == 429, r.text
    retry_after = int(r.headers["Retry-After"])
    assert 1 <= retry_after <= 3 and r.json()["code"] == 429
    wait_until(lambda: stack.get("/api/v1/jobs").status_code == 200, retry_after + 10, "the window to pass",
               interval=0.25)
