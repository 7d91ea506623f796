"""The pure logic behind the job-fault tests (tests/system/test_service_job_faults.py), fast:
exit codes, how an attempt's end maps to the job's outcome, the reasons a user reads, a full
disk while writing a checkpoint, the run-time total across attempts, and a malicious pickle in
a resume checkpoint."""
from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from sqlalchemy import select

from common.settings import Settings
from common.config import ConfigError
from tests.support.training import TINY_CONFIG, write_config
from worker import supervisor as sup
from worker.training import engine
from worker.training.artifacts import RESERVE, RunFiles, naming
from worker.training.checkpoints import CheckpointError, CheckpointManager, load_checkpoint_file

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ----------------------------------------------------------------------------- exit codes
def test_exit_codes_are_the_documented_ones():
    """One table (common.exitcodes) for the trainer, the supervisor and the CLIs; the values are
    a contract with users' scripts (README.md "Exit codes")."""
    from common.exitcodes import ExitCode

    assert [(c.name, int(c)) for c in ExitCode] == [
        ("OK", 0), ("FAILED", 1), ("BAD_INPUT", 2), ("STOPPED", 3), ("NO_SPACE", 4)]
    assert sup.EXIT_STOPPED is engine.EXIT_STOPPED is ExitCode.STOPPED


def _raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


@pytest.mark.parametrize("exc, code", [
    (engine.StopRequested(), 3),
    (OSError(errno.ENOSPC, "No space left on device"), 4),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), 4),
    (_raised_from(RuntimeError("tensorboard writer died"), OSError(errno.ENOSPC, "x")), 4),  # wrapped
    (_raised_from(engine.TrainingError("x"), OSError(errno.ENOSPC, "x")), 4),
    (ConfigError({"data.root": ["missing"]}), 2),
    (engine.TrainingError("loss became nan"), 1),
    (CheckpointError("best.pt: sha256 mismatch"), 1),
    (OSError(errno.EACCES, "Permission denied"), 1),  # other disk errors are plain failures
    (RuntimeError("a bug"), 1),
])
def test_exit_code_for(exc, code):
    assert engine.exit_code_for(exc) == code


def test_no_space_message_names_the_file_relative_to_the_run(tmp_path):
    exc = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "checkpoints" / "epoch_0002.pt"))
    assert engine.no_space_message(exc, tmp_path) == "no space left on device while writing checkpoints/epoch_0002.pt"
    assert engine.no_space_message(OSError(errno.EDQUOT, "x", "/elsewhere/f"), tmp_path) == \
        "disk quota exceeded while writing /elsewhere/f"
    assert engine.no_space_message(OSError(errno.ENOSPC, "x")) == "no space left on device while writing the run's files"


