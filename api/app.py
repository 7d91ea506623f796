"""The Flask application factory (served by ``gunicorn "api:create_app()"``)."""
from __future__ import annotations

import logging
from typing import Any, Mapping

from flask import Flask, g, request

from api import analysis, errors, health, jobs, metrics
from common.settings import Settings
from api.extensions import Enqueue, init_services, services
from api.json_provider import OrjsonProvider
from api.limits import enforce_rate_limits
from api.smorest import Api
from api.ui import init_ui, is_ui_request
from common.auth import authenticate

# Endpoints reachable without a token; everything else (including unknown URLs) needs one.
PUBLIC_ENDPOINTS = frozenset({"health.health", "api-docs.openapi_json"})


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """``config`` may hold ``TEACHER_SETTINGS`` (a Settings; default: from the environment),
    ``TEACHER_ENQUEUE`` (a callable replacing Celery publishing, for tests) and Flask keys."""
    config = dict(config or {})
    settings: Settings = config.pop("TEACHER_SETTINGS", None) or Settings.from_env()
    enqueue: Enqueue | None = config.pop("TEACHER_ENQUEUE", None)

    app = Flask(__name__)
    app.json = OrjsonProvider(app)  # Flask's JSON, encoded by orjson (api/json_provider.py)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_content_length,
        API_TITLE="teacher job service",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api/v1",
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={
            "security": [{"bearerAuth": []}],
            "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
        },
    )
    app.config.update(config)
    logging.getLogger("api").setLevel(logging.INFO)

    init_services(app, settings, enqueue)
    api = Api(app, public_endpoints=PUBLIC_ENDPOINTS)  # the others document 429 (rate limits)
    errors.register_error_handlers(app)  # after Api(): ours replace flask-smorest's handler
    api.register_blueprint(jobs.blp)
    api.register_blueprint(analysis.blp)  # /jobs/{id}/report, /jobs/{id}/plots, /analyses
    api.register_blueprint(health.blp)
    app.register_blueprint(metrics.blp)  # plain Flask: Prometheus text, not part of the JSON API
    init_ui(app)  # the web dashboard under /ui/ (api/ui): its own session sign-in, CSRF, CSP

    @app.before_request
    def _authenticate() -> None:
        if request.endpoint in PUBLIC_ENDPOINTS or is_ui_request():
            return  # the dashboard checks its session cookie itself (api/ui/session.py: a ui_sessions row of a live token)
        svc = services()
        with svc.reads() as s:
            g.user = caller = authenticate(s, request.headers.get("Authorization"))
        if request.path.startswith("/api/v1/"):  # per-token rate limits (429 + Retry-After)
            enforce_rate_limits(svc.limiter, svc.settings, caller.token_id, submit=request.endpoint == "jobs.submit")

    @app.after_request
    def _security_headers(resp):  # type: ignore[no-untyped-def]
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    return app
