"""`teacher prune` against a real SQLite job store and job directories on disk."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from common.store import Job, User, make_engine, make_sessionmaker, transaction, upgrade, utcnow

from tests.support.training import ROOT


@pytest.fixture
def store(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'state' / 'teacher.db'}"
    engine = make_engine(url)
    upgrade(engine)
    factory = make_sessionmaker(engine)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    env.update(TEACHER_DATABASE_URL=url, TEACHER_JOBS_ROOT=str(tmp_path / "jobs"))
    yield factory, env, tmp_path / "jobs"
    engine.dispose()


def _job(factory, jobs_root: Path, *, status: str, age_days: float, after: str | None = None,
         init_from: str | None = None) -> str:
    job_id = uuid.uuid4().hex
    with transaction(factory) as s:
        user = s.scalar(select(User).where(User.name == "alice")) or User(name="alice")
        s.add(user)
        s.flush()
        finished = utcnow() - dt.timedelta(days=age_days) if status in ("succeeded", "failed", "cancelled") else None
        s.add(Job(id=job_id, user_id=user.id, name="j", queue="default", status=status, config={}, after_id=after,
                  init_from={"job": init_from, "checkpoint": "last"} if init_from else None, finished_at=finished))
    ckpts = jobs_root / job_id / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    entries = []
    for epoch in (1, 2):
        (ckpts / f"epoch_{epoch:04d}.pt").write_bytes(os.urandom(4096) + bytes([epoch]))
    os.link(ckpts / "epoch_0002.pt", ckpts / "last.pt")
    os.link(ckpts / "epoch_0001.pt", ckpts / "best.pt")  # the best epoch was the first
    for f in sorted(ckpts.glob("*.pt")):
        entries.append({"name": f.name, "sha256": hashlib.sha256(f.read_bytes()).hexdigest(), "size": f.stat().st_size})
    (ckpts / "manifest.json").write_text(json.dumps({"checkpoints": entries}))
    (jobs_root / job_id / "run" / "history.json").write_text("{}")
    return job_id


def prune(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "common.apps.cli", "prune", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _deleted(factory, job_id: str) -> bool:
    with transaction(factory) as s:
        return s.scalar(select(Job.deleted_at).where(Job.id == job_id)) is not None


def test_prune_deletes_old_finished_jobs_only(store):
    factory, env, jobs = store
    old = _job(factory, jobs, status="succeeded", age_days=40)
    old_failed = _job(factory, jobs, status="failed", age_days=31)
    recent = _job(factory, jobs, status="succeeded", age_days=2)
    running = _job(factory, jobs, status="running", age_days=0)
    parent = _job(factory, jobs, status="succeeded", age_days=45)
    _job(factory, jobs, status="waiting", age_days=0, after=parent)  # starts from the parent later

    dry = prune(env, "--older-than", "30d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "3 job(s)" in dry.stdout and (jobs / old).is_dir() and not _deleted(factory, old)

    done = prune(env, "--older-than", "30d")
    assert done.returncode == 0, done.stderr
    assert "2 job(s) deleted, 1 kept" in done.stdout and f"kept {parent}" in done.stderr
    for job_id in (old, old_failed):
        assert not (jobs / job_id).exists() and _deleted(factory, job_id)
    for job_id in (recent, running, parent):
        assert (jobs / job_id / "run" / "checkpoints" / "best.pt").is_file() and not _deleted(factory, job_id)
    assert not list(jobs.glob(".deleted-*"))


def test_prune_keep_best_keeps_the_job_and_its_best_checkpoint(store):
    factory, env, jobs = store
    job_id = _job(factory, jobs, status="succeeded", age_days=40)
    ckpts = jobs / job_id / "run" / "checkpoints"
    best_sha = hashlib.sha256((ckpts / "best.pt").read_bytes()).hexdigest()

    done = prune(env, "--older-than", "30d", "--keep-best")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in ckpts.glob("*.pt")) == ["best.pt"]
    assert hashlib.sha256((ckpts / "best.pt").read_bytes()).hexdigest() == best_sha
    manifest = json.loads((ckpts / "manifest.json").read_text())
    assert [e["name"] for e in manifest["checkpoints"]] == ["best.pt"]
    assert manifest["checkpoints"][0]["sha256"] == best_sha
    assert not _deleted(factory, job_id) and (jobs / job_id / "run" / "history.json").is_file()


@pytest.mark.parametrize("age", ["30", "thirty days", "30w", ""])
def test_prune_bad_age_is_a_usage_error(store, age):
    _, env, _ = store
    r = prune(env, "--older-than", age)
    assert r.returncode == 2 and "--older-than" in r.stderr


@pytest.mark.parametrize("keep_best", [False, True])
def test_a_checkpoint_an_unfinished_job_starts_from_is_kept(store, keep_best):
    """``init_from`` need not be the job's ``after`` (a body may name both): still a dependent."""
    factory, env, jobs = store
    other = _job(factory, jobs, status="succeeded", age_days=40)
    source = _job(factory, jobs, status="succeeded", age_days=40)
    _job(factory, jobs, status="waiting", age_days=0, after=other, init_from=source)  # starts from source's last.pt
    done = prune(env, "--older-than", "30d", *(["--keep-best"] if keep_best else []))
    assert done.returncode == 0, done.stderr
    assert f"kept {source}" in done.stderr
    assert (jobs / source / "run" / "checkpoints" / "last.pt").is_file() and not _deleted(factory, source)
