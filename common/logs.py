"""Service logs: one JSON object per line (python-json-logger), so that a log system can follow
one job across the API, the worker and the reconciler.

Every line carries ``service`` (api, worker, reconciler), ``worker`` (hostname:pid of the process
that wrote it) and, inside a job, ``job_id`` and ``attempt``::

    configure_logging("worker")                 # once, at process start
    with log_context(job_id=job.id, attempt=n): # around one job's handling
        ...
        bind(child_pid=proc.pid)                # a field learned later, until the context ends

``TEACHER_LOG_FORMAT=text`` gives human-readable lines instead (same fields, at the end). The
training console (the run's train.log, written by the trainer's own logging) is not a service
log and stays human-readable.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

from pythonjsonlogger.json import JsonFormatter

LOG_FORMAT_ENV = "TEACHER_LOG_FORMAT"
LOG_FORMATS = ("json", "text")

# The fields of the job being handled in this thread/task; empty outside a job.
_fields: ContextVar[dict[str, Any]] = ContextVar("teacher_log_fields", default={})


def worker_id() -> str:
    """hostname:pid, computed per call: a forked child has a pid of its own."""
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (e.g. job_id, attempt) to every line logged inside the block, in this
    thread or asyncio task; what :func:`bind` adds inside it ends with it too."""
    token = _fields.set({**_fields.get(), **fields})
    try:
        yield
    finally:
        _fields.reset(token)


def bind(**fields: Any) -> None:
    """Add fields learned later to the current context (until the enclosing
    :func:`log_context` ends; for the rest of the thread if there is none)."""
    _fields.set({**_fields.get(), **fields})


def current_fields() -> dict[str, Any]:
    return dict(_fields.get())


class ContextFilter(logging.Filter):
    """Sets service, worker and the context's fields on each record a handler emits (a filter on
    the handler, not a logger, so that records propagated from any logger get them)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.worker = worker_id()
        for key, value in _fields.get().items():
            setattr(record, key, value)
        return True


# Record attributes that are not context fields (what the text format leaves out of its tail).
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "service", "worker"}


class TextFormatter(logging.Formatter):
    """``<time> <service> <LEVEL> <message> [job_id=… attempt=…]``: the reconciler's old format,
    with the context's fields appended."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(service)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        if not extra:
            return line
        tail = " ".join(f"{k}={v}" for k, v in extra.items())
        head, sep, rest = line.partition("\n")  # after the message, before a traceback
        return f"{head} [{tail}]{sep}{rest}"


def json_formatter() -> logging.Formatter:
    return JsonFormatter("{asctime}{levelname}{name}{message}", style="{",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                         json_ensure_ascii=False)


def use_json(json: bool | None = None) -> bool:
    """``json`` if given, else TEACHER_LOG_FORMAT (json unless it says text)."""
    if json is not None:
        return json
    value = os.environ.get(LOG_FORMAT_ENV, "json").strip().lower() or "json"
    if value not in LOG_FORMATS:
        raise ValueError(f"{LOG_FORMAT_ENV} must be one of {', '.join(LOG_FORMATS)}, not {value!r}")
    return value == "json"


def make_handler(service: str, *, json: bool | None = None, stream: Any = None) -> logging.Handler:
    """A stream handler (stderr by default) writing this service's lines."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(json_formatter() if use_json(json) else TextFormatter())
    handler.addFilter(ContextFilter(service))
    handler._teacher_service = True  # type: ignore[attr-defined]
    return handler


def configure_logging(service: str, *, json: bool | None = None, level: int | str = logging.INFO,
                      stream: Any = None) -> logging.Handler:
    """Route the root logger to one handler for ``service``; calling it again replaces the
    handler it added (and only that), so it is safe in tests and after a fork."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_teacher_service", False):
            root.removeHandler(h)
            h.close()
    handler = make_handler(service, json=json, stream=stream)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def dict_config(service: str, *, json: bool | None = None) -> dict[str, Any]:
    """The same setup as a logging.config.dictConfig dict, for servers configured that way
    (gunicorn's ``logconfig_dict``): root, gunicorn.error and gunicorn.access all to stderr."""
    formatter = {"()": "common.logs.json_formatter"} if use_json(json) else {"()": "common.logs.TextFormatter"}
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "service",
               "filters": ["context"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "common.logs.ContextFilter", "service": service}},
        "formatters": {"service": formatter},
        "handlers": {"service": handler},
        "root": {"level": "INFO", "handlers": ["service"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["service"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["service"], "propagate": False},
        },
    }
