"""Dashboard sessions: an API token pasted once becomes a server-side session.

Sign-in checks the token as the API would (common.auth) and makes a ``ui_sessions`` row
(common/store/ui_sessions.py) ending ``TEACHER_UI_SESSION_HOURS`` (app config, default 12)
later, however active. The browser's cookie carries only that session's random secret (the
store keeps its hash) and Flask-WTF's CSRF secret. The carrier is Flask's signed session cookie
because Flask-WTF keeps its CSRF secret in ``session``: one cookie, signed, holds both; the
authority is the row, so sign-out (which deletes it) ends every copy of the cookie, and revoking
the token ends its sessions at their next request.

Each request reads the row (joined with its token and user, one query) in a read session: no
write lock. Writes: sign-in, sign-out, and ``last_seen_at`` at most once a minute.
Cookie flags: HttpOnly, SameSite=Lax, Secure whenever the request came over HTTPS.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import time
from pathlib import Path

from flask import Flask, request, session
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from common.auth import AuthError, hash_token, token_for_hash
from common.store import User, transaction, ui_sessions, utcnow

log = logging.getLogger(__name__)

DEFAULT_SESSION_HOURS = 12.0
SECRET_FILE = "ui_secret_key"  # in the state root, shared by every gunicorn worker of a host


class _SessionInterface(SecureCookieSessionInterface):
    def get_cookie_secure(self, app: Flask) -> bool:  # type: ignore[override]
        # Secure exactly when the browser reached us over HTTPS (behind a proxy: X-Forwarded-Proto
        # once the deployment applies ProxyFix), so the plain-HTTP local stack still works.
        return bool(app.config.get("SESSION_COOKIE_SECURE")) or request.is_secure


def configure_sessions(app: Flask) -> None:
    settings = app.extensions["teacher"].settings
    if not app.config.get("SECRET_KEY"):
        path = Path(settings.state_root) / SECRET_FILE
        try:
            app.config["SECRET_KEY"] = _shared_secret(path)
        except OSError as exc:
            # The API still serves; only the dashboard waits for a writable state root.
            log.error("web dashboard disabled: cannot keep its signing key in %s (%s); make "
                      "TEACHER_STATE_ROOT writable or give the app a SECRET_KEY", path, exc)
            app.config["TEACHER_UI_DISABLED"] = "the dashboard has no signing key yet: an operator must make " \
                                                "TEACHER_STATE_ROOT writable (see the API's log)"
            app.config["SECRET_KEY"] = secrets.token_urlsafe(48)  # never used to sign a session
    hours = float(app.config.setdefault("TEACHER_UI_SESSION_HOURS", DEFAULT_SESSION_HOURS))
    app.config.setdefault("PERMANENT_SESSION_LIFETIME", dt.timedelta(hours=hours))
    app.config.update(SESSION_COOKIE_NAME="teacher_session", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_PATH="/ui/")
    app.session_interface = _SessionInterface()


def _shared_secret(path: Path) -> str:
    """The key that signs session cookies and CSRF tokens: made once (0600, O_EXCL so the
    first of several starting workers wins) and read by every later start, so sessions survive
    restarts and work across workers. Several API hosts: give them one SECRET_KEY instead."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _wait_written(path)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secrets.token_urlsafe(48))
    return path.read_text(encoding="utf-8").strip()


def _wait_written(path: Path) -> str:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key
        time.sleep(0.05)
    raise RuntimeError(f"{path} stays empty: remove it, or set SECRET_KEY")


SESSION_KEY = "sid"  # the session's secret, in the signed cookie


def sign_in(factory: sessionmaker[DbSession], token: str, *, lifetime_hours: float,
            user_agent: str | None = None) -> User:
    """Check a pasted token as the API would and start a session for it (AuthError if bad)."""
    token = token.strip()
    if not token or len(token) > 512:
        raise AuthError("paste a token made by 'teacher tokens create'")
    # A wrong token is refused on a read: guessing takes no write lock.
    with factory() as s:
        token_for_hash(s, hash_token(token))
    previous = session.get(SESSION_KEY)
    now = utcnow()
    with transaction(factory) as s:
        row = token_for_hash(s, hash_token(token))  # again under the lock: not revoked meanwhile
        if isinstance(previous, str):
            ui_sessions.delete_session(s, previous)  # the browser's previous session ends here
        ui_sessions.purge_expired(s, now=now)  # opportunistic: keeps the table to the live sessions
        secret = ui_sessions.create_session(s, row.id, lifetime=dt.timedelta(hours=lifetime_hours),
                                            user_agent=user_agent, now=now)
        user = row.user
    session.clear()  # nothing of a previous session (or its CSRF secret) carries over
    session.permanent = True
    session[SESSION_KEY] = secret
    return user


def sign_out(factory: sessionmaker[DbSession]) -> None:
    """End the session for every copy of its cookie (the row goes), then clear this browser's."""
    secret = session.get(SESSION_KEY)
    if isinstance(secret, str):
        with transaction(factory) as s:
            ui_sessions.delete_session(s, secret)
    session.clear()


def session_user(factory: sessionmaker[DbSession], lifetime_hours: float) -> User | None:
    """The signed-in user (detached, loaded); None (and the cookie cleared) when not signed in,
    signed out elsewhere, expired, or the token was revoked."""
    secret = session.get(SESSION_KEY)
    if not isinstance(secret, str):
        return None
    now = utcnow()
    with factory() as s:
        live = ui_sessions.live_session(s, secret, now=now, max_age=dt.timedelta(hours=lifetime_hours))
    if live is None:
        session.clear()
        return None
    if live.due_for_touch(now):
        _touch(factory, live.id, now)
    return live.user


def _touch(factory: sessionmaker[DbSession], session_id: str, now: dt.datetime) -> None:
    # Best effort: last_seen_at is information for operators, not a check; a store busy past its
    # timeout must not fail the page.
    try:
        with transaction(factory) as s:
            ui_sessions.touch(s, session_id, now=now)
    except OperationalError as exc:
        log.warning("dashboard session %s…: last_seen_at not recorded (%s)", session_id[:8], exc)