def test_teacher_train_exits_4_with_the_reason_on_a_full_disk(tmp_path, monkeypatch):
    def full(cfg, run_dir, **_):
        raise _raised_from(engine.TrainingError("x"), OSError(errno.ENOSPC, "No space", str(Path(run_dir) / "history.json")))

    monkeypatch.setattr(engine, "train", full)
    from worker.training.cli import train

    result = CliRunner().invoke(train, ["--config", str(write_config(tmp_path / "c.yaml", TINY_CONFIG)),
                                        "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 4, result.output
    assert "no space left on device while writing history.json" in result.output
    assert f"resume with: teacher train --resume {tmp_path / 'run'}" in result.output


# ----------------------------------------------------------------------------- job outcomes
O = sup.Outcome  # (a stop is named by the outcome the supervisor stops the child for)


@pytest.mark.parametrize("rc, stop, cancel, outcome", [
    (0, None, False, O.succeeded),
    (0, O.time_limit, False, O.succeeded),       # finished just as the limit passed
    (0, O.cancelled, True, O.succeeded),         # finished before the cancel took effect
    (3, O.cancelled, True, O.cancelled),
    (4, None, True, O.cancelled),
    (3, O.time_limit, False, O.time_limit),      # SIGTERM from the time limit: exit 3, not requeued
    (-9, O.time_limit, False, O.time_limit),     # ignored SIGTERM, was killed
    (4, None, False, O.no_space),
    (4, O.interrupted, False, O.no_space),       # a full disk is not fixed by resuming elsewhere
    (3, None, False, O.interrupted),
    (3, O.interrupted, False, O.interrupted),
    (-9, None, False, O.interrupted),         # OOM kill
    (1, O.superseded, False, O.interrupted),
    (2, None, False, O.bad_input),
    (1, None, False, O.failed),
    (120, None, False, O.failed),
])
def test_classify_exit(rc, stop, cancel, outcome):
    assert sup.classify_exit(rc, stop, cancel) == outcome


def test_reasons():
    reason = sup.time_limit_reason(31.4, 30)
    assert reason.startswith("time limit: ") and "31s" in reason and "maximum of 30s" in reason
    assert sup.no_space_reason().startswith("no space left on device while writing the run files: the job volume is full")
    assert sup.no_space_reason("no space left on device while writing steps.jsonl").startswith(
        "no space left on device while writing steps.jsonl: the job volume is full; checkpoints written before are intact")


# ----------------------------------------------------------------------------- full disk
def _small_state(epoch: int) -> dict:
    return {"format": "teacher-checkpoint/1", "model": {"w": torch.full((4,), float(epoch))}, "epoch": epoch}


def _manager(directory: Path) -> CheckpointManager:
    return CheckpointManager(directory, keep_last=2, every_epochs=1, best_metric="val.top1", best_mode="max")


def test_a_checkpoint_write_that_hits_a_full_disk_names_the_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    ckpts = _manager(tmp_path / "checkpoints")
    ckpts.save(_small_state(1), epoch=1, step=4, metrics={"val.top1": 10.0})
    before = {p.name: p.read_bytes() for p in ckpts.dir.iterdir()}

    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the data does not fit: reported at fsync, as on ext4 or NFS
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".tmp-epoch_0002.pt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as info:
        ckpts.save(_small_state(2), epoch=2, step=8, metrics={"val.top1": 20.0})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(ckpts.dir / "epoch_0002.pt")
    assert engine.no_space_message(engine.find_no_space(info.value), tmp_path) == \
        "no space left on device while writing checkpoints/epoch_0002.pt"
    monkeypatch.setattr(os, "fsync", real_fsync)
    # nothing half-written, nothing changed: the manifest still describes epoch 1 exactly
    assert {p.name: p.read_bytes() for p in ckpts.dir.iterdir()} == before
    state, entry = _manager(ckpts.dir).load_latest()
    assert entry.epoch == 1 and torch.equal(state["model"]["w"], torch.ones(4))


def test_run_files_name_the_file_a_failed_write_was_for(tmp_path, monkeypatch):
    files = RunFiles(tmp_path)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError) as info:
        files.write_progress({"status": "running"})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "progress.json")
    assert [p.name for p in tmp_path.iterdir()] == []
    with pytest.raises(OSError) as info, naming(tmp_path / "x.json"):
        raise OSError(errno.EACCES, "Permission denied", "/some/where/else")  # a real name is kept
    assert info.value.filename == "/some/where/else"


def test_the_ballast_file_is_set_aside_and_released(tmp_path):
    files = RunFiles(tmp_path)
    assert files.reserve_space() and (tmp_path / RESERVE).stat().st_size > 0
    files.release_reserve()
    files.release_reserve()  # idempotent
    assert not (tmp_path / RESERVE).exists()


def test_supervisor_config_write_on_a_full_disk_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text("old: 1\n")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError) as info:
        sup._write_atomic(path, b"new: 2\n")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"] and path.read_text() == "old: 1\n"


# ----------------------------------------------------------------------------- run time over attempts
def _store(tmp_path: Path, config: dict | None = None, **settings_kw):
    from common.auth import create_token
    from common.store import User, transaction
    from common.store.jobs import create_job
    from worker.store import sessions_for

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'state.db'}", jobs_root=tmp_path / "jobs", **settings_kw)
    sessions = sessions_for(settings.database_url)
    with transaction(sessions) as s:
        create_token(s, "alice")
        user = s.scalar(select(User).where(User.name == "alice"))
        job_id = create_job(s, user=user, config=dict(config or TINY_CONFIG), name="tiny", queue="default", priority=5,
                            max_attempts=3).id
    return settings, sessions, job_id


def _set(sessions, job_id: str, **fields) -> None:
    from common.store import transaction
    from common.store.jobs import lock_job

    with transaction(sessions) as s:
        job = lock_job(s, job_id)
        for k, v in fields.items():
            setattr(job, k, v)


def _row(sessions, job_id: str):
    from common.store import Job

    with sessions() as s:
        return s.scalar(select(Job).where(Job.id == job_id))


