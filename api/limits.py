"""Request limits: per-token rate limits (counted in Redis) and a per-user cap on queued jobs.

Rate limits are fixed windows kept in Redis, so every API process (and host) shares them. One
key per (scope, token id) holds the count of the current window; it is created with the
window's TTL by the first request in it and counted up by the rest:

    MULTI; SET key 0 EX <seconds> NX; INCR key; PTTL key; EXEC

Once the count passes the limit the request is refused with 429 and ``Retry-After`` = the whole
seconds until the key expires (at least 1). Keys hold the token's database id, never the token.

If Redis is unreachable the limiter fails open: the request goes through, a warning is logged
once, and Redis is not asked again for ``BACKOFF_S`` seconds, so an outage costs at most one
short timeout per back-off period and never a 5xx.

The queued cap counts a user's jobs that are not running yet (queued, waiting, interrupted) in
the transaction that inserts the new job; on PostgreSQL a per-user advisory lock serialises
concurrent submissions, on SQLite every write transaction is already exclusive (``transaction()``: BEGIN IMMEDIATE).

Why this and not Flask-Limiter (compared, and kept on purpose): docs/architecture.md, "Rate limiting".
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from common.settings import RateLimit, Settings
from common.store import Job, JobStatus
from common.store.jobs import Principal

log = logging.getLogger(__name__)

KEY_PREFIX = "teacher:ratelimit"
BACKOFF_S = 5.0               # after a Redis failure, let requests through without asking Redis
REDIS_TIMEOUT_S = 0.5         # connect and command timeout of the limiter's Redis client
QUEUED_CAP_RETRY_AFTER_S = 30  # Retry-After of a refusal by the queued-jobs cap
# Jobs that wait for a worker (or for the job they depend on): they count against the cap.
PENDING_STATUSES = (JobStatus.queued.value, JobStatus.waiting.value, JobStatus.interrupted.value)
_ADVISORY_LOCK_NAMESPACE = 0x7463  # first key of pg_advisory_xact_lock(int, int); the second is the user id


class TooManyRequests(Exception):
    """A limit refused the request: answered 429 with ``Retry-After: retry_after``."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.message = message
        self.retry_after = max(1, int(retry_after))


class RateLimited(TooManyRequests):
    """A token made more requests in the window than its rate limit allows."""


class QueuedJobsCapReached(TooManyRequests):
    """A user already has ``max_queued_per_user`` jobs that are not running yet."""


def retry_after_s(pttl_ms: int, window_s: int) -> int:
    """Whole seconds until a window whose key has ``pttl_ms`` left frees up, at least 1.
    A key without a TTL (-1) or already gone (-2) counts as a full window / 1 s."""
    if pttl_ms == -1:
        return max(1, window_s)
    if pttl_ms < 0:
        return 1
    return max(1, math.ceil(pttl_ms / 1000))


@dataclass(frozen=True)
class Hit:
    allowed: bool
    count: int
    limit: RateLimit
    retry_after: int


class RateLimiter:
    """Fixed-window counters in Redis, failing open (with a back-off) when Redis is down."""

    def __init__(self, client: Callable[[], Any], *, backoff_s: float = BACKOFF_S,
                 clock: Callable[[], float] = time.monotonic):
        self._client = client
        self._backoff_s = backoff_s
        self._clock = clock
        self._down_until = 0.0
        self._lock = threading.Lock()

    @property
    def backing_off(self) -> bool:
        return self._clock() < self._down_until

    def hit(self, scope: str, ident: str | int, limit: RateLimit) -> Hit | None:
        """Count one request; None when Redis could not be asked (the request is allowed)."""
        if self.backing_off:
            return None
        key = f"{KEY_PREFIX}:{scope}:{ident}"
        try:
            pipe = self._client().pipeline(transaction=True)
            pipe.set(key, 0, ex=limit.seconds, nx=True)
            pipe.incr(key)
            pipe.pttl(key)
            _, count, pttl = pipe.execute()
            if int(pttl) == -1:  # a key left without a TTL (not by us) would block the token for good
                self._client().expire(key, limit.seconds)
        except Exception as exc:  # redis errors, timeouts, a bad URL: never fail the request
            self._failed(exc)
            return None
        count = int(count)
        return Hit(allowed=count <= limit.requests, count=count, limit=limit,
                   retry_after=retry_after_s(int(pttl), limit.seconds))

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            was_up = not self.backing_off
            self._down_until = self._clock() + self._backoff_s
        if was_up:
            log.warning("rate limits are not enforced: Redis is unreachable (%s: %s); retrying in %.0f s",
                        type(exc).__name__, exc, self._backoff_s)


def limiter_redis_client(settings: Settings) -> Any:
    """The limiter's Redis client: short timeouts and no retries, so that a Redis outage costs
    one request at most about ``REDIS_TIMEOUT_S`` per back-off period (``Services.redis()``
    waits 2 s and retries)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
    )


def enforce_rate_limits(limiter: RateLimiter, settings: Settings, ident: int, *, submit: bool) -> None:
    """Count this request against its token's limits (``ident``: the authenticated token's
    database id, as common.auth.authenticate found it); raise RateLimited when over one."""
    scopes = [("api", settings.rate_limit, "requests")]
    if submit:
        scopes.append(("submit", settings.submit_rate_limit, "job submissions"))
    scopes = [s for s in scopes if s[1] is not None]
    if not scopes or limiter.backing_off:
        return
    for scope, limit, what in scopes:
        assert limit is not None
        hit = limiter.hit(scope, ident, limit)
        if hit is not None and not hit.allowed:
            raise RateLimited(f"rate limit exceeded: at most {limit.requests} {what} per {limit.seconds} s "
                              f"with this token; retry in {hit.retry_after} s", hit.retry_after)


def check_queued_cap(session: Session, user: Principal, cap: int) -> None:
    """Inside the transaction that will insert a job for ``user``: refuse it when the user
    already has ``cap`` jobs that are not running yet (0: no cap)."""
    if cap <= 0:
        return
    if session.get_bind().dialect.name == "postgresql":
        # Serialises this user's submissions until commit, so two can not both pass the count.
        session.execute(text("SELECT pg_advisory_xact_lock(:ns, :uid)"),
                        {"ns": _ADVISORY_LOCK_NAMESPACE, "uid": user.id})
    pending = session.scalar(
        select(func.count()).select_from(Job).where(Job.user_id == user.id, Job.status.in_(PENDING_STATUSES))
    ) or 0
    if pending >= cap:
        raise QueuedJobsCapReached(
            f"user {user.name} has {pending} queued jobs (limit {cap}; queued, waiting and interrupted jobs "
            f"count); cancel one or wait for one to start",
            QUEUED_CAP_RETRY_AFTER_S,
        )


__all__ = [
    "TooManyRequests", "RateLimited", "QueuedJobsCapReached", "RateLimiter", "Hit", "retry_after_s",
    "limiter_redis_client", "enforce_rate_limits", "check_queued_cap", "PENDING_STATUSES",
    "QUEUED_CAP_RETRY_AFTER_S", "BACKOFF_S",
]
