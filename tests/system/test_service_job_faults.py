"""Faults inside a job, with real processes (gunicorn, a Celery worker, redis-server, training
children, real files): the job volume filling up, the maximum run time, and a checkpoint that
carries a malicious pickle. Each ends the job in a definite, explained state and leaves the worker
serving the next job."""
from __future__ import annotations

import copy
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

from common.store.jobs import JobPaths
from tests.support.procs import wait_until
from tests.support.stack import db_job

pytestmark = pytest.mark.slow

FINISHED = {"succeeded", "failed", "cancelled"}
# What a failed or killed writer could leave behind: atomic-write temp files (common.atomic,
# the supervisor's config.yaml), the kill_in_checkpoint fault's partial file, the trainer's
# ballast file (worker/training/artifacts.py) that must be gone once a run has ended.
LEFTOVER = re.compile(r"^\.tmp-|\.tmp$|\.partial$|^\.space-reserve$")


# ----------------------------------------------------------------------------- helpers
def small_config(service_config: dict[str, Any], **optim: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(service_config)
    # 4.4 MB checkpoints (resnet18's are 134 MB): a small tmpfs holds several, and it is faster.
    cfg["model"]["arch"] = "shufflenet_v2_x0_5"
    cfg["optim"].update(optim)
    return cfg




def manifest(paths: JobPaths) -> dict[str, Any]:
    return json.loads(paths.manifest.read_text()) if paths.manifest.is_file() else {"checkpoints": []}


def manifest_epochs(paths: JobPaths) -> set[int]:
    try:
        return {c["epoch"] for c in manifest(paths)["checkpoints"]}
    except ValueError:  # never half-written (atomic), but be safe while polling
        return set()


def assert_checkpoints_intact(paths: JobPaths) -> list[dict[str, Any]]:
    """Every checkpoint the manifest lists: same bytes as recorded, and loadable safely."""
    entries = manifest(paths)["checkpoints"]
    assert entries, "no checkpoint recorded"
    for e in entries:
        data = (paths.checkpoints / e["name"]).read_bytes()
        assert len(data) == e["size"] and hashlib.sha256(data).hexdigest() == e["sha256"], e["name"]
        state = torch.load(paths.checkpoints / e["name"], map_location="cpu", weights_only=True)
        assert state["epoch"] == e["epoch"] and "model" in state, e["name"]
    return entries


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if LEFTOVER.search(p.name))


def attempt_banners(paths: JobPaths) -> int:
    return sum(line.startswith("=== attempt") for line in paths.log.read_text(errors="replace").splitlines())


def process_gone(pid: int) -> bool:
    """Exited (or a zombie nobody reaps: its parent, the killed worker, is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def fill(volume: Path, name: str) -> Path:
    """Allocate every free byte of ``volume`` in one file. fallocate takes the space in one
    call, so a writer that frees space a moment later (a failed write removing its temp file,
    the trainer releasing its ballast) gets to keep it."""
    path = volume / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(50):
            st = os.statvfs(volume)
            free = st.f_bavail * st.f_frsize
            if free == 0:
                break
            try:
                os.posix_fallocate(fd, os.fstat(fd).st_size, free)
            except OSError as exc:  # someone wrote meanwhile: take what is left
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    st = os.statvfs(volume)
    assert st.f_bavail == 0, f"{volume} still has {st.f_bavail * st.f_frsize} bytes free"
    return path


class Evil:
    """Unpickling this runs ``touch MARKER``: what `torch.load(weights_only=False)` would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def plant_evil_checkpoint(paths: JobPaths, name: str, marker: Path) -> dict[str, Any]:
    """Replace checkpoint ``name`` with a malicious pickle and make the manifest vouch for it
    (as an attacker who can write the volume would), so the bytes reach the loader itself."""
    path = paths.checkpoints / name
    path.unlink()  # replaced, not written into: it is a hard link to an epoch file
    torch.save({"format": "teacher-checkpoint/1", "model": Evil(marker), "epoch": 1}, path)
    data = path.read_bytes()
    man = manifest(paths)
    entry = next(e for e in man["checkpoints"] if e["name"] == name)
    entry.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    paths.manifest.write_text(json.dumps(man, indent=2))
    return entry


