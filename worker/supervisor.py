"""Runs one job: claim it in the store, run `teacher train` as a supervised child process,
forward its progress, heartbeat, honour cancel requests and record the outcome.

The child runs in its own process group (cancel = SIGTERM to the group, SIGKILL after a grace
period) and is started through a tiny guard that asks the kernel to SIGTERM it if this process
dies (PR_SET_PDEATHSIG), so a SIGKILLed worker never leaves an orphan training into a run
directory that the next attempt resumes. This module never imports torch: CUDA must not be
initialised in the worker's parent process.

How an attempt ends (:func:`classify_exit`): exit 0 succeeded; a cancel request cancelled;
over TEACHER_MAX_JOB_SECONDS (training time summed over all attempts, kept in
``jobs.run_seconds``) failed with "time limit: ..."; exit 4 (no space left on the job volume)
failed with "no space left on device ..." -- neither is retried, as a retry cannot fix them;
exit 3 or a signal (worker shutdown, OOM kill, another worker took over) interrupted and
requeued to resume from the last checkpoint; exit 2 failed as invalid input; anything else
failed with the child's reason.

Attempts are capped twice. ``jobs.interruptions`` counts the attempts that ended without the job
being at fault: stopped gracefully (exit 3: a worker shutdown, a preemption's SIGTERM) or lost
before training started (see common.store.jobs.attempt_started_training); at
TEACHER_MAX_INTERRUPTIONS (default 20) the job fails. The other ended attempts (a worker that
died while training, a training process killed by a signal we did not send: OOM kill, crash,
SIGKILL) count against the job's
``max_attempts`` (TEACHER_MAX_ATTEMPTS) and end it as "worker lost". Before either cap, a claim
checks whether the run on disk already finished (:func:`run_finished`: its worker died after
"done" but before recording it) and records success without training again.
"""
from __future__ import annotations

import enum
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from common.atomic import sha256_file
from common.settings import Settings
from common.store import Job, JobStatus, transaction, utcnow
from common.store.jobs import (JobPaths, age_s, end_lost_attempt, finish_dependents, init_from_path, lock_job,
                               lost_attempts)
from worker.store import sessions_for

log = logging.getLogger(__name__)

from common.exitcodes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_NO_SPACE, EXIT_OK, EXIT_STOPPED, NO_SPACE_ERRNOS  # noqa: F401

# Runs in the child before exec: die with the parent, and bail out if the parent is already gone.
_GUARD = (
    "import ctypes, os, signal, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(3)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'common.apps.cli'] + sys.argv[2:])\n"
)


_PRIVATE_ENV = frozenset({"TEACHER_DATABASE_URL", "TEACHER_REDIS_URL", "TEACHER_TOKEN"})


class StopReason(str, enum.Enum):
    cancel = "cancel"
    shutdown = "shutdown"
    lost = "lost"          # another worker claimed the job (we were presumed dead)
    timeout = "timeout"


class Outcome(str, enum.Enum):
    """What an attempt's end means for the job."""

    succeeded = "succeeded"
    cancelled = "cancelled"
    time_limit = "time_limit"      # failed, not retried
    no_space = "no_space"          # failed, not retried: a full disk is not fixed by retrying
    interrupted = "interrupted"    # requeued; resumes from the last checkpoint
    bad_input = "bad_input"        # failed
    failed = "failed"


def classify_exit(rc: int, stop: StopReason | None, cancel_requested: bool) -> Outcome:
    """Map a training child's exit code, and why the supervisor stopped it (if it did), to the
    job's outcome. Order matters: a run that finished wins over a stop request that came too
    late, a cancel or the time limit over the exit code the stop produced (3)."""
    if rc == EXIT_OK:
        return Outcome.succeeded
    if cancel_requested:
        return Outcome.cancelled
    if stop == StopReason.timeout:
        return Outcome.time_limit
    if rc == EXIT_NO_SPACE:
        return Outcome.no_space
    if rc == EXIT_STOPPED or rc < 0 or stop in (StopReason.shutdown, StopReason.lost):
        return Outcome.interrupted  # stopped from outside (worker shutdown, a signal, OOM kill)
    if rc == EXIT_BAD_INPUT:
        return Outcome.bad_input
    return Outcome.failed


