"""A request body as a document: JSON or YAML (a job may be sent as either), parsed safely.

YAML is checked with libyaml's fast parser before the full safe load: a job never needs
aliases (nested ones, "billion laughs", expand exponentially when the body is hashed or
serialised) nor deep nesting (the pure-Python scanner is super-linear in it).
"""
from __future__ import annotations

from typing import Any

import yaml
from flask import request

from api.errors import ApiError
from common.config import ConfigError, parse_yaml

YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml"})
MAX_YAML_DEPTH = 32
BODY = "_schema"  # where errors about the body as a whole go, as marshmallow puts them
_FAST_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_body() -> Any:
    """The request's JSON or YAML document; 415 for another content type, 400 naming
    ``_schema`` (the body as a whole) when it does not parse."""
    try:
        return _parse(request.mimetype)
    except RecursionError:  # absurdly deep nesting; the parsers recurse
        raise ApiError(400, "the body is nested too deeply", {BODY: ["nested too deeply"]}) from None


def _parse(mimetype: str) -> Any:
    if mimetype in YAML_TYPES:
        try:
            text = request.get_data(as_text=False).decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "the YAML body is not UTF-8", {BODY: ["not UTF-8"]}) from None
        precheck_yaml(text)
        return parse_yaml(text, source="request body")
    if mimetype == "application/json":
        data = request.get_json(silent=True)
        if data is None:
            raise ApiError(400, "the body is not valid JSON", {BODY: ["not valid JSON"]})
        return data
    raise ApiError(415, "send the job as application/json or application/yaml")


def precheck_yaml(text: str) -> None:
    """Refuse aliases and nesting deeper than MAX_YAML_DEPTH, cheaply (libyaml events)."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_FAST_YAML_LOADER):
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError({"_schema": ["YAML aliases (*name) are not allowed in a job"]})
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise ConfigError({"_schema": [f"the YAML body nests deeper than {MAX_YAML_DEPTH} levels"]})
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError as exc:
        raise ConfigError({"_schema": [f"request body is not valid YAML: {exc}"]}) from None
