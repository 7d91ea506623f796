"""common/store/ui_sessions.py: the dashboard's server-side sessions, on SQLite and PostgreSQL
(a migrated store): create, look up (refusing unknown, expired, too old, revoked), touch at most
once a minute, delete, delete a token's, purge."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from common.auth import create_token, hash_token, revoke_tokens, token_for_hash
from common.store import make_engine, make_sessionmaker, transaction, upgrade
from common.store import ui_sessions as uis
from common.store.db import ReadOnlySession
from common.store.models import UiSession

HOUR = dt.timedelta(hours=1)
T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(params=["sqlite", "postgres"])
def factory(request, tmp_path):
    url = (request.getfixturevalue("pg_database_url") if request.param == "postgres"
           else f"sqlite:///{tmp_path / 'teacher.db'}")
    engine = make_engine(url)
    upgrade(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


def mint(factory, user: str = "alice") -> tuple[str, int]:
    with transaction(factory) as s:
        token = create_token(s, user)
        return token, token_for_hash(s, hash_token(token)).id


def start(factory, token_id: int, *, now=T0, lifetime=HOUR, user_agent=None) -> str:
    with transaction(factory) as s:
        return uis.create_session(s, token_id, lifetime=lifetime, user_agent=user_agent, now=now)


def look(factory, secret: str, **kw):
    with factory() as s:  # a read session: the lookup must not write
        return uis.live_session(s, secret, **kw)


def rows(factory) -> int:
    with factory() as s:
        return s.scalar(select(func.count()).select_from(UiSession))


def test_the_store_keeps_the_secrets_hash_and_the_lookup_joins_the_user(factory):
    _, token_id = mint(factory)
    secret = start(factory, token_id, user_agent="Mozilla/5.0 " + "x" * 1000)
    with factory() as s:
        row = s.get(UiSession, uis.hash_secret(secret))
        assert s.get(UiSession, secret) is None  # never the secret itself
    assert row.token_id == token_id and row.expires_at == T0 + HOUR and row.last_seen_at == T0
    assert row.user_agent.startswith("Mozilla/5.0 ") and len(row.user_agent) == UiSession.USER_AGENT_MAX
    live = look(factory, secret, now=T0 + dt.timedelta(minutes=5))
    assert live is not None and live.user.name == "alice" and live.token_id == token_id
    assert look(factory, "not-a-session", now=T0) is None


def test_a_session_ends_at_its_expiry_and_when_older_than_max_age(factory):
    _, token_id = mint(factory)
    secret = start(factory, token_id)
    assert look(factory, secret, now=T0 + HOUR - dt.timedelta(seconds=1)) is not None
    assert look(factory, secret, now=T0 + HOUR) is None
    # A lifetime lowered after sign-in shortens the session already made.
    assert look(factory, secret, now=T0 + dt.timedelta(minutes=31), max_age=dt.timedelta(minutes=30)) is None
    assert look(factory, secret, now=T0 + dt.timedelta(minutes=29), max_age=dt.timedelta(minutes=30)) is not None


def test_revoking_the_token_refuses_its_sessions_and_only_its(factory):
    token, token_id = mint(factory)
    _, other_id = mint(factory, "bob")
    mine, others = start(factory, token_id), start(factory, other_id)
    with transaction(factory) as s:
        revoke_tokens(s, token=token)
    assert look(factory, mine, now=T0) is None
    assert look(factory, others, now=T0).user.name == "bob"


def test_delete_ends_one_session_and_delete_token_sessions_all_of_a_token(factory):
    _, token_id = mint(factory)
    _, other_id = mint(factory, "bob")
    a, b, c = start(factory, token_id), start(factory, token_id), start(factory, other_id)
    with transaction(factory) as s:
        assert uis.delete_session(s, a) is True
        assert uis.delete_session(s, a) is False
    assert look(factory, a, now=T0) is None and look(factory, b, now=T0) is not None
    with transaction(factory) as s:
        assert uis.delete_token_sessions(s, token_id) == 1
    assert look(factory, b, now=T0) is None and look(factory, c, now=T0) is not None


def test_touch_writes_at_most_once_a_minute(factory):
    _, token_id = mint(factory)
    secret = start(factory, token_id)
    live = look(factory, secret, now=T0 + dt.timedelta(seconds=30))
    assert not live.due_for_touch(T0 + dt.timedelta(seconds=30))
    with transaction(factory) as s:
        assert uis.touch(s, live.id, now=T0 + dt.timedelta(seconds=30)) is False  # too soon: no write
    later = T0 + dt.timedelta(seconds=61)
    assert look(factory, secret, now=later).due_for_touch(later)
    with transaction(factory) as s:
        assert uis.touch(s, live.id, now=later) is True
        assert uis.touch(s, live.id, now=later) is False  # a second worker's touch finds it done
    assert look(factory, secret, now=later).last_seen_at == later


def test_purge_removes_expired_and_revoked_sessions_only(factory):
    token, token_id = mint(factory)
    _, other_id = mint(factory, "bob")
    start(factory, other_id, lifetime=dt.timedelta(minutes=1))  # expired by T0 + 1 min
    live = start(factory, other_id)
    start(factory, token_id)
    with transaction(factory) as s:
        revoke_tokens(s, token=token)
    with transaction(factory) as s:
        assert uis.purge_expired(s, now=T0 + dt.timedelta(minutes=1)) == 2
    assert rows(factory) == 1 and look(factory, live, now=T0) is not None


def test_writes_need_a_transaction(factory):
    _, token_id = mint(factory)
    with factory() as s, pytest.raises(ReadOnlySession):
        uis.create_session(s, token_id, lifetime=HOUR)


def test_a_lifetime_must_be_positive(factory):
    _, token_id = mint(factory)
    with transaction(factory) as s, pytest.raises(ValueError):
        uis.create_session(s, token_id, lifetime=dt.timedelta(0))