def time_limit_reason(run_seconds: float, max_seconds: int) -> str:
    return (f"time limit: training ran {run_seconds:.0f}s in total, over the maximum of {max_seconds}s "
            "(TEACHER_MAX_JOB_SECONDS, counted over all attempts); stopped, its last epoch checkpoint is kept")


def no_space_reason(detail: str | None = None) -> str:
    """``detail``: what the child or the supervisor could not write, when known."""
    return (f"{detail or 'no space left on device while writing the run files'}: the job volume is full; "
            "checkpoints written before are intact (free space, then resubmit)")


@dataclass(frozen=True)
class Claim:
    job_id: str
    attempt: int
    token: str
    config: dict[str, Any]
    run_seconds: float = 0.0  # training time of the earlier attempts


Enqueue = Callable[[str, str, int], None]


def _publisher(settings: Settings) -> Enqueue:
    from worker.celery_app import publish

    return lambda job_id, queue, priority: publish(settings, job_id, queue, priority)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _fault(name: str) -> bool:
    """Test-only fault points (like the training engine's): inert unless TEACHER_FAULT names one."""
    return name in os.environ.get("TEACHER_FAULT", "").split(",")


def worker_lost_reason(lost: int) -> str:
    return (f"worker lost: gave up after {lost} attempt{'' if lost == 1 else 's'} whose worker or training "
            "process died while training (killed, crashed or out of memory; TEACHER_MAX_ATTEMPTS)")


def interruptions_reason(interruptions: int) -> str:
    return (f"interrupted too often: gave up after {interruptions} interruption{'' if interruptions == 1 else 's'} "
            "(stopped gracefully, e.g. "
            "by a worker shutdown or preemption, or its worker lost before training started; "
            "TEACHER_MAX_INTERRUPTIONS)")