def test_the_time_limit_counts_earlier_attempts(tmp_path):
    settings, sessions, job_id = _store(tmp_path, max_job_seconds=60)
    supervisor = sup.Supervisor(settings, enqueue=lambda *a: None)
    assert _row(sessions, job_id).run_seconds == 0.0
    # an interrupted job keeps what it used: the next attempt gets only the rest
    _set(sessions, job_id, status="interrupted", attempts=1, run_seconds=45.5)
    claim = supervisor.claim(job_id)
    assert claim is not None and claim.attempt == 2 and claim.run_seconds == 45.5
    # its worker died after the total passed the limit: the next claim fails it, no new attempt
    _set(sessions, job_id, status="interrupted", claim_token=None, run_seconds=61.0)
    assert supervisor.claim(job_id) is None
    row = _row(sessions, job_id)
    assert row.status == "failed" and row.attempts == 2 and row.failure_reason.startswith("time limit: ")


# ----------------------------------------------------------------------------- malicious pickle
class Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_resume_checkpoint_is_refused_and_the_previous_one_used(tmp_path, caplog):
    """Like a truncated file: skipped with a warning for the newest one that verifies and loads."""
    marker = tmp_path / "pwned"
    ckpts = _manager(tmp_path / "checkpoints")
    ckpts.save(_small_state(1), epoch=1, step=4, metrics={"val.top1": 10.0})
    (ckpts.dir / "last.pt").unlink()  # replaced, not written into: it is a hard link to the epoch file
    torch.save({"model": Evil(marker)}, ckpts.dir / "last.pt")
    manifest = json.loads((ckpts.dir / "manifest.json").read_text())
    from worker.training.checkpoints import sha256_file

    for e in manifest["checkpoints"]:  # the manifest vouches for it: the loader itself must refuse
        if e["name"] == "last.pt":
            e["sha256"] = sha256_file(ckpts.dir / "last.pt")
    (ckpts.dir / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(CheckpointError) as info:
        load_checkpoint_file(ckpts.dir / "last.pt", expected_sha256=manifest["checkpoints"][-1]["sha256"])
    message = str(info.value)
    assert message.startswith("last.pt: cannot be loaded safely: refused by weights-only loading")
    assert "posix.system" in message and "weights_only` set to `False`" not in message and "\n" not in message

    with caplog.at_level(logging.WARNING):
        state, entry = _manager(ckpts.dir).load_latest()
    assert entry.name == "epoch_0001.pt" and state["epoch"] == 1
    assert "last.pt: cannot be loaded safely" in caplog.text and "trying an older checkpoint" in caplog.text
    assert not marker.exists()


# ----------------------------------------------------------------------------- finished runs, interruptions
def _finished_run(settings: Settings, job_id: str, epochs: int = 2) -> "JobPaths":
    """A run directory as a completed `teacher train` leaves it (small fake checkpoint bytes)."""
    import hashlib
    import time as time_

    from common.store.jobs import JobPaths

    paths = JobPaths.of(settings.jobs_root, job_id)
    paths.checkpoints.mkdir(parents=True)
    entries = []
    for name, epoch in [(f"epoch_{epochs:04d}.pt", epochs), ("last.pt", epochs), ("best.pt", epochs)]:
        data = f"weights of epoch {epoch}".encode()
        (paths.checkpoints / name).write_bytes(data)
        entries.append({"name": name, "epoch": epoch, "step": 4 * epoch, "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(), "metrics": {"val.top1": 50.0}, "created_at": 0})
    (paths.manifest).write_text(json.dumps({"best": {"metric": "val.top1", "value": 50.0, "epoch": epochs},
                                            "checkpoints": entries}))
    split = {"loss": 1.0, "top1": 50.0, "top5": 90.0, "samples": 8}
    (paths.history).write_text(json.dumps({"epochs": [{"epoch": e, "step": 4 * e, "train": split, "val": split}
                                                      for e in range(1, epochs + 1)]}))
    (paths.progress).write_text(json.dumps({"status": "succeeded", "phase": "done", "updated_at": time_.time()}))
    (paths.run / "config.yaml").write_text("x: 1\n")
    return paths


def test_run_finished_needs_every_epoch_and_verified_checkpoints(tmp_path):
    settings = Settings(jobs_root=tmp_path / "jobs")
    paths = _finished_run(settings, "a" * 32, epochs=2)
    assert sup.run_finished(paths, 2)
    assert not sup.run_finished(paths, 3)  # the config asks for more epochs than the history has
    (paths.checkpoints / "best.pt").write_bytes(b"truncated")
    assert not sup.run_finished(paths, 2)  # a checkpoint that does not verify
    paths = _finished_run(settings, "b" * 32, epochs=2)
    paths.progress.write_text(json.dumps({"status": "running", "phase": "train"}))
    assert not sup.run_finished(paths, 2)
    paths.progress.write_text(json.dumps({"status": "succeeded"}))
    manifest = json.loads(paths.manifest.read_text())
    manifest["checkpoints"] = [e for e in manifest["checkpoints"] if e["name"] != "last.pt"]
    paths.manifest.write_text(json.dumps(manifest))
    assert not sup.run_finished(paths, 2)  # the save of the last epoch did not complete


def test_a_claim_records_a_run_that_finished_before_its_worker_died(tmp_path):
    """The worker died after the child's "done" and before recording it: the next delivery
    records succeeded without a new attempt (nothing is trained again)."""
    cfg = dict(TINY_CONFIG, optim={**TINY_CONFIG["optim"], "epochs": 2})
    settings, sessions, job_id = _store(tmp_path, config=cfg)
    _finished_run(settings, job_id, epochs=2)
    _set(sessions, job_id, status="running", attempts=1, claimed_at=sup.utcnow(), claim_token="t",
         heartbeat_at=sup.utcnow() - __import__("datetime").timedelta(hours=1))
    enqueued: list = []
    assert sup.Supervisor(settings, enqueue=lambda *a: enqueued.append(a)).claim(job_id) is None
    row = _row(sessions, job_id)
    assert (row.status, row.attempts, row.exit_code, row.failure_reason) == ("succeeded", 1, 0, None)
    assert row.result["best"]["epoch"] == 2 and row.progress["status"] == "succeeded"
    assert row.claim_token is None and enqueued == []


def test_lost_attempts_that_never_trained_and_graceful_stops_are_interruptions(tmp_path):
    import datetime as dt_

    settings, sessions, job_id = _store(tmp_path, max_interruptions=2)
    supervisor = sup.Supervisor(settings, enqueue=lambda *a: None)
    stale = dict(heartbeat_at=sup.utcnow() - dt_.timedelta(hours=1))
    assert supervisor.claim(job_id).attempt == 1
    _set(sessions, job_id, **stale)  # died while starting: no progress since the claim
    claim = supervisor.claim(job_id)
    assert claim.attempt == 2 and _row(sessions, job_id).interruptions == 1
    # a graceful stop (exit 3 after SIGTERM) is an interruption too, with a reason that says so
    paths = sup.JobPaths.of(settings.jobs_root, job_id)
    paths.run.mkdir(parents=True)
    assert supervisor._record_outcome(claim, paths, 3, sup.Outcome.interrupted, 1.0, 0.0) == "interrupted"
    row = _row(sessions, job_id)
    assert row.interruptions == 2 and row.attempts == 2
    assert "worker shutdown" in row.failure_reason and "died" not in row.failure_reason
    # the interruption cap, not max_attempts (3), ends it; the reason names graceful stops
    assert supervisor.claim(job_id) is None
    row = _row(sessions, job_id)
    assert row.status == "failed" and row.attempts == 2 and row.failure_reason.startswith("interrupted too often")
    assert "(its worker or training process died)" not in row.failure_reason


def test_workers_lost_while_training_are_interruptions_not_failures(tmp_path):
    """Issue 15: a worker lost mid-training (its host gone without notice) is an interruption,
    capped by TEACHER_MAX_INTERRUPTIONS, not a failure of the job counted by max_attempts."""
    import datetime as dt_
    import time as time_

    settings, sessions, job_id = _store(tmp_path, max_interruptions=5)
    supervisor = sup.Supervisor(settings, enqueue=lambda *a: None)
    assert _row(sessions, job_id).max_attempts == 3  # so claims 4 and 5 show the losses are not failures
    for attempt in (1, 2, 3, 4, 5):
        assert supervisor.claim(job_id).attempt == attempt
        _set(sessions, job_id, heartbeat_at=sup.utcnow() - dt_.timedelta(hours=1),
             progress={"status": "running", "updated_at": time_.time() + 1})  # it trained, then died
    assert supervisor.claim(job_id) is None
    row = _row(sessions, job_id)
    assert row.status == "failed" and row.attempts == 5 and (row.interruptions, row.failures) == (5, 0)
    assert row.failure_reason.startswith("interrupted too often: gave up after 5 interruptions")