@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path, int], Path]]:
    """Mount a size-limited tmpfs (needs root, or CAP_SYS_ADMIN); lazily unmounted afterwards."""
    mounted: list[Path] = []

    def mount(path: Path, size_mb: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(b"tmpfs", str(path).encode(), b"tmpfs", 0, f"size={size_mb}m".encode()) != 0:
            err = ctypes.get_errno()
            if err == errno.EPERM:
                pytest.skip(f"cannot mount a tmpfs here (EPERM: needs root or CAP_SYS_ADMIN): {path}")
            raise OSError(err, os.strerror(err), str(path))
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        if shutil.which("umount"):
            subprocess.run(["umount", "-l", str(path)], check=False)
        else:
            ctypes.CDLL(None, use_errno=True).umount2(str(path).encode(), 2)  # MNT_DETACH


# ----------------------------------------------------------------------------- 9. volume full
def test_full_job_volume_fails_the_job_keeps_its_checkpoints_and_the_worker(stack_factory, service_config, tmpfs):
    stack = stack_factory()
    volume = tmpfs(stack.settings.jobs_root, 48)  # the SQLite store and the logs stay in stack.base
    stack.start_api()
    stack.headers = stack.token("alice")
    worker = stack.start_worker()

    job_id = stack.submit(small_config(service_config, epochs=50))
    paths = JobPaths.of(volume, job_id)
    wait_until(lambda: 1 in manifest_epochs(paths), 240, "the epoch-1 checkpoint", interval=0.1)
    fillers = [fill(volume, "filler")]  # the trainer's next write fails with ENOSPC

    job = stack.wait_status(job_id, FINISHED | {"interrupted"}, timeout=120)
    reason = job["failure_reason"] or ""
    assert job["status"] == "failed" and job["exit_code"] == 4, job
    assert job["attempts"] == 1, job
    assert "no space left on device" in reason and "the job volume is full" in reason, reason
    # the trainer released its ballast file, so it could say what it was writing
    assert re.search(r"while writing (steps\.jsonl|progress\.json|history\.json|train\.log|config\.yaml"
                     r"|checkpoints/\S+\.(pt|json)|tb/\S+)", reason), reason
    assert job["progress"]["status"] == "failed"

    # not retried: a full disk is not fixed by running again
    for _ in range(2):
        stack.reconcile()
    again = db_job(stack, job_id)
    assert (again.status, again.attempts, again.child_pid) == ("failed", 1, None)
    assert attempt_banners(paths) == 1

    # what was written before the disk filled is intact, and nothing half-written is left
    assert 1 in {e["epoch"] for e in assert_checkpoints_intact(paths)}
    assert leftovers(volume) == []
    assert worker.poll() is None

    # the supervisor's own writes (config.yaml, child.log) on the full volume: the job fails
    # before any child starts, with the same reason, and the worker carries on
    fillers.append(fill(volume, "filler2"))
    blocked = stack.submit(small_config(service_config, epochs=1))
    job = stack.wait_status(blocked, FINISHED | {"interrupted"}, timeout=60)
    assert job["status"] == "failed" and job["attempts"] == 1 and job["exit_code"] is None, job
    assert job["failure_reason"].startswith("no space left on device while writing config.yaml: the job volume is full")
    assert not JobPaths.of(volume, blocked).run.exists()
    assert leftovers(volume) == []
    assert worker.poll() is None

    # space again: the same worker process runs the next job to the end
    for f in fillers:
        f.unlink()
    after = stack.submit(small_config(service_config, epochs=1))
    job = stack.wait_status(after, FINISHED | {"interrupted"}, timeout=240)
    assert job["status"] == "succeeded" and job["attempts"] == 1, (job, stack.logs())
    assert db_job(stack, after).worker == db_job(stack, job_id).worker and worker.poll() is None
    assert_checkpoints_intact(JobPaths.of(volume, after))
    assert leftovers(volume) == []


# ----------------------------------------------------------------------------- 10. time limit
LIMIT_S = 30


def test_time_limit_fails_the_job_keeps_its_checkpoint_and_is_not_retried(stack_factory, service_config):
    stack = stack_factory(TEACHER_MAX_JOB_SECONDS=str(LIMIT_S))
    stack.start_api()
    stack.headers = stack.token("alice")
    worker = stack.start_worker()
    # far more epochs than fit in the limit; an epoch is a few seconds even on a slow machine
    job_id = stack.submit(small_config(service_config, epochs=1000))
    paths = JobPaths.of(stack.settings.jobs_root, job_id)
    wait_until(lambda: 1 in manifest_epochs(paths), LIMIT_S, "the epoch-1 checkpoint, well within the limit",
               interval=0.2)

    job = stack.wait_status(job_id, FINISHED | {"interrupted"}, timeout=LIMIT_S + 90)
    reason = job["failure_reason"] or ""
    assert job["status"] == "failed" and reason.startswith("time limit: "), job
    assert f"maximum of {LIMIT_S}s" in reason and "counted over all attempts" in reason, reason
    assert job["exit_code"] == 3 and job["attempts"] == 1, job  # SIGTERM: stopped after a step
    assert job["progress"]["status"] == "stopped" and job["progress"]["epoch"] < 1000
    row = db_job(stack, job_id)
    assert LIMIT_S < row.run_seconds < LIMIT_S + 60, row.run_seconds  # the stored total

    # not retried: the reconciler leaves a failed job alone, nothing runs it again
    for _ in range(2):
        stack.reconcile()
    row = db_job(stack, job_id)
    assert (row.status, row.attempts, row.child_pid, row.claim_token) == ("failed", 1, None, None)
    assert attempt_banners(paths) == 1

    # the checkpoints written before the limit are complete and load safely
    entries = assert_checkpoints_intact(paths)
    last = next(e for e in entries if e["name"] == "last.pt")
    assert last["epoch"] >= 1 and last["epoch"] == max(e["epoch"] for e in entries)
    history = json.loads(paths.history.read_text())
    assert [e["epoch"] for e in history["epochs"]][: last["epoch"]] == list(range(1, last["epoch"] + 1))
    assert worker.poll() is None


# ----------------------------------------------------------------------------- 17. malicious pickle
def test_malicious_pickle_checkpoint_is_refused_on_resume_and_as_init_from(stack_factory, service_config, tmp_path):
    marker = tmp_path / "pwned"
    stack = stack_factory()
    stack.start_api()
    stack.headers = stack.token("alice")
    worker = stack.start_worker()

    source = stack.submit(small_config(service_config, epochs=4))
    paths = JobPaths.of(stack.settings.jobs_root, source)
    wait_until(lambda: 1 in manifest_epochs(paths) and db_job(stack, source).child_pid, 240,
               "the epoch-1 checkpoint", interval=0.1)

    # (b) resume: the worker dies mid-run; while nothing runs, last.pt becomes a malicious pickle
    # that the manifest vouches for. The resumed attempt's safe loader refuses it and, as for a
    # truncated file, falls back with a warning to the epoch file of the same step.
    child = db_job(stack, source).child_pid
    # The host dies, child included: stopped first, as its parent-death SIGTERM would otherwise
    # let it write a step checkpoint at the stop, which the resume would take instead of last.pt.
    os.kill(child, signal.SIGSTOP)
    stack.kill_worker(worker)
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: process_gone(child), 60, "the training child to stop")
    planted = plant_evil_checkpoint(paths, "last.pt", marker)
    fallback = f"epoch_{planted['epoch']:04d}.pt"
    assert fallback in {e["name"] for e in manifest(paths)["checkpoints"]}
    worker = stack.start_worker()
    job = stack.wait_status(source, FINISHED, timeout=300, tick=stack.reconcile)
    assert job["status"] == "succeeded" and job["attempts"] == 2, (job, stack.logs())
    log = (paths.run / "train.log").read_text()
    assert re.search(r"last\.pt: cannot be loaded safely: refused by weights-only loading.*posix\.system"
                     r".*; trying an older checkpoint", log), log[-3000:]
    assert f"resumed from {fallback} (epoch {planted['epoch']}," in log
    assert [e["epoch"] for e in json.loads(paths.history.read_text())["epochs"]] == [1, 2, 3, 4]
    assert_checkpoints_intact(paths)  # the resumed run replaced last.pt with a real one
    assert not marker.exists()

    # (a) init_from: the source job's best.pt is now the malicious pickle (manifest updated too)
    plant_evil_checkpoint(paths, "best.pt", marker)
    target = stack.submit({**small_config(service_config, epochs=1), "init_from": {"job": source, "checkpoint": "best"}})
    job = stack.wait_status(target, FINISHED | {"interrupted"}, timeout=240)
    reason = job["failure_reason"] or ""
    # exit 2, bad input (the config names this one file): not retried, failed with the trainer's error
    assert job["status"] == "failed" and job["exit_code"] == 2, job
    assert job["attempts"] == 1, job
    assert f"init_from {source}/run/checkpoints/best.pt: best.pt: cannot be loaded safely: refused by weights-only loading" \
        in reason, reason
    assert "weights_only` set to `False`" not in reason  # torch's advice to load it unsafely is not passed on
    target_paths = JobPaths.of(stack.settings.jobs_root, target)
    assert not target_paths.checkpoints.exists() or manifest(target_paths)["checkpoints"] == []
    assert not marker.exists()
    assert worker.poll() is None
