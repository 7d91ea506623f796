"""Two trainers never write one run directory at once: the next attempt waits for the previous
attempt's orphan (a SIGKILLed worker's trainer, finishing its step after its parent-death SIGTERM)."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.training import ROOT, run_teacher, write_config


def test_a_busy_run_directory_is_a_stop_not_a_failure(tmp_path):
    from worker.training.engine import EXIT_STOPPED, RunDirBusy, exit_code_for, run_dir_lock

    with run_dir_lock(tmp_path):
        with pytest.raises(RunDirBusy) as busy:
            with run_dir_lock(tmp_path, wait_s=0.3):
                pass
    assert exit_code_for(busy.value) == EXIT_STOPPED  # the supervisor retries it as an interruption
    with run_dir_lock(tmp_path, wait_s=0.3):  # released when the holder's block ends
        pass


@pytest.mark.slow
def test_resume_waits_for_the_trainer_that_still_holds_the_run(tmp_path, tiny_config, teacher_env):
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config)
    run = tmp_path / "run"
    env = dict(teacher_env, TEACHER_FAULT="kill_after_epoch:1")
    first = run_teacher(["train", "--config", str(cfg), "--run-dir", str(run)], env)
    assert first.returncode < 0  # SIGKILLed after epoch 1, resumable

    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # stands for a previous attempt's trainer that is still running
    def snapshot() -> dict:  # .alive is touched while waiting: waiting is not a stall (the watchdog)
        return {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".alive"}

    before = snapshot()
    proc = subprocess.Popen([sys.executable, "-m", "common.apps.cli", "train", "--resume", str(run)], env=teacher_env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()  # blocks until it says it waits (or exits)
        assert "waiting for another trainer to release" in line, line
        assert proc.poll() is None
        assert snapshot() == before  # nothing written while the other trainer holds the run
    finally:
        os.close(fd)  # the holder ends
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    assert "resum" in (run / "train.log").read_text().lower()
