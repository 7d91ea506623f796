"""Runs one job: claim it in the store, run `teacher train` as a supervised child process,
forward its progress, heartbeat, honour cancel requests and record the outcome. Every status
change is common.store.lifecycle's; this module decides which one.

The child runs in its own process group (cancel = SIGTERM to the group, SIGKILL after a grace
period) and is started through a tiny guard that asks the kernel to SIGTERM it if this process
dies (PR_SET_PDEATHSIG), so a SIGKILLed worker never leaves an orphan training into a run
directory that the next attempt resumes. This module never imports torch: CUDA must not be
initialised in the worker's parent process.

How an attempt ends (:func:`classify_exit`, an :class:`Outcome`): exit 0 succeeded; a cancel
request cancelled; over TEACHER_MAX_JOB_SECONDS (training time summed over all attempts, kept in
``jobs.run_seconds``) failed with "time limit: ..."; exit 4 (no space left on the job volume)
failed with "no space left on device ..." -- neither is retried, as a retry cannot fix them;
exit 3 or a signal (worker shutdown, OOM kill, another worker took over) interrupted and
requeued to resume from the last checkpoint; exit 2 failed as invalid input; an integrity
failure with ``integrity.on_fail: stop`` failed (a replay fails again); any other failure of
the training (exit 1) is retried from its last checkpoint until the job has max_attempts
failures, then failed with the training's error.

Attempts are capped twice. ``jobs.interruptions`` counts the attempts that ended without the job
being at fault: stopped gracefully (exit 3: a worker shutdown, a preemption's SIGTERM), killed
by the stall watchdog, or its worker lost (a host gone without notice); at
TEACHER_MAX_INTERRUPTIONS (default 20) the job fails. ``jobs.failures`` counts the others: the
training failed (exit 1), or the training process died by a signal nobody sent while its worker
lived (the OOM killer, a crash); at the job's ``max_attempts`` (TEACHER_MAX_ATTEMPTS) it fails. Before either cap, a claim checks whether the run on disk already finished
(:func:`run_finished`: its worker died after "done" but before recording it) and records
success without training again. Each attempt's row (common.store.attempts) records its cause,
what the supervisor stopped it for (``StopCause``), where it resumed from and the work it lost.

Placement (:func:`placement_refusal`): a job never runs with fewer GPUs than its
``resources.gpus``. A worker with fewer (as its device probe found them, worker.celery_app)
does not claim it: the job stays as it is, and its message goes back to the queue DEFER_S later
for another worker (:meth:`Supervisor._defer`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from common import faults
from common.atomic import sha256_file
from common.devices import Devices, gpus_asked
from common.exitcodes import EXIT_BAD_INPUT, EXIT_NO_SPACE, EXIT_OK, EXIT_STOPPED, NO_SPACE_ERRNOS
from common.logs import bind, log_context, worker_id
from common.settings import Settings
from common.store import Job, JobStatus, lifecycle, transaction, utcnow
from common.store.attempts import RunView
from common.store.models import AttemptCause, StopCause
from common.rundir import BEST, LAST, History, JobPaths, Manifest, Progress, RunFileCorrupt, RunStatus
from common.store.jobs import age_s, init_from_path, lock_job
from common.store.lifecycle import Claim, Outcome, Publish, Send, lost_attempts
from worker.store import sessions_for

log = logging.getLogger(__name__)

__all__ = ["Supervisor", "Claim", "Outcome", "classify_exit", "run_finished", "run_job", "EXIT_STOPPED"]

# Runs in the child before exec: die with the parent, and bail out if the parent is already gone.
_GUARD = (
    "import ctypes, os, signal, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(3)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'common.apps.cli'] + sys.argv[2:])\n"
)

_PRIVATE_ENV = frozenset({"TEACHER_DATABASE_URL", "TEACHER_REDIS_URL", "TEACHER_TOKEN"})

# Why the supervisor stops a child, named by the outcome it stops it for: a cancel, the time
# limit, a worker shutdown (interrupted), or another worker's claim (superseded).
STOPS = (Outcome.cancelled, Outcome.time_limit, Outcome.interrupted, Outcome.superseded)


def classify_exit(rc: int, stopped_for: Outcome | None, cancel_requested: bool) -> Outcome:
    """Map a training child's exit code, and the outcome the supervisor stopped it for (if it
    did, one of STOPS), to the attempt's outcome. Order matters: a run that finished wins over a
    stop request that came too late, a cancel or the time limit over the exit code the stop
    produced (3)."""
    if rc == EXIT_OK:
        return Outcome.succeeded
    if cancel_requested:
        return Outcome.cancelled
    if stopped_for == Outcome.time_limit:
        return Outcome.time_limit
    if rc == EXIT_NO_SPACE:
        return Outcome.no_space
    if rc == EXIT_STOPPED or rc < 0 or stopped_for in (Outcome.interrupted, Outcome.superseded):
        return Outcome.interrupted  # stopped from outside (worker shutdown, a signal, OOM kill)
    if rc == EXIT_BAD_INPUT:
        return Outcome.bad_input
    return Outcome.failed


# ------------------------------------------------------------------------------ reasons users read
def time_limit_reason(run_seconds: float, max_seconds: int) -> str:
    return (f"time limit: training ran {run_seconds:.0f}s in total, over the maximum of {max_seconds}s "
            "(TEACHER_MAX_JOB_SECONDS, counted over all attempts); stopped, its last epoch checkpoint is kept")


def no_space_reason(detail: str | None = None) -> str:
    """``detail``: what the child or the supervisor could not write, when known."""
    return (f"{detail or 'no space left on device while writing the run files'}: the job volume is full; "
            "checkpoints written before are intact (free space, then resubmit)")


def worker_lost_reason(lost: int) -> str:
    return (f"failed: gave up after {lost} failure{'' if lost == 1 else 's'} (the training failed, or its process "
            "was killed by a signal nobody sent, e.g. out of memory; TEACHER_MAX_ATTEMPTS)")


def interruptions_reason(interruptions: int) -> str:
    return (f"interrupted too often: gave up after {interruptions} interruption{'' if interruptions == 1 else 's'} "
            "(stopped gracefully, e.g. "
            "by a worker shutdown or preemption, stalled, or its worker lost; "
            "TEACHER_MAX_INTERRUPTIONS)")


def _interrupted_reason(rc: int, stopped_for: Outcome | None, signal_name: str | None = None) -> str:
    if stopped_for == Outcome.interrupted:
        why = f"stopped for a worker shutdown ({signal_name or 'Celery warm shutdown'} to the worker; exit {rc})"
    elif rc == EXIT_STOPPED:
        why = "stopped by a signal (exit 3)"
    elif rc < 0:
        why = f"training process killed by signal {-rc} (out of memory?)"
    else:
        why = f"exit {rc}"
    return f"interrupted: {why}; will resume from the last checkpoint"


# What the supervisor stopped the child for, as the attempt's row records it.
_STOP_CAUSE = {Outcome.cancelled: StopCause.cancel, Outcome.time_limit: StopCause.time_limit,
               Outcome.interrupted: StopCause.worker_shutdown, Outcome.superseded: StopCause.superseded}


@dataclass(frozen=True)
class Ending:
    """How the supervisor ends an attempt: it finishes the job, or interrupts it (re-sent).
    ``cause`` is the attempt row's (None: the outcome's default, see lifecycle.finish)."""

    outcome: Outcome
    reason: str | None = None
    exit_code: int | None = None
    result: dict[str, Any] | None = None
    cause: AttemptCause | None = None
    stop: StopCause | None = None
    run: RunView | None = None

    def apply(self, session: Any, job: Job) -> list[lifecycle.Send]:
        """The lifecycle event, on the locked row; returns what to send after the commit."""
        if self.outcome in (Outcome.interrupted, Outcome.retried):
            return lifecycle.interrupt(job, self.reason or "interrupted", cause=self.cause or AttemptCause.preempted,
                                       stop=self.stop, exit_code=self.exit_code, run=self.run)
        return lifecycle.finish(session, job, self.outcome, self.reason, exit_code=self.exit_code, result=self.result,
                                cause=self.cause, stop=self.stop, run=self.run)


def stall_timeout_s(claim: Claim, settings: Settings) -> float:
    """The job's ``runtime.stall_timeout_s``, else the service's TEACHER_STALL_TIMEOUT_S."""
    own = (claim.config.get("runtime") or {}).get("stall_timeout_s")
    return float(own) if own else settings.stall_timeout_s


class StallWatchdog:
    """Fires when the trainer's liveness file (touched at least once a second while batches are
    trained or evaluated; ``RunPaths.alive``) has not changed for ``timeout_s``. Until the
    trainer first touches it, the time counts from the attempt's start: a child stuck before
    training (reading a dead mount) is a stall too."""

    def __init__(self, alive: Path, timeout_s: float, clock: Callable[[], float] = time.time) -> None:
        self.alive, self.timeout_s, self.clock = alive, timeout_s, clock
        self.started = clock()

    def check(self, progress_path: Path) -> str | None:
        """The reason to kill (``stalled at epoch E step S for T s``), or None."""
        try:
            last = max(self.started, self.alive.stat().st_mtime)
        except OSError:
            last = self.started
        idle = self.clock() - last
        if idle < self.timeout_s:
            return None
        progress = _read_progress(progress_path)
        where = (f"at epoch {progress.epoch} step {progress.step}" if progress is not None and progress.epoch
                 else "before its first step")
        return f"stalled {where} for {idle:.0f} s (no training progress; stall timeout {self.timeout_s:.0f} s)"


def _publisher(settings: Settings) -> Publish:
    from worker.celery_app import publish

    return lambda job_id, queue, priority: publish(settings, job_id, queue, priority)


# ------------------------------------------------------------------------------ placement
# A job this worker may not run goes back to its queue this much later: soon enough that a
# worker of the queue that fits takes it within seconds, late enough that workers that do not
# fit pass it around a few times a minute, not in a hot loop.
DEFER_S = 5.0


def placement_refusal(config: dict[str, Any], devices: Callable[[], Devices]) -> str | None:
    """Why this worker must not run a job with this config, or None. A job never runs with
    fewer devices than it asks for: ``resources.gpus: N`` needs N GPUs on this host (a worker
    whose device probe failed has none). Without ``resources.gpus`` any worker may (one process,
    on the worker's GPU if it has one). ``devices`` is called only for a job that asks."""
    asked = gpus_asked(config)
    if asked is None:
        return None
    have = devices()
    if asked <= have.gpu_count:
        return None
    why = f" (its device probe failed: {have.error})" if have.error else ""
    return f"asks for {asked} GPU{'' if asked == 1 else 's'}; this worker has {have.gpu_count}{why}"


def _worker_devices() -> Devices:
    from worker.celery_app import worker_devices

    return worker_devices()


class Supervisor:
    def __init__(self, settings: Settings, *, enqueue: Publish | None = None,
                 shutdown_requested: Callable[[], bool] | None = None,
                 devices: Callable[[], Devices] | None = None, pause: Callable[[float], None] | None = None):
        """``devices``: this worker's (probed once per process by worker.celery_app); ``pause``:
        how it waits before passing a job it may not run on (tests pass a stand-in)."""
        self.settings = settings
        self.sessions = sessions_for(settings.database_url)
        self.enqueue_fn = enqueue or _publisher(settings)
        self.devices = devices or _worker_devices
        self._pause = pause or self._pause_unless_stopping
        self._stop_flag = threading.Event()
        self._stop_signal: str | None = None  # the signal the worker got while a child ran
        self._stalled: str | None = None  # the watchdog's reason, when it killed the child
        self._shutdown_requested = shutdown_requested or celery_stopping

    def run(self, job_id: str) -> Outcome:
        with log_context(job_id=job_id):
            claim = self.claim(job_id)
            if claim is None:
                return Outcome.skipped
            bind(attempt=claim.attempt)
            if faults.current().on("worker_exit"):
                # Test-only: this worker process dies right after claiming, as an OOM kill or a
                # crash would, leaving the job `running` and its message unacknowledged.
                os._exit(1)
            try:
                return self._run_claimed(claim)
            except BaseException as exc:
                # Record the supervisor's own failure on the job, then let it propagate to Celery.
                self._end(claim, Ending(Outcome.failed, f"supervisor error: {type(exc).__name__}: {exc}"))
                raise

    # ---------------------------------------------------------------------------- claim
    def claim(self, job_id: str) -> Claim | None:
        """Take the job if it may run now. Returns None (and changes nothing) for a finished,
        waiting or live job, so duplicate deliveries are harmless; also None when the job ends
        at the claim instead (its run on disk already finished, a cap reached: no new attempt)."""
        refusal = self._placement_refusal(job_id)  # outside the lock: it may wait for the device probe
        finished = self._run_finished_on_disk(job_id)  # outside the lock: it hashes checkpoints
        run = RunView.read(self.settings.jobs_root, job_id)  # for the attempt rows (files: outside the lock too)
        with transaction(self.sessions) as s:
            job = lock_job(s, job_id)
            if job is None:
                log.warning("job %s: not in the store; dropping the message", job_id)
                return None
            if not self._may_take(job):
                return None
            if refusal is None:
                if job.job_status == JobStatus.running:  # its worker is gone (no reconciler pass yet)
                    lifecycle.worker_lost(job, "worker lost (stale heartbeat); will resume from the last checkpoint", run)
                ending = self._ending_at_claim(job, finished)
                if ending is None:
                    return lifecycle.claim(job, worker_id(), self._resumes(job_id, run))
                sends = ending.apply(s, job)
            else:
                deferred = Send.of(job)
        if refusal is not None:
            self._defer(deferred, refusal)
        else:
            self._send(sends)
        return None

    def _placement_refusal(self, job_id: str) -> str | None:
        """Why this worker may not run the job (placement_refusal), read without the lock: a
        job's config never changes after its submission."""
        with self.sessions() as s:
            config = s.scalar(select(Job.config).where(Job.id == job_id))
        return placement_refusal(config, self.devices) if isinstance(config, dict) else None

    def _defer(self, send: Send, refusal: str) -> None:
        """Leave the job as it is (no attempt, nothing changed) and send its message again a
        little later, for another worker of its queue. (A stale `running` job stays so too:
        the worker that fits records its lost worker at its claim, or the reconciler does.)

        The wait is here, holding the delivery, not a Celery countdown on the new message: a
        worker holding a message with an ETA keeps waiting on Redis for more, and as the longest
        waiting it would get the message back each time, so that a worker that fits, idle since
        later, would never see it. Sent at the end of the wait, while this worker is still busy
        with it, the message goes to an idle worker of the queue if there is one."""
        log.info("job %s: %s; left for another worker of queue '%s' (its message goes back in %g s)",
                 send.job_id, refusal, send.queue, DEFER_S)
        self._pause(DEFER_S)
        self._send([send])

    def _pause_unless_stopping(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (self._stop_flag.is_set() or self._shutdown_requested()):
            time.sleep(0.1)

    def _may_take(self, job: Job) -> bool:
        status = job.job_status
        if status.finished or status == JobStatus.waiting:
            log.info("job %s: %s; nothing to do", job.id, status.value)
            return False
        stale = age_s(job.heartbeat_at)
        if status == JobStatus.running and stale is not None and stale < self.settings.stale_after_s:
            # (a cancel request is its supervisor's to carry out, at its next heartbeat)
            log.info("job %s: running elsewhere (heartbeat %.1fs ago); duplicate message", job.id, stale)
            return False
        return True

    def _ending_at_claim(self, job: Job, finished_on_disk: bool) -> Ending | None:
        """Why the job ends now instead of running another attempt, if it does. A finished run
        wins over a cancel that came too late, as for exit 0."""
        paths = JobPaths.of(self.settings.jobs_root, job.id)
        if finished_on_disk:
            log.warning("job %s: its run on disk already finished (after %d attempt(s)); recorded succeeded "
                        "without training again", job.id, job.attempts)
            progress = _read_progress(paths.progress)
            if progress is not None:
                job.progress = progress.to_json()
            return Ending(Outcome.succeeded, exit_code=EXIT_OK, result=_summary(paths))
        if job.cancel_requested:
            return Ending(Outcome.cancelled)
        if (job.run_seconds or 0.0) >= self.settings.max_job_seconds:
            # e.g. its worker died after the limit passed, before it could record it
            return Ending(Outcome.time_limit, time_limit_reason(job.run_seconds, self.settings.max_job_seconds))
        if lost_attempts(job) >= job.max_attempts:
            return Ending(Outcome.worker_lost, worker_lost_reason(lost_attempts(job)))
        if (job.interruptions or 0) >= self.settings.max_interruptions:
            return Ending(Outcome.interrupted_too_often, interruptions_reason(job.interruptions))
        if job.init_from:
            ckpt = self.settings.jobs_root / init_from_path(job.init_from["job"], job.init_from["checkpoint"])
            if not ckpt.is_file():
                return Ending(Outcome.failed, f"init_from checkpoint not found: {ckpt.name} of job {job.init_from['job']}")
        return None

    def _resumes(self, job_id: str, run: RunView | None) -> RunView | None:
        """What the attempt about to start resumes from. _prepare starts afresh (removing what
        is there) when the run never wrote its config: then nothing is resumed."""
        return run if JobPaths.of(self.settings.jobs_root, job_id).files.config.is_file() else None

    def _run_finished_on_disk(self, job_id: str) -> bool:
        with self.sessions() as s:
            job = s.scalar(select(Job).where(Job.id == job_id))
            if job is None or job.job_status not in (JobStatus.queued, JobStatus.interrupted, JobStatus.running):
                return False
            epochs = (job.config.get("optim") or {}).get("epochs")
        return isinstance(epochs, int) and run_finished(JobPaths.of(self.settings.jobs_root, job_id), epochs)

    # ---------------------------------------------------------------------------- run
    def _run_claimed(self, claim: Claim) -> Outcome:
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
            return self._end(claim, Ending(Outcome.no_space, no_space_reason(f"no space left on device while writing {what}")))

        attempt_started = time.time()
        with logf:
            proc = self._start_child(claim, paths, train_args, logf)
        bind(child_pid=proc.pid)
        log.info("job %s: attempt %d started child pid %d", claim.job_id, claim.attempt, proc.pid)
        with _SignalScope(self._stop_flag) as scope:
            rc, stopped_for, run_seconds = self._supervise(claim, proc, paths)
        self._stop_signal = scope.received
        _kill_group(proc.pid, signal.SIGKILL)  # leftovers such as data-loader workers
        if faults.current().on("worker_exit_after_child"):
            # Test-only: the worker dies after its child exited (e.g. "done") and before the
            # outcome is recorded, as a SIGKILL at that moment would.
            os._exit(1)
        return self._record_outcome(claim, paths, rc, stopped_for, run_seconds, attempt_started)

    def _prepare(self, claim: Claim, paths: JobPaths) -> list[str]:
        """Write the job's config and choose fresh start or resume; returns `teacher` args."""
        paths.root.mkdir(parents=True, exist_ok=True)
        _write_atomic(paths.config, yaml.safe_dump(claim.config, sort_keys=False).encode())
        if paths.files.config.is_file():
            return ["train", "--resume", str(paths.run)]
        if paths.run.exists():  # started but died before writing anything resumable
            _remove_tree(paths.run)
        return ["train", "--config", str(paths.config), "--run-dir", str(paths.run)]

    def _start_child(self, claim: Claim, paths: JobPaths, train_args: list[str], logf: Any) -> subprocess.Popen[bytes]:
        # The child gets no service credentials: it needs only its data, runs and weights roots.
        env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
        env.update(
            TEACHER_DATA_ROOT=str(self.settings.data_root.resolve()),
            TEACHER_RUNS_ROOT=str(self.settings.jobs_root.resolve()),
            TORCH_HOME=str(self.settings.torch_home.resolve()),
            PYTHONUNBUFFERED="1",
        )
        try:
            logf.write(f"=== attempt {claim.attempt} on {worker_id()}: teacher {' '.join(train_args)}\n".encode())
        except OSError as exc:  # a full volume: the child will find out and say so (exit 4)
            log.warning("job %s: could not write the attempt banner to %s: %s", claim.job_id, paths.log, exc)
        return subprocess.Popen(
            [self.settings.python or sys.executable, "-c", _GUARD, str(os.getpid()), *train_args],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            env=env, cwd=str(paths.root), start_new_session=True,
        )

    def _supervise(self, claim: Claim, proc: subprocess.Popen[bytes],
                   paths: JobPaths) -> tuple[int, Outcome | None, float]:
        """Wait for the child; returns (exit code, the outcome we stopped it for, total run
        seconds). The time limit counts this attempt plus the earlier ones (``claim.run_seconds``)."""
        stopped_for: Outcome | None = None
        term_sent: float | None = None
        started = time.monotonic()
        next_beat = 0.0
        self._stalled = None
        watchdog = StallWatchdog(paths.files.alive, stall_timeout_s(claim, self.settings))
        while True:
            try:
                rc = proc.wait(timeout=0.2)
                return rc, stopped_for, claim.run_seconds + (time.monotonic() - started)
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            run_seconds = claim.run_seconds + (now - started)
            if now >= next_beat:
                stopped_for = stopped_for or self._heartbeat(claim, paths, proc.pid, run_seconds)
                next_beat = now + self.settings.heartbeat_s
            if stopped_for is None and (self._stop_flag.is_set() or self._shutdown_requested()):
                stopped_for = Outcome.interrupted
            if stopped_for is None and run_seconds > self.settings.max_job_seconds:
                stopped_for = Outcome.time_limit
            if stopped_for is None and term_sent is None and (stall := watchdog.check(paths.progress)):
                # Hung (a deadlocked DataLoader, a collective waiting for a dead rank): it would
                # not act on SIGTERM, and has nothing new to checkpoint. Kill the group now.
                log.warning("job %s: %s; killing the training process group", claim.job_id, stall)
                self._stalled, stopped_for = stall, Outcome.interrupted
                _kill_group(proc.pid, signal.SIGKILL)
                term_sent = float("inf")
            if stopped_for is not None and term_sent is None:
                log.info("job %s: stopping child (%s)", claim.job_id, stopped_for.value)
                _kill_group(proc.pid, signal.SIGTERM)
                term_sent = now
            elif term_sent is not None and now - term_sent > self.settings.cancel_grace_s:
                log.warning("job %s: child ignored SIGTERM for %.0fs; killing", claim.job_id, now - term_sent)
                _kill_group(proc.pid, signal.SIGKILL)
                term_sent = float("inf")  # escalate once

    def _heartbeat(self, claim: Claim, paths: JobPaths, pid: int, run_seconds: float) -> Outcome | None:
        """Returns the outcome to stop the child for: superseded (another worker took the job)
        or cancelled (a cancel was requested); None to keep training."""
        progress = _read_progress(paths.progress)
        try:
            with transaction(self.sessions) as s:
                job = lifecycle.locked_attempt(s, claim.job_id, claim.token)
                if job is None:
                    return Outcome.superseded
                cancel = lifecycle.heartbeat(job, child_pid=pid, run_seconds=run_seconds,
                                             progress=progress.to_json() if progress is not None else None)
                return Outcome.cancelled if cancel else None
        except OperationalError:
            # The store is unreachable: keep training. If this lasts past stale_after_s the
            # reconciler may hand the job to another worker, and we stop at our next beat.
            log.exception("job %s: heartbeat failed", claim.job_id)
            return None

    # ---------------------------------------------------------------------------- outcome
    def _record_outcome(self, claim: Claim, paths: JobPaths, rc: int, stopped_for: Outcome | None,
                        run_seconds: float, attempt_started: float) -> Outcome:
        progress = _read_progress(paths.progress)
        run = RunView.read(self.settings.jobs_root, claim.job_id)

        def ending(job: Job) -> Ending:
            """Record the attempt's numbers on the locked row; returns how the attempt ends."""
            if progress is not None:
                job.progress = progress.to_json()
            job.exit_code, job.run_seconds = rc, run_seconds
            outcome = classify_exit(rc, stopped_for, job.cancel_requested)
            end = self._ending_of(outcome, rc, stopped_for, paths, progress, run_seconds, attempt_started)
            if end.outcome == Outcome.failed and self._retry_failure(job, progress):
                end = Ending(Outcome.retried, f"training failed (attempt {claim.attempt}, failure "
                             f"{(job.failures or 0) + 1} of at most {job.max_attempts}); will retry from the last "
                             f"checkpoint: {end.reason}", rc, cause=AttemptCause.training_failed)
            elif end.outcome == Outcome.failed:
                end = dataclasses.replace(end, cause=AttemptCause.training_failed
                                          if self._training_failure(job, progress) else AttemptCause.failed)
            stop = end.stop or (_STOP_CAUSE.get(stopped_for) if stopped_for else None)
            return dataclasses.replace(end, stop=stop, run=run)

        outcome = self._end(claim, ending)
        log.info("job %s: attempt %d ended with exit %d -> %s", claim.job_id, claim.attempt, rc, outcome.value)
        return outcome

    @staticmethod
    def _training_failure(job: Job, progress: Progress | None) -> bool:
        """Whether an attempt that failed (exit 1 or another code) failed in its training, which
        a retry may get past, rather than in an integrity check with on_fail: stop (a replay of
        the same epochs fails it again)."""
        integrity_stop = ((job.config or {}).get("integrity") or {}).get("on_fail") == "stop"
        return not (integrity_stop and progress is not None and progress.integrity is not None
                    and progress.integrity.failed)

    def _retry_failure(self, job: Job, progress: Progress | None) -> bool:
        """A training failure is retried (from its last checkpoint) while the job's failures,
        this one included, stay under max_attempts."""
        return self._training_failure(job, progress) and (job.failures or 0) + 1 < job.max_attempts

    def _ending_of(self, outcome: Outcome, rc: int, stopped_for: Outcome | None, paths: JobPaths,
                   progress: Progress | None, run_seconds: float, attempt_started: float) -> Ending:
        if outcome == Outcome.interrupted and self._stalled:
            return Ending(outcome, f"interrupted: {self._stalled}; will resume from the last checkpoint", rc,
                          cause=AttemptCause.stalled, stop=StopCause.stalled)
        if outcome == Outcome.interrupted:
            # A graceful stop (exit 3, a worker shutdown) is not the job's fault; a training
            # process killed by a signal we did not send (the OOM killer) counts against max_attempts.
            graceful = rc == EXIT_STOPPED or stopped_for == Outcome.interrupted
            return Ending(outcome, _interrupted_reason(rc, stopped_for, self._stop_signal), rc,
                          cause=AttemptCause.preempted if graceful else AttemptCause.killed)
        if outcome == Outcome.succeeded:
            return Ending(outcome, exit_code=rc, result=_summary(paths))
        if outcome == Outcome.time_limit:
            return Ending(outcome, time_limit_reason(run_seconds, self.settings.max_job_seconds), rc)
        if outcome == Outcome.no_space:
            # progress.json is on the full volume: use its error only if this attempt wrote it
            fresh = progress is not None and progress.status == RunStatus.FAILED \
                and (progress.updated_at or 0) >= attempt_started
            return Ending(outcome, no_space_reason(progress.error if fresh and progress else None), rc)
        if outcome == Outcome.bad_input:
            return Ending(outcome, "invalid config or input: " + _failure_reason(paths, progress, rc), rc)
        if outcome == Outcome.failed:
            return Ending(outcome, _failure_reason(paths, progress, rc), rc)
        return Ending(outcome, exit_code=rc)  # cancelled

    def _end(self, claim: Claim, ending: Ending | Callable[[Job], Ending]) -> Outcome:
        """End the claimed attempt (the one place that does): finish the job, releasing its
        dependents, or interrupt it to be re-sent; then, after the commit, send what became
        queued. ``ending`` may be a function of the locked row. A job another worker claimed
        meanwhile is left alone (superseded)."""
        with transaction(self.sessions) as s:
            job = lifecycle.locked_attempt(s, claim.job_id, claim.token)
            if job is None or job.job_status.finished:
                log.warning("job %s: claimed by another worker meanwhile; leaving it alone", claim.job_id)
                return Outcome.superseded
            end = ending(job) if callable(ending) else ending
            sends = end.apply(s, job)
        self._send(sends)
        return end.outcome

    def _send(self, sends: list[lifecycle.Send]) -> None:
        lifecycle.send(self.sessions, self.enqueue_fn, sends)


def celery_stopping() -> bool:
    """Whether Celery is shutting this worker down: set by its own SIGTERM/SIGINT handler in
    this (the solo pool's main) process. The exit code stored there may be 0, so test for "set",
    not truthiness."""
    try:
        from celery.worker import state
    except ImportError:  # pragma: no cover
        return False
    return state.should_stop not in (None, False) or state.should_terminate not in (None, False)


class _SignalScope:
    """While a child runs, SIGTERM/SIGINT to this process mean "stop the child and record the job
    as interrupted" instead of dying with the child orphaned. (Only possible in the main thread.)"""

    def __init__(self, flag: threading.Event):
        self.flag = flag
        self.previous: dict[int, Any] = {}
        self.received: str | None = None  # the first signal's name, for the attempt's reason

    def __enter__(self) -> "_SignalScope":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.flag.set()
        self.received = self.received or signal.Signals(signum).name
        previous = self.previous.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:  # e.g. Celery's warm-shutdown handler: let it know too
            previous(signum, frame)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _read_progress(path: Path) -> Progress | None:
    try:
        return Progress.read(path)
    except (RunFileCorrupt, OSError):
        # Written atomically, so this means a corrupt file; report it, keep supervising.
        log.exception("unreadable %s", path)
        return None


def run_finished(paths: JobPaths, epochs: int) -> bool:
    """Whether the run directory holds a completed run of ``epochs`` epochs: progress.json says
    succeeded, history.json has each epoch once, and every checkpoint the manifest lists is
    there with its recorded sha256, ``last.pt`` at the last epoch and ``best.pt`` at the
    manifest's best epoch. (Torch-free: this runs in the worker's parent process.)"""
    progress = _read_progress(paths.progress)
    if progress is None or progress.status != RunStatus.SUCCEEDED:
        return False  # the common case, and cheap: nothing below is read
    try:
        history, manifest = History.read(paths.history), Manifest.read(paths.manifest)
        if history is None or manifest is None or [e.epoch for e in history.epochs] != list(range(1, epochs + 1)):
            return False
        last, best = manifest.entry(LAST), manifest.entry(BEST)
        if last is None or last.epoch != epochs:
            return False
        if manifest.best is not None and (best is None or best.epoch != manifest.best.epoch):
            return False
        return all(sha256_file(paths.files.checkpoint(e.name)) == e.sha256 for e in manifest.checkpoints)
    except (OSError, RunFileCorrupt) as exc:
        log.info("%s: not a finished run (%s)", paths.run, exc)
        return False


def _failure_reason(paths: JobPaths, progress: Progress | None, rc: int) -> str:
    if progress is not None and progress.error:
        return progress.error
    from common.runfiles import tail_lines

    lines = [ln for ln in tail_lines(paths.log, 20, include_partial=True)[0] if ln.strip() and not ln.startswith("=== attempt")]
    return lines[-1].strip()[:2000] if lines else f"training exited with code {rc}"


def _summary(paths: JobPaths) -> dict[str, Any]:
    """The job's ``result``: the last epoch's record and the best checkpoint's entry."""
    out: dict[str, Any] = {}
    try:
        history = History.read(paths.history)
        if history is not None and history.last is not None:
            out["epochs"] = len(history.epochs)
            final = history.last.to_json()
            out["final"] = {k: final[k] for k in ("epoch", "step", "train", "val")}
        manifest = Manifest.read(paths.manifest)
        best = manifest.entry(BEST) if manifest is not None else None
        if best is not None:
            out["best"] = {k: v for k, v in best.to_json().items() if k in ("epoch", "step", "metrics", "sha256")}
    except RunFileCorrupt as exc:  # the outcome stands; the summary is what could be read
        log.warning("%s: %s", paths.run, exc)
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
