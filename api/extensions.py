"""The app's services (store, broker), attached per app like a Flask extension's init_app."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from flask import Flask, current_app, g
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from common.settings import Settings
from api.limits import RateLimiter, limiter_redis_client
from common.auth import Caller
from common.store import make_engine, make_sessionmaker, transaction, upgrade
from common.store.jobs import mark_enqueued

log = logging.getLogger(__name__)

Enqueue = Callable[[str, str, int], None]  # (job_id, queue, priority)
_READS = "_teacher_reads"  # flask.g attribute: the request's read session (Services.reads)


def celery_enqueue(settings: Settings) -> Enqueue:
    """Publish through Celery with these settings (imported on first use; tests replace it)."""

    def enqueue(job_id: str, queue: str, priority: int) -> None:
        from common.broker import publish

        publish(settings, job_id, queue, priority)

    return enqueue


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    enqueue_fn: Enqueue
    redis_client: object | None = field(default=None)
    limiter_client: object | None = field(default=None)
    limiter: RateLimiter = field(init=False, repr=False)  # per-token rate limits (api.limits)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.limiter_redis)

    def enqueue(self, job_id: str, queue: str, priority: int) -> bool:
        """Publish a job's message after its record is committed. A failure is logged, not
        raised: the job stays queued without `enqueued_at`, and the reconciler re-sends it."""
        try:
            self.enqueue_fn(job_id, queue, priority)
        except Exception:
            log.exception("could not enqueue job %s; the reconciler will retry", job_id)
            return False
        with transaction(self.sessions) as s:
            mark_enqueued(s, job_id)
        return True

    @contextmanager
    def reads(self) -> Iterator[Session]:
        """The request's read session: one per request (on ``flask.g``, closed at the end of the
        request), shared by the authentication and the view. Each block is a read transaction of
        its own (a deferred BEGIN on SQLite, never the write lock): it ends when the block does,
        so no connection or snapshot is held while a response streams, but the rows it loaded
        stay in the session. The caller authenticated in the first block is then the owner found
        in the session, without a query, when the view loads the caller's own job. Writes go
        through ``transaction(self.sessions)``, as everywhere."""
        session = g.get(_READS)
        if session is None:
            session = self.sessions()
            setattr(g, _READS, session)
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        else:
            session.commit()  # ends the read transaction; expire_on_commit=False keeps the rows

    def redis(self):  # type: ignore[no-untyped-def]
        if self.redis_client is None:
            import redis

            self.redis_client = redis.Redis.from_url(
                self.settings.redis_url, socket_connect_timeout=2, socket_timeout=2
            )
        return self.redis_client

    def limiter_redis(self):  # type: ignore[no-untyped-def]
        """The same Redis, through a client with short timeouts and no retries (api.limits)."""
        if self.limiter_client is None:
            self.limiter_client = limiter_redis_client(self.settings)
        return self.limiter_client


def init_services(app: Flask, settings: Settings, enqueue: Enqueue | None = None) -> Services:
    engine = make_engine(settings.database_url)
    upgrade(engine)  # idempotent and locked; a fresh volume just works
    services = Services(settings=settings, engine=engine, sessions=make_sessionmaker(engine),
                        enqueue_fn=enqueue or celery_enqueue(settings))
    app.extensions["teacher"] = services
    app.teardown_appcontext(_close_reads)
    return services


def _close_reads(_exc: BaseException | None) -> None:
    session = g.pop(_READS, None)
    if session is not None:
        session.close()


def services() -> Services:
    return current_app.extensions["teacher"]


def current_user() -> Caller:
    """Who the API request is (common.auth.authenticate, in the app's ``before_request``)."""
    return g.user
