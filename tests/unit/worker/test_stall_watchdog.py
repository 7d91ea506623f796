"""The stall watchdog's rule, with a fake clock: it fires when the trainer's liveness file has
not changed for the timeout, counting from the attempt's start until the file is first touched."""
from __future__ import annotations

import json
import os

from common.settings import Settings
from common.store.lifecycle import Claim
from worker.supervisor import StallWatchdog, stall_timeout_s


def test_fires_only_after_the_timeout_without_a_touch(tmp_path):
    now = [1000.0]
    alive, progress = tmp_path / ".alive", tmp_path / "progress.json"
    dog = StallWatchdog(alive, 30.0, clock=lambda: now[0])
    now[0] += 29
    assert dog.check(progress) is None  # no file yet: counts from the start
    now[0] += 2
    assert dog.check(progress) == ("stalled before its first step for 31 s "
                                   "(no training progress; stall timeout 30 s)")
    alive.touch()
    os.utime(alive, (now[0], now[0]))
    progress.write_text(json.dumps({"status": "running", "epoch": 2, "step": 17}))
    now[0] += 10
    assert dog.check(progress) is None  # touched 10 s ago
    now[0] += 25
    assert dog.check(progress).startswith("stalled at epoch 2 step 17 for 35 s")


def test_an_older_file_from_a_previous_attempt_does_not_count(tmp_path):
    alive = tmp_path / ".alive"
    alive.touch()
    os.utime(alive, (10.0, 10.0))  # left by the attempt before
    now = [5000.0]
    dog = StallWatchdog(alive, 60.0, clock=lambda: now[0])
    now[0] += 59
    assert dog.check(tmp_path / "progress.json") is None


def test_the_jobs_own_timeout_wins_over_the_services():
    settings = Settings.from_env({"TEACHER_STALL_TIMEOUT_S": "900"})
    assert settings.stall_timeout_s == 900.0
    claim = Claim("j", 1, "t", {"runtime": {"stall_timeout_s": 45}})
    assert stall_timeout_s(claim, settings) == 45.0
    assert stall_timeout_s(Claim("j", 1, "t", {"runtime": {"stall_timeout_s": None}}), settings) == 900.0
    assert Settings.from_env({}).stall_timeout_s == 1800.0
