"""Service log lines: JSON with service, worker and the job's context (common/logs.py)."""
from __future__ import annotations

import io
import json
import logging
import os
import socket
import threading

import pytest

from common.logs import bind, configure_logging, dict_config, log_context


@pytest.fixture
def capture():
    """configure_logging on a buffer; the handler removed afterwards (root level restored)."""
    buf = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handlers: list[logging.Handler] = []

    def setup(service: str, **kw) -> io.StringIO:
        handlers.append(configure_logging(service, stream=buf, **kw))
        return buf

    yield setup
    for h in handlers:
        root.removeHandler(h)
    root.setLevel(level)


def lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_a_json_line_has_the_service_fields(capture):
    buf = capture("api", json=True)
    logging.getLogger("api.jobs").warning("submitted %s", "job-1")
    (rec,) = lines(buf)
    assert rec["message"] == "submitted job-1"
    assert rec["level"] == "WARNING" and rec["logger"] == "api.jobs" and rec["time"]
    assert rec["service"] == "api"
    assert rec["worker"] == f"{socket.gethostname()}:{os.getpid()}"
    assert "job_id" not in rec  # outside a job


def test_a_jobs_lines_carry_its_id_and_attempt_and_bound_fields_end_with_the_context(capture):
    buf = capture("worker", json=True)
    log = logging.getLogger("worker.supervisor")
    with log_context(job_id="j-42", attempt=3):
        log.info("attempt started")
        bind(child_pid=1234)
        log.info("child running")
    log.info("idle")
    started, running, idle = lines(buf)
    assert (started["job_id"], started["attempt"], started["service"]) == ("j-42", 3, "worker")
    assert "child_pid" not in started and running["child_pid"] == 1234 and running["job_id"] == "j-42"
    assert "job_id" not in idle and "child_pid" not in idle


def test_the_context_is_per_thread(capture):
    buf = capture("worker", json=True)
    with log_context(job_id="mine"):
        t = threading.Thread(target=lambda: logging.getLogger("x").info("other thread"))
        t.start()
        t.join()
    (rec,) = lines(buf)
    assert "job_id" not in rec


def test_an_exception_is_inside_the_one_json_line(capture):
    buf = capture("reconciler", json=True)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("worker.reconciler").exception("pass failed")
    (rec,) = lines(buf)
    assert rec["message"] == "pass failed" and "RuntimeError: boom" in rec["exc_info"]


def test_text_format_from_the_environment(capture, monkeypatch):
    monkeypatch.setenv("TEACHER_LOG_FORMAT", "text")
    buf = capture("reconciler")
    with log_context(job_id="j-1", attempt=2):
        logging.getLogger("worker.reconciler").info("re-sent")
    line = buf.getvalue().strip()
    assert " reconciler INFO re-sent [job_id=j-1 attempt=2]" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_an_unknown_log_format_is_an_error(monkeypatch):
    monkeypatch.setenv("TEACHER_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="TEACHER_LOG_FORMAT must be one of json, text, not 'xml'"):
        configure_logging("api", stream=io.StringIO())


def test_configuring_again_replaces_only_our_handler(capture):
    other = logging.NullHandler()
    logging.getLogger().addHandler(other)
    try:
        capture("api", json=True)
        buf = capture("api", json=True)
        ours = [h for h in logging.getLogger().handlers if getattr(h, "_teacher_service", False)]
        assert len(ours) == 1 and other in logging.getLogger().handlers
        logging.getLogger("a").warning("once")
        assert len(lines(buf)) == 1
    finally:
        logging.getLogger().removeHandler(other)


def test_the_gunicorn_dict_config_gives_json_lines(capsys):
    import logging.config

    logging.config.dictConfig(dict_config("api", json=True))
    try:
        logging.getLogger("gunicorn.error").info("Booting worker")
        rec = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert (rec["message"], rec["service"], rec["logger"]) == ("Booting worker", "api", "gunicorn.error")
    finally:
        root = logging.getLogger()
        for h in list(root.handlers):
            if isinstance(h, logging.StreamHandler) and h.filters:
                root.removeHandler(h)
        for name in ("gunicorn.error", "gunicorn.access"):
            logging.getLogger(name).handlers.clear()
