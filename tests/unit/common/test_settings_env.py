"""Settings from the environment (common/settings.py, parsed by environs): every variable's name,
default and error message."""
from __future__ import annotations

import pytest

from common.settings import RateLimit, Settings

DEFAULTS = Settings()


@pytest.mark.parametrize("name,attr,raw,value", [
    ("TEACHER_MAX_CONTENT_LENGTH", "max_content_length", "2048", 2048),
    ("TEACHER_MAX_UPLOAD_LENGTH", "max_upload_length", " 99 ", 99),
    ("TEACHER_MAX_ATTEMPTS", "max_attempts", "5", 5),
    ("TEACHER_MAX_INTERRUPTIONS", "max_interruptions", "0", 0),
    ("TEACHER_HEARTBEAT_S", "heartbeat_s", "0.5", 0.5),
    ("TEACHER_STALE_AFTER_S", "stale_after_s", "7", 7.0),
    ("TEACHER_CANCEL_GRACE_S", "cancel_grace_s", "1e1", 10.0),
    ("TEACHER_MAX_JOB_SECONDS", "max_job_seconds", "3600", 3600),
    ("TEACHER_VISIBILITY_TIMEOUT_S", "visibility_timeout_s", "30", 30),
    ("TEACHER_RECONCILE_INTERVAL_S", "reconcile_interval_s", "2.5", 2.5),
    ("TEACHER_LOST_MESSAGE_GRACE_S", "lost_message_grace_s", "3", 3.0),
    ("TEACHER_WORKER_BEAT_S", "worker_beat_s", "1", 1.0),
    ("TEACHER_QUEUES", "queues", "gpu, default", ("gpu", "default")),
    ("TEACHER_RATE_LIMIT", "rate_limit", "5/2", RateLimit(5, 2)),
    ("TEACHER_SUBMIT_RATE_LIMIT", "submit_rate_limit", "off", None),
    ("TEACHER_MAX_QUEUED_PER_USER", "max_queued_per_user", "OFF", 0),
])
def test_each_variable_is_read_and_empty_means_its_default(name, attr, raw, value):
    assert getattr(Settings.from_env({name: raw}), attr) == value
    assert getattr(Settings.from_env({name: ""}), attr) == getattr(DEFAULTS, attr)
    assert getattr(Settings.from_env({}), attr) == getattr(DEFAULTS, attr)


@pytest.mark.parametrize("name,raw,message", [
    ("TEACHER_MAX_ATTEMPTS", "three", "TEACHER_MAX_ATTEMPTS must be an integer, got 'three'"),
    ("TEACHER_MAX_JOB_SECONDS", "1.5", "TEACHER_MAX_JOB_SECONDS must be an integer, got '1.5'"),
    ("TEACHER_HEARTBEAT_S", "soon", "TEACHER_HEARTBEAT_S must be a number, got 'soon'"),
    ("TEACHER_HEARTBEAT_S", "nan", "TEACHER_HEARTBEAT_S must be a number, got 'nan'"),
    ("TEACHER_QUEUES", "Bad Queue!", "TEACHER_QUEUES must be comma-separated queue names, bad: ['Bad Queue!']"),
    ("TEACHER_QUEUES", " , ", "TEACHER_QUEUES must be comma-separated queue names, bad: []"),
    ("TEACHER_RATE_LIMIT", "lots", "TEACHER_RATE_LIMIT must be '<requests>/<seconds>' (e.g. '600/60'), '0' or 'off'; "
                                   "got 'lots'"),
    ("TEACHER_SUBMIT_RATE_LIMIT", "0/60", "TEACHER_SUBMIT_RATE_LIMIT: requests and seconds must both be at least 1 "
                                          "(or '0'/'off' to disable); got '0/60'"),
    ("TEACHER_MAX_QUEUED_PER_USER", "many", "TEACHER_MAX_QUEUED_PER_USER must be a whole number, '0' or 'off'; "
                                            "got 'many'"),
    ("TEACHER_MAX_QUEUED_PER_USER", "-1", "TEACHER_MAX_QUEUED_PER_USER must not be negative (use '0' or 'off' to "
                                          "disable); got '-1'"),
    ("TEACHER_MAX_ATTEMPTS", "{name}{raw}", "TEACHER_MAX_ATTEMPTS must be an integer, got '{name}{raw}'"),
])
def test_a_bad_value_is_a_value_error_naming_the_variable_and_the_value(name, raw, message):
    with pytest.raises(ValueError) as info:
        Settings.from_env({name: raw})
    assert str(info.value) == message


def test_the_process_environment_is_the_default_source(monkeypatch):
    monkeypatch.setenv("TEACHER_MAX_ATTEMPTS", "9")
    assert Settings.from_env().max_attempts == 9
    assert Settings.from_env({}).max_attempts == DEFAULTS.max_attempts  # a given mapping only
