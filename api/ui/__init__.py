"""The web dashboard: server-rendered pages under /ui/, served by the API's Flask app.

One blueprint (api/ui/views.py) on the same services and ownership checks as the JSON API
(api/lookup.py, api/submission.py, the job store); no second code path to the data. A browser
signs in once with an API token (api/ui/session.py); every form carries a CSRF token
(Flask-WTF); every /ui/ response forbids inline scripts (CSP). docs/ui.md describes it.
"""
from __future__ import annotations

from flask import Flask, request

from api.ui.session import configure_sessions
from api.ui.views import blp, csrf

PREFIX = "/ui"


def is_ui_request() -> bool:
    """The dashboard authenticates its own requests (a session cookie, not a bearer token)."""
    return request.path == PREFIX or request.path.startswith(PREFIX + "/")


def init_ui(app: Flask) -> None:
    configure_sessions(app)
    # CSRF is checked by the dashboard's own hook (views._guard), not app-wide: the JSON API
    # takes bearer tokens, which a cross-site form cannot send.
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # valid as long as the session is
    csrf.init_app(app)
    app.register_blueprint(blp, url_prefix=PREFIX)


__all__ = ["init_ui", "is_ui_request", "PREFIX"]
