"""Validate the OpenAPI document and check responses against it."""
from __future__ import annotations

import copy
import re
from typing import Any

from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_spec


def check_document(doc: dict[str, Any]) -> None:
    validate_spec(doc)


def _inline(node: Any, components: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            return _inline(copy.deepcopy(components[name]), components)
        return {k: _inline(v, components) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, components) for v in node]
    return node


def _operation(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    for template, ops in doc["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", r"[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in ops:
            return ops[method.lower()]
    raise AssertionError(f"{method} {path} is not in the OpenAPI document")


def check_response(doc: dict[str, Any], method: str, path: str, status: int, content_type: str, body: Any) -> None:
    """The status is documented for the operation, and a JSON body matches its schema."""
    op = _operation(doc, method, path.split("?")[0])
    responses = op["responses"]
    spec = responses.get(str(status)) or responses.get("default")
    assert spec is not None, f"{method} {path}: status {status} not documented ({sorted(responses)})"
    if not content_type.startswith("application/json"):
        return
    schema = (spec.get("content") or {}).get("application/json", {}).get("schema")
    if schema is None:
        return
    schema = _inline(schema, doc["components"]["schemas"])
    OAS30Validator(schema).validate(body)