class Supervisor:
    def __init__(self, settings: Settings, *, enqueue: Enqueue | None = None,
                 shutdown_requested: Callable[[], bool] | None = None):
        self.settings = settings
        self.sessions = sessions_for(settings.database_url)
        self.enqueue_fn = enqueue or _publisher(settings)
        self._stop_flag = threading.Event()
        self._shutdown_requested = shutdown_requested or self._celery_stopping

    # ---------------------------------------------------------------------------- claim
    def claim(self, job_id: str) -> Claim | None:
        """Take the job if it may run now. Returns None (and changes nothing) for a finished,
        waiting or live job, so duplicate deliveries are harmless. A job whose run on disk
        already finished is recorded succeeded instead (no new attempt)."""
        released: list[Job] = []
        finished = self._run_finished_on_disk(job_id)  # outside the lock: it hashes checkpoints
        try:
            with transaction(self.sessions) as s:
                job = lock_job(s, job_id)
                if job is None:
                    log.warning("job %s: not in the store; dropping the message", job_id)
                    return None
                status = job.job_status
                if status.finished or status == JobStatus.waiting:
                    log.info("job %s: %s; nothing to do", job_id, status.value)
                    return None
                stale = age_s(job.heartbeat_at)
                if status == JobStatus.running and stale is not None and stale < self.settings.stale_after_s:
                    # (a cancel request is its supervisor's to carry out, at its next heartbeat)
                    log.info("job %s: running elsewhere (heartbeat %.1fs ago); duplicate message", job_id, stale)
                    return None
                if status == JobStatus.running:  # its worker is gone (no reconciler pass yet)
                    end_lost_attempt(job, "worker lost (stale heartbeat); will resume from the last checkpoint")
                if finished:  # a finished run wins over a cancel that came too late, as for exit 0
                    self._record_finished_run(job, JobPaths.of(self.settings.jobs_root, job_id))
                    released = finish_dependents(s, job)
                    return None
                if job.cancel_requested:
                    self._finish(job, JobStatus.cancelled, None)
                    released = finish_dependents(s, job)
                    return None
                if (job.run_seconds or 0.0) >= self.settings.max_job_seconds:
                    # e.g. its worker died after the limit passed, before it could record it
                    self._finish(job, JobStatus.failed, None,
                                 time_limit_reason(job.run_seconds, self.settings.max_job_seconds))
                    released = finish_dependents(s, job)
                    return None
                if lost_attempts(job) >= job.max_attempts:
                    self._finish(job, JobStatus.failed, None, worker_lost_reason(lost_attempts(job)))
                    released = finish_dependents(s, job)
                    return None
                if (job.interruptions or 0) >= self.settings.max_interruptions:
                    self._finish(job, JobStatus.failed, None, interruptions_reason(job.interruptions))
                    released = finish_dependents(s, job)
                    return None
                if job.init_from:
                    ckpt = self.settings.jobs_root / init_from_path(job.init_from["job"], job.init_from["checkpoint"])
                    if not ckpt.is_file():
                        self._finish(job, JobStatus.failed, None, f"init_from checkpoint not found: {ckpt.name} "
                                     f"of job {job.init_from['job']}")
                        released = finish_dependents(s, job)
                        return None
                now = utcnow()
                job.attempts += 1
                job.status = JobStatus.running.value
                job.claim_token = uuid.uuid4().hex
                job.worker = worker_name()
                job.heartbeat_at = now
                job.claimed_at = now
                job.started_at = job.started_at or now
                job.exit_code = None
                job.failure_reason = None
                return Claim(job.id, job.attempts, job.claim_token, dict(job.config), job.run_seconds or 0.0)
        finally:
            self._enqueue_all(released)

    # ---------------------------------------------------------------------------- run
    def run(self, job_id: str) -> str:
        claim = self.claim(job_id)
        if claim is None:
            return "skipped"
        if _fault("worker_exit"):
            # Test-only fault (like the training engine's): this worker process dies right after
            # claiming, as an OOM kill or a crash would, leaving the job `running` and its
            # message unacknowledged. Inert unless TEACHER_FAULT names it.
            os._exit(1)
        try:
            return self._run_claimed(claim)
        except BaseException as exc:
            # Record the supervisor's own failure on the job, then let it propagate to Celery.
            self._record_crash(claim, exc)
            raise

    def _run_claimed(self, claim: Claim) -> str:
        paths = JobPaths.of(self.settings.jobs_root, claim.job_id)
        try:
            train_args = self._prepare(claim, paths)
            logf = paths.log.open("ab", buffering=0)  # unbuffered: a failed write leaves nothing pending
        except OSError as exc:
            if exc.errno not in NO_SPACE_ERRNOS:
                raise
            # The job volume is full: fail this job (a retry cannot help) and keep the worker.
            log.error("job %s: %s", claim.job_id, exc)
            what = Path(str(exc.filename)).name if exc.filename else "the job directory"
            return self._fail_claimed(claim, no_space_reason(f"no space left on device while writing {what}"))

        # The child gets no service credentials: it needs only its data, runs and weights roots.
        env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
        env.update(
            TEACHER_DATA_ROOT=str(self.settings.data_root.resolve()),
            TEACHER_RUNS_ROOT=str(self.settings.jobs_root.resolve()),
            TORCH_HOME=str(self.settings.torch_home.resolve()),
            PYTHONUNBUFFERED="1",
        )
        python = self.settings.python or sys.executable
        attempt_started = time.time()
        with logf:
            try:
                logf.write(f"=== attempt {claim.attempt} on {worker_name()}: teacher {' '.join(train_args)}\n".encode())
            except OSError as exc:  # a full volume: the child will find out and say so (exit 4)
                log.warning("job %s: could not write the attempt banner to %s: %s", claim.job_id, paths.log, exc)
            proc = subprocess.Popen(
                [python, "-c", _GUARD, str(os.getpid()), *train_args],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                env=env, cwd=str(paths.root), start_new_session=True,
            )
        log.info("job %s: attempt %d started child pid %d", claim.job_id, claim.attempt, proc.pid)
        with self._signals_forwarded():
            rc, reason, run_seconds = self._supervise(claim, proc, paths)
        _kill_group(proc.pid, signal.SIGKILL)  # leftovers such as data-loader workers
        if _fault("worker_exit_after_child"):
            # Test-only: the worker dies after its child exited (e.g. "done") and before the
            # outcome is recorded, as a SIGKILL at that moment would.
            os._exit(1)
        return self._record_outcome(claim, paths, rc, reason, run_seconds, attempt_started)

    def _prepare(self, claim: Claim, paths: JobPaths) -> list[str]:
        """Write the job's config and choose fresh start or resume; returns `teacher` args."""
        paths.root.mkdir(parents=True, exist_ok=True)
        _write_atomic(paths.config, yaml.safe_dump(claim.config, sort_keys=False).encode())
        if (paths.run / "config.yaml").is_file():
            return ["train", "--resume", str(paths.run)]
        if paths.run.exists():  # started but died before writing anything resumable
            _remove_tree(paths.run)
        return ["train", "--config", str(paths.config), "--run-dir", str(paths.run)]

    def _supervise(self, claim: Claim, proc: subprocess.Popen[bytes],
                   paths: JobPaths) -> tuple[int, StopReason | None, float]:
        """Wait for the child; returns (exit code, why we stopped it, total run seconds). The
        time limit counts this attempt plus the earlier ones (``claim.run_seconds``)."""
        reason: StopReason | None = None
        term_sent: float | None = None
        started = time.monotonic()
        next_beat = 0.0
        while True:
            try:
                rc = proc.wait(timeout=0.2)
                return rc, reason, claim.run_seconds + (time.monotonic() - started)
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            run_seconds = claim.run_seconds + (now - started)
            if now >= next_beat:
                beat = self._heartbeat(claim, paths, proc.pid, run_seconds)
                reason = reason or beat
                next_beat = now + self.settings.heartbeat_s
            if reason is None and (self._stop_flag.is_set() or self._shutdown_requested()):
                reason = StopReason.shutdown
            if reason is None and run_seconds > self.settings.max_job_seconds:
                reason = StopReason.timeout
            if reason is not None and term_sent is None:
                log.info("job %s: stopping child (%s)", claim.job_id, reason.value)
                _kill_group(proc.pid, signal.SIGTERM)
                term_sent = now
            elif term_sent is not None and now - term_sent > self.settings.cancel_grace_s:
                log.warning("job %s: child ignored SIGTERM for %.0fs; killing", claim.job_id, now - term_sent)
                _kill_group(proc.pid, signal.SIGKILL)
                term_sent = float("inf")  # escalate once

    def _heartbeat(self, claim: Claim, paths: JobPaths, pid: int, run_seconds: float) -> StopReason | None:
        progress = _read_progress(paths.progress)
        try:
            with transaction(self.sessions) as s:
                job = lock_job(s, claim.job_id)
                if job is None or job.claim_token != claim.token:
                    return StopReason.lost
                job.heartbeat_at = utcnow()
                job.child_pid = pid
                job.run_seconds = run_seconds  # a dead worker loses at most one beat of it
                if progress is not None:
                    job.progress = progress
                return StopReason.cancel if job.cancel_requested else None
        except OperationalError:
            # The store is unreachable: keep training. If this lasts past stale_after_s the
            # reconciler may hand the job to another worker, and we stop at our next beat.
            log.exception("job %s: heartbeat failed", claim.job_id)
            return None

    # ---------------------------------------------------------------------------- outcome
    def _record_outcome(self, claim: Claim, paths: JobPaths, rc: int, reason: StopReason | None,
                        run_seconds: float, attempt_started: float) -> str:
        progress = _read_progress(paths.progress)
        requeue = False
        released: list[Job] = []
        with transaction(self.sessions) as s:
            job = lock_job(s, claim.job_id)
            if job is None or job.claim_token != claim.token:
                log.warning("job %s: claimed by another worker meanwhile; leaving it alone", claim.job_id)
                return "lost"
            if progress is not None:
                job.progress = progress
            job.child_pid = None
            job.exit_code = rc
            job.run_seconds = run_seconds
            outcome = classify_exit(rc, reason, job.cancel_requested)
            if outcome == Outcome.succeeded:
                job.result = _summary(paths)
                self._finish(job, JobStatus.succeeded, rc)
            elif outcome == Outcome.cancelled:
                self._finish(job, JobStatus.cancelled, rc)
            elif outcome == Outcome.time_limit:
                self._finish(job, JobStatus.failed, rc, time_limit_reason(run_seconds, self.settings.max_job_seconds))
            elif outcome == Outcome.no_space:
                # progress.json is on the full volume: use its error only if this attempt wrote it
                detail = None
                if progress and progress.get("status") == "failed" and progress.get("error") \
                        and (progress.get("updated_at") or 0) >= attempt_started:
                    detail = str(progress["error"])
                self._finish(job, JobStatus.failed, rc, no_space_reason(detail))
            elif outcome == Outcome.interrupted:
                job.status = JobStatus.interrupted.value
                job.claim_token = None
                job.failure_reason = _interrupted_reason(rc, reason)
                if rc == EXIT_STOPPED or reason == StopReason.shutdown:
                    # A graceful stop is not the job's fault. A training process killed by a signal
                    # that we did not send (typically the OOM killer) counts against max_attempts.
                    job.interruptions = (job.interruptions or 0) + 1
                requeue = True
            elif outcome == Outcome.bad_input:
                self._finish(job, JobStatus.failed, rc, "invalid config or input: " + _failure_reason(paths, progress, rc))
            else:
                self._finish(job, JobStatus.failed, rc, _failure_reason(paths, progress, rc))
            if job.job_status.finished:
                released = finish_dependents(s, job)
            status, queue, priority = job.status, job.queue, job.priority
        log.info("job %s: attempt %d ended with exit %d -> %s", claim.job_id, claim.attempt, rc, status)
        if requeue:
            self._enqueue(claim.job_id, queue, priority)
        self._enqueue_all(released)
        return status

    def _fail_claimed(self, claim: Claim, reason: str) -> str:
        """Fail a claimed job before its child started (nothing to resume, no requeue)."""
        released: list[Job] = []
        with transaction(self.sessions) as s:
            job = lock_job(s, claim.job_id)
            if job is None or job.claim_token != claim.token:
                return "lost"
            self._finish(job, JobStatus.failed, None, reason)
            released = finish_dependents(s, job)
        log.info("job %s: attempt %d failed before starting: %s", claim.job_id, claim.attempt, reason)
        self._enqueue_all(released)
        return JobStatus.failed.value

    def _record_crash(self, claim: Claim, exc: BaseException) -> None:
        with transaction(self.sessions) as s:
            job = lock_job(s, claim.job_id)
            if job is not None and job.claim_token == claim.token and not job.job_status.finished:
                self._finish(job, JobStatus.failed, None, f"supervisor error: {type(exc).__name__}: {exc}")
                finish_dependents(s, job)

    def _run_finished_on_disk(self, job_id: str) -> bool:
        with self.sessions() as s:
            job = s.scalar(select(Job).where(Job.id == job_id))
            if job is None or job.job_status not in (JobStatus.queued, JobStatus.interrupted, JobStatus.running):
                return False
            epochs = (job.config.get("optim") or {}).get("epochs")
        return isinstance(epochs, int) and run_finished(JobPaths.of(self.settings.jobs_root, job_id), epochs)

    def _record_finished_run(self, job: Job, paths: JobPaths) -> None:
        """The run completed but its worker died before recording it: record it now."""
        progress = _read_progress(paths.progress)
        if progress is not None:
            job.progress = progress
        job.result = _summary(paths)
        self._finish(job, JobStatus.succeeded, EXIT_OK)
        log.warning("job %s: its run on disk already finished (after %d attempt(s)); recorded succeeded "
                    "without training again", job.id, job.attempts)

    @staticmethod
    def _finish(job: Job, status: JobStatus, rc: int | None, reason: str | None = None) -> None:
        job.status = status.value
        job.finished_at = utcnow()
        job.claim_token = None
        if rc is not None:
            job.exit_code = rc
        job.failure_reason = reason

    # ---------------------------------------------------------------------------- helpers
    def _enqueue(self, job_id: str, queue: str, priority: int) -> None:
        try:
            self.enqueue_fn(job_id, queue, priority)
        except Exception:
            log.exception("job %s: could not enqueue; the reconciler will", job_id)
            return
        with transaction(self.sessions) as s:
            from common.store.jobs import mark_enqueued

            mark_enqueued(s, job_id)

    def _enqueue_all(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._enqueue(job.id, job.queue, job.priority)

    @staticmethod
    def _celery_stopping() -> bool:
        try:
            from celery.worker import state
        except ImportError:  # pragma: no cover
            return False
        # Set by Celery's own SIGTERM/SIGINT handler in the process running the task (solo
        # pool). The exit code stored there may be 0, so test for "set", not truthiness.
        return state.should_stop not in (None, False) or state.should_terminate not in (None, False)

    def _signals_forwarded(self) -> "_SignalScope":
        return _SignalScope(self._stop_flag)


class _SignalScope:
    """While a child runs, SIGTERM/SIGINT to this process mean "stop the child and record the job
    as interrupted" instead of dying with the child orphaned. (Only possible in the main thread.)"""

    def __init__(self, flag: threading.Event):
        self.flag = flag
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "_SignalScope":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.flag.set()
        previous = self.previous.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:  # e.g. Celery's warm-shutdown handler (solo pool): let it know too
            previous(signum, frame)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _read_progress(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        # Written atomically, so this means a corrupt file; report it, keep supervising.
        log.exception("unreadable %s", path)
        return None
    return data if isinstance(data, dict) else None


def _interrupted_reason(rc: int, stop: StopReason | None) -> str:
    if stop == StopReason.shutdown:
        why = f"stopped for a worker shutdown (exit {rc})"
    elif rc == EXIT_STOPPED:
        why = "stopped by a signal (exit 3)"
    elif rc < 0:
        why = f"training process killed by signal {-rc} (out of memory?)"
    else:
        why = f"exit {rc}"
    return f"interrupted: {why}; will resume from the last checkpoint"


def run_finished(paths: JobPaths, epochs: int) -> bool:
    """Whether the run directory holds a completed run of ``epochs`` epochs: progress.json says
    succeeded, history.json has each epoch once, and every checkpoint the manifest lists is
    there with its recorded sha256, ``last.pt`` at the last epoch and ``best.pt`` at the
    manifest's best epoch. (Torch-free: this runs in the worker's parent process.)"""
    progress = _read_progress(paths.progress)
    if not progress or progress.get("status") != "succeeded":
        return False  # the common case, and cheap: nothing below is read
    try:
        history = json.loads(paths.history.read_bytes())
        manifest = json.loads(paths.manifest.read_bytes())
        if [e.get("epoch") for e in history.get("epochs") or []] != list(range(1, epochs + 1)):
            return False
        entries = {e["name"]: e for e in manifest.get("checkpoints") or []}
        best = manifest.get("best")
        if (entries.get("last.pt") or {}).get("epoch") != epochs:
            return False
        if best is not None and (entries.get("best.pt") or {}).get("epoch") != best.get("epoch"):
            return False
        return all(sha256_file(paths.checkpoints / name) == e["sha256"] for name, e in entries.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.info("%s: not a finished run (%s)", paths.run, exc)
        return False


def _failure_reason(paths: JobPaths, progress: dict[str, Any] | None, rc: int) -> str:
    if progress and progress.get("error"):
        return str(progress["error"])
    from common.runfiles import tail_lines

    lines = [ln for ln in tail_lines(paths.log, 20, include_partial=True)[0] if ln.strip() and not ln.startswith("=== attempt")]
    return lines[-1].strip()[:2000] if lines else f"training exited with code {rc}"


def _summary(paths: JobPaths) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        history = json.loads(paths.history.read_bytes())
        epochs = history.get("epochs") or []
        if epochs:
            out["epochs"] = len(epochs)
            out["final"] = {k: epochs[-1].get(k) for k in ("epoch", "step", "train", "val")}
    except FileNotFoundError:
        pass
    try:
        manifest = json.loads(paths.manifest.read_bytes())
        for entry in manifest.get("checkpoints", []):
            if entry.get("name") == "best.pt":
                out["best"] = {k: entry.get(k) for k in ("epoch", "step", "metrics", "sha256")}
    except FileNotFoundError:
        pass
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename. On failure (a full disk) the temp file is removed and the
    error names ``path``, not the temp file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


def run_job(job_id: str, settings: Settings | None = None) -> str:
    if settings is None:
        from worker.celery_app import settings as app_settings

        settings = app_settings
    return Supervisor(settings).run(job_id)
