"""Dashboard sessions: an API token pasted once becomes a signed session cookie.

The cookie (Flask's signed session) holds the token's sha256 hash and the sign-in time, never
the token. Every request looks the hash up through common.auth (the code that authenticates
the API's bearer tokens), so a revoked token ends its sessions at the next request; a session
also ends ``TEACHER_UI_SESSION_HOURS`` (app config, default 12) after sign-in, however active.
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
from sqlalchemy.orm import Session as DbSession

from common.auth import AuthError, hash_token, user_for_token_hash
from common.store import User

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


def sign_in(db: DbSession, token: str) -> User:
    """Check a pasted token as the API would and start a session for it (AuthError if bad)."""
    token = token.strip()
    if not token or len(token) > 512:
        raise AuthError("paste a token made by 'teacher tokens create'")
    user = user_for_token_hash(db, hash_token(token))
    session.clear()  # nothing of a previous session (or its CSRF secret) carries over
    session.permanent = True
    session["th"] = hash_token(token)
    session["iat"] = int(time.time())
    return user


def sign_out() -> None:
    session.clear()


def session_user(db: DbSession, lifetime_hours: float) -> User | None:
    """The signed-in user; None (and the session cleared) when not signed in, expired, or the
    token was revoked."""
    token_hash, issued = session.get("th"), session.get("iat")
    if not isinstance(token_hash, str) or not isinstance(issued, int):
        return None
    if time.time() - issued > lifetime_hours * 3600:
        session.clear()
        return None
    try:
        return user_for_token_hash(db, token_hash)
    except AuthError:
        session.clear()
        return None
