"""The web dashboard's server-side sessions (table ``ui_sessions``; api/ui/session.py uses them).

A session is a random 32-byte secret that only the browser's cookie holds; the row is keyed by
the secret's sha256 (like tokens: a copy of the store signs no one in, and a plain hash of 32
random bytes needs no stretching). A session is live while its row exists, its ``expires_at`` is
ahead, and its token is not revoked: sign-out deletes the row, so every copy of the cookie ends
with it; revoking the token refuses its sessions at their next request (the lookup joins the
token), and deleting a token deletes its sessions (ON DELETE CASCADE).

Reads (:func:`live_session`) run in a read session; the writes (create, delete, the touch of
``last_seen_at`` at most once per :data:`TOUCH_INTERVAL`, purge) need ``transaction(factory)``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, or_, select, update
from sqlalchemy.orm import Session

from common.store.models import Token, UiSession, User, utcnow

SECRET_BYTES = 32
TOUCH_INTERVAL = dt.timedelta(minutes=1)  # last_seen_at's resolution: one write a minute, not per request
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

# Built once (as common.auth's token lookup): one query per dashboard request, the session
# joined with its live token and user.
_LIVE = (select(UiSession, User).join(UiSession.token).join(Token.user)
         .where(UiSession.id == bindparam("session_id"), Token.revoked.is_(False),
                UiSession.expires_at > bindparam("now"), UiSession.created_at > bindparam("issued_after")))


@dataclass(frozen=True)
class LiveSession:
    """A live session's row, as the dashboard needs it (its user loaded with it)."""

    id: str  # the secret's hash, never the secret
    token_id: int
    user: User
    created_at: dt.datetime
    expires_at: dt.datetime
    last_seen_at: dt.datetime

    def due_for_touch(self, now: dt.datetime) -> bool:
        return now - self.last_seen_at >= TOUCH_INTERVAL


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_session(s: Session, token_id: int, *, lifetime: dt.timedelta, user_agent: str | None = None,
                   now: dt.datetime | None = None) -> str:
    """A new session of the token, ending ``lifetime`` from now; returns its secret (for the
    cookie; the store keeps only its hash)."""
    if lifetime <= dt.timedelta(0):
        raise ValueError("a session's lifetime must be positive")
    now = now or utcnow()
    secret = secrets.token_urlsafe(SECRET_BYTES)
    agent = (user_agent or "").strip()[:UiSession.USER_AGENT_MAX] or None
    s.add(UiSession(id=hash_secret(secret), token_id=token_id, created_at=now, expires_at=now + lifetime,
                    last_seen_at=now, user_agent=agent))
    s.flush()
    return secret


def live_session(s: Session, secret: str, *, now: dt.datetime | None = None,
                 max_age: dt.timedelta | None = None) -> LiveSession | None:
    """The live session of this secret, or None (unknown, signed out, expired, token revoked).
    ``max_age`` also refuses sessions older than that, whatever their ``expires_at``: lowering
    the configured lifetime shortens the sessions already made."""
    now = now or utcnow()
    session_id = hash_secret(secret)
    issued_after = now - max_age if max_age is not None else _EPOCH
    row = s.execute(_LIVE, {"session_id": session_id, "now": now, "issued_after": issued_after}).first()
    if row is None:
        return None
    ui, user = row
    if not hmac.compare_digest(ui.id, session_id):  # the database's string compare is not constant-time
        return None
    return LiveSession(id=ui.id, token_id=ui.token_id, user=user, created_at=ui.created_at,
                       expires_at=ui.expires_at, last_seen_at=ui.last_seen_at)


def touch(s: Session, session_id: str, *, now: dt.datetime | None = None) -> bool:
    """Record that the session was used, unless it already was within TOUCH_INTERVAL (another
    worker may have just done it); True when this call wrote."""
    now = now or utcnow()
    result = s.execute(update(UiSession)
                       .where(UiSession.id == session_id, UiSession.last_seen_at <= now - TOUCH_INTERVAL)
                       .values(last_seen_at=now))
    return bool(result.rowcount)


def delete_session(s: Session, secret: str) -> bool:
    """Sign-out: the session ends for every copy of its cookie. True when it existed."""
    return bool(s.execute(delete(UiSession).where(UiSession.id == hash_secret(secret))).rowcount)


def delete_token_sessions(s: Session, token_id: int) -> int:
    """End every session of a token (how many there were)."""
    return s.execute(delete(UiSession).where(UiSession.token_id == token_id)).rowcount


def purge_expired(s: Session, *, now: dt.datetime | None = None) -> int:
    """Delete the sessions that can no longer sign anyone in: expired, or of a revoked token.
    Called at each sign-in, so the table stays as small as the live sessions."""
    now = now or utcnow()
    revoked = select(Token.id).where(Token.revoked.is_(True))
    return s.execute(delete(UiSession).where(or_(UiSession.expires_at <= now, UiSession.token_id.in_(revoked)))
                     ).rowcount


__all__ = ["LiveSession", "TOUCH_INTERVAL", "create_session", "delete_session", "delete_token_sessions",
           "hash_secret", "live_session", "purge_expired", "touch"]
