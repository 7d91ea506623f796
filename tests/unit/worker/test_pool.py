"""One worker shape (worker/pool.py): a worker with any pool but solo is refused at start."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.pool import pool_refusal

ROOT = Path(__file__).resolve().parents[3]


def test_only_the_solo_pool_is_accepted():
    from celery.concurrency.prefork import TaskPool as Prefork
    from celery.concurrency.solo import TaskPool as Solo

    assert pool_refusal("solo") is None and pool_refusal(Solo) is None
    for pool, name in (("prefork", "prefork"), ("threads", "threads"), (Prefork, "prefork")):
        why = pool_refusal(pool)
        assert why is not None and "only with --pool solo" in why and f"(got {name})" in why


def test_a_worker_started_without_pool_gets_solo():
    from common.broker import make_celery
    from common.settings import Settings

    assert make_celery(Settings.from_env({})).conf.worker_pool == "solo"


@pytest.mark.parametrize("pool", ["threads"])
def test_a_worker_with_another_pool_exits_2_before_consuming(tmp_path, pool):
    """The real command line; nothing listens on the broker port, so a worker that got past the
    check would hang retrying the connection instead of exiting. (`--pool prefork` is not
    refused: Celery reads it as its default and uses the configured pool, solo, instead.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    env.update(TEACHER_STATE_DIR=str(tmp_path), TEACHER_DATABASE_URL=f"sqlite:///{tmp_path / 's.db'}",
               TEACHER_REDIS_URL="redis://127.0.0.1:9/0")
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--concurrency", "1", "--pool", pool]
    proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: teacher workers run only with --pool solo" in proc.stderr
    assert f"(got {pool})" in proc.stderr
