"""The job service's HTTP API (Flask). Nothing outside api/ and common/apps/ imports it."""
from api.app import create_app

__all__ = ["create_app"]
