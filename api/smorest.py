"""flask-smorest, configured for this API: validation errors are 400 (naming the field) and
use the service's error shape in the OpenAPI document."""
from __future__ import annotations

from copy import deepcopy
from typing import Any, Iterable

import flask_smorest
from apispec import BasePlugin
from flask_smorest.utils import prepare_response
from webargs.flaskparser import FlaskParser

from api.errors import ErrorSchema, handle_http_exception

# The 429 every authenticated operation can answer (per-token rate limits, and on POST /jobs
# the per-user cap on queued jobs), as a reusable response component.
TOO_MANY_REQUESTS = "TOO_MANY_REQUESTS"
RETRY_AFTER_HEADER = {
    "description": "whole seconds to wait before retrying: until the rate-limit window ends "
                   "(at least 1), or 30 after the queued-jobs cap",
    "schema": {"type": "integer", "minimum": 1},
}


class Parser(FlaskParser):
    DEFAULT_VALIDATION_STATUS = 400


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = Parser()

    def alt_response(self, status_code, response=None, *, schema=None, **kwargs):  # type: ignore[no-untyped-def, override]
        # Every error body has the service's shape (api.errors): document it unless told otherwise.
        if response is None and schema is None and int(status_code) >= 400:
            schema = ErrorSchema
        return super().alt_response(status_code, response, schema=schema, **kwargs)

    def register_views_in_doc(self, api, app, spec, *, name, parameters):  # type: ignore[no-untyped-def]
        """Document 429 (with Retry-After) on every operation except the API's public ones."""
        public = getattr(api, "public_endpoints", frozenset())
        original, self._docs = self._docs, deepcopy(self._docs)
        try:
            for endpoint, info in self._docs.items():
                if f"{name}.{endpoint}" in public:
                    continue
                for method, doc in info.items():
                    if method != "parameters" and isinstance(doc, dict):
                        responses = doc.setdefault("manual_doc", {}).setdefault("responses", {})
                        responses.setdefault("429", TOO_MANY_REQUESTS)
            super().register_views_in_doc(api, app, spec, name=name, parameters=parameters)
        finally:
            self._docs = original


class ServiceDocs(BasePlugin):
    """Completes every operation alike: an ``operationId`` from its Flask endpoint (``jobs.job``
    -> ``jobs_job``; the document's links refer to these), and ``401`` on every operation that
    needs a token; the public ones say ``security: []`` instead."""

    def __init__(self, public_endpoints: Iterable[str]):
        self.public_endpoints = frozenset(public_endpoints)

    def operation_helper(self, path=None, operations=None, **kwargs):  # type: ignore[no-untyped-def, override]
        rule = kwargs.get("rule")
        for method, operation in (operations or {}).items():
            if rule is None:
                continue
            suffix = f"_{method}" if len(operations) > 1 else ""
            operation.setdefault("operationId", rule.endpoint.replace(".", "_") + suffix)
            if rule.endpoint in self.public_endpoints:
                operation.setdefault("security", [])
            else:
                operation.setdefault("responses", {}).setdefault("401", "UNAUTHORIZED")


class Api(flask_smorest.Api):
    ERROR_SCHEMA = ErrorSchema

    def __init__(self, app: Any = None, *, public_endpoints: Iterable[str] = (), **kwargs: Any):
        self.public_endpoints = frozenset(public_endpoints)  # no token, so no rate limit: no 429
        super().__init__(app, **kwargs)

    def _init_spec(self, *, extra_plugins=None, **kwargs):  # type: ignore[no-untyped-def, override]
        plugins = [*(extra_plugins or ()), ServiceDocs(self.public_endpoints)]
        super()._init_spec(extra_plugins=plugins, **kwargs)

    def _register_responses(self):  # type: ignore[no-untyped-def]
        super()._register_responses()
        response = {
            "description": "too many requests: a per-token rate limit, or (submitting a job) the "
                           "per-user cap on queued jobs",
            "schema": self.ERROR_SCHEMA,
            "headers": {"Retry-After": RETRY_AFTER_HEADER},
        }
        prepare_response(response, self.spec, self.DEFAULT_RESPONSE_CONTENT_TYPE)
        self.spec.components.response(TOO_MANY_REQUESTS, response, lazy=True)

    def handle_http_exception(self, error):  # type: ignore[no-untyped-def, override]
        return handle_http_exception(error)
