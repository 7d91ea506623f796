"""The job service's HTTP API. ``create_app`` is imported lazily so that ``common.settings`` (the
settings, also used by the worker and the CLI) does not pull in Flask."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from flask import Flask


def create_app(config: Mapping[str, Any] | None = None) -> "Flask":
    from api.app import create_app as _create_app

    return _create_app(config)


__all__ = ["create_app"]
