"""One place that turns exceptions into the API's JSON error shape:

    {"code": 400, "message": "...", "errors": {"optim.lr": ["..."]}}

Views raise specific exceptions (ConfigError, JobNotFound, ...); they are translated here, once.
Anything unexpected becomes a 500 with a generic message (and a logged traceback), never a
stack trace in the response.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import marshmallow as ma
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, InternalServerError

from api.limits import TooManyRequests
from api.lookup import BadJobRef
from api.redact import scrub, server_roots
from api.submission import KeyOfDeletedJob, SubmitContention, UnknownJobRef
from common.analysis.uploads import UploadRejected
from common.auth import AuthError
from common.config import ConfigError, flatten_errors
from common.rundir import InvalidJobId, RunFileCorrupt
from common.store.jobs import IdempotencyMismatch, JobConflict, JobNotFound

log = logging.getLogger(__name__)


class ErrorSchema(ma.Schema):
    code = ma.fields.Integer(required=True, metadata={"description": "HTTP status code"})
    message = ma.fields.String(required=True, metadata={"description": "what went wrong, for humans"})
    errors = ma.fields.Dict(
        keys=ma.fields.String(), values=ma.fields.List(ma.fields.String()), required=True,
        metadata={"description": "dotted field name -> messages (empty when no field is at fault)"},
    )


class ApiError(Exception):
    """An error with an HTTP status, raised by views for conditions not covered below."""

    def __init__(self, status: int, message: str, errors: Mapping[str, list[str]] | None = None,
                 headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = dict(errors or {})
        self.headers = dict(headers or {})


def _damaged_run_file(e: RunFileCorrupt) -> Any:
    """A job's run file that exists but is not its format: outside damage (every file is replaced
    atomically). Logged with its path; the client is told which file, not where it lives."""
    log.error("damaged run file: %s", e)
    return error_response(500, f"this job's {e.path.name} is damaged ({e.reason}); an operator must look at it")


def error_response(status: int, message: str, errors: Mapping[str, Any] | None = None,
                   headers: Mapping[str, str] | None = None) -> ResponseReturnValue:
    roots = server_roots()
    body = {"code": status, "message": scrub(message, roots),
            "errors": {k: [scrub(str(m), roots) for m in v] for k, v in (errors or {}).items()}}
    resp = jsonify(body)
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def handle_http_exception(error: HTTPException) -> ResponseReturnValue:
    status = error.code or 500
    if isinstance(error, InternalServerError) and error.original_exception is not None:
        return handle_unexpected(error.original_exception)
    data = getattr(error, "data", None) or {}
    message = data.get("message") or error.description or error.name
    errors: dict[str, list[str]] = {}
    if "errors" in data:
        errors = flatten_errors(data["errors"])
    elif "messages" in data:  # webargs validation errors: {"query": {"limit": [...]}}
        errors = flatten_errors(data["messages"])
        message = "invalid request: " + "; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items())
    headers = dict(data.get("headers") or {})
    if getattr(error, "valid_methods", None):
        headers["Allow"] = ", ".join(error.valid_methods)
    return error_response(status, message, errors, headers)


def handle_unexpected(error: BaseException) -> ResponseReturnValue:
    log.error("unhandled error", exc_info=error)
    return error_response(500, "internal server error")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(ApiError, lambda e: error_response(e.status, e.message, e.errors, e.headers))
    app.register_error_handler(
        AuthError, lambda e: error_response(401, str(e), headers={"WWW-Authenticate": 'Bearer realm="teacher"'})
    )
    app.register_error_handler(BadJobRef, lambda e: error_response(400, e.message, e.errors))
    app.register_error_handler(UnknownJobRef, lambda e: error_response(404, str(e), e.errors))
    app.register_error_handler(KeyOfDeletedJob, lambda e: error_response(409, str(e), e.errors))
    app.register_error_handler(SubmitContention, lambda e: error_response(409, str(e)))
    app.register_error_handler(UploadRejected, lambda e: error_response(400, e.message, e.errors))
    app.register_error_handler(ConfigError, lambda e: error_response(400, f"invalid job: {e}", e.errors))
    app.register_error_handler(JobNotFound, lambda e: error_response(404, f"job {e} not found"))
    app.register_error_handler(InvalidJobId, lambda e: error_response(404, f"job {e} not found"))
    app.register_error_handler(RunFileCorrupt, _damaged_run_file)
    app.register_error_handler(JobConflict, lambda e: error_response(409, str(e)))
    app.register_error_handler(  # a rate limit or the queued-jobs cap (api.limits)
        TooManyRequests, lambda e: error_response(429, e.message, headers={"Retry-After": str(e.retry_after)})
    )
    app.register_error_handler(
        IdempotencyMismatch,
        lambda e: error_response(422, "Idempotency-Key was already used with a different request body",
                                 {"Idempotency-Key": ["reused with a different body"]}),
    )
    app.register_error_handler(Exception, handle_unexpected)
