"""flask-smorest, configured for this API: validation errors are 400 (naming the field) and
use the service's error shape in the OpenAPI document."""
from __future__ import annotations

import flask_smorest
from webargs.flaskparser import FlaskParser

from api.errors import ErrorSchema, handle_http_exception


class Parser(FlaskParser):
    DEFAULT_VALIDATION_STATUS = 400


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = Parser()


class Api(flask_smorest.Api):
    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error):  # type: ignore[no-untyped-def, override]
        return handle_http_exception(error)
