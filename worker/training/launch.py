"""Start a run's processes through torchrun (PyTorch's own launcher, torch.distributed.run),
inside the ``teacher train`` process that the supervisor (or a user) started.

Why in-process instead of exec'ing the ``torchrun`` script: its exit code. torchrun exits 1
for any worker failure (a ChildFailedError) and for a signal it got, but the supervisor's
contract is the trainer's exit code (1 failed, 2 bad input, 3 stopped, 4 no space; a death by
signal as such). Here the failure torchrun reports is mapped back to that contract.

torchrun runs with ``--standalone`` (a rendezvous on a free local port: one host),
``--max-restarts 0`` (the supervisor owns retries, which resume from checkpoints) and a
shutdown timeout of the cancel grace period, so on SIGTERM (cancel, worker shutdown,
preemption) every rank gets the time to write its step checkpoint.
"""
from __future__ import annotations

import logging
import os
import signal
import sys

from common.exitcodes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_NO_SPACE, EXIT_STOPPED
from common.settings import stop_grace_s

from .distributed import LAUNCHER_PID_ENV

log = logging.getLogger("teacher")

# Which exit code stands for the run when several ranks failed: a full disk first (a retry
# cannot help), then bad input, then whatever rank 0 said (it writes the run's records).
_PRECEDENCE = (EXIT_NO_SPACE, EXIT_BAD_INPUT)


def torchrun_args(nproc: int, train_args: list[str]) -> list[str]:
    return ["--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc), "--max-restarts", "0",
            "--monitor-interval", "0.2", "--module", "common.apps.cli", "train", *train_args]


# What torchrun sends the other ranks when one fails (or a stop reached it): a rank that died
# of one of these was stopped, it is not why the run ended.
_STOP_SIGNALS = (-signal.SIGTERM, -signal.SIGINT)


def exit_code(failures: dict[int, int]) -> int:
    """The run's exit code from the failed ranks' exit codes (negative: killed by that signal).
    A rank killed by another signal (SIGKILL: the OOM killer; SIGSEGV) is the root cause
    whatever the others did afterwards (a peer's collective fails when it dies); then the
    trainer's own codes; a rank stopped by SIGTERM before it could handle it comes last.
    Pure, unit-tested."""
    killed = [code for code in failures.values() if code < 0 and code not in _STOP_SIGNALS]
    if killed:
        return killed[0]
    own = {rank: code for rank, code in failures.items() if code > 0}
    for code in _PRECEDENCE:
        if code in own.values():
            return code
    if 0 in own:
        return own[0]
    if own:
        return own[min(own)]
    return next(iter(failures.values()), EXIT_FAILED)


def launch(nproc: int, train_args: list[str]) -> int:
    """Run ``teacher train <train_args>`` as ``nproc`` ranks; returns the exit code to exit with
    (a negative code: die by that signal, see :func:`exit_as`)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(int(stop_grace_s())))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    for name in ("torch.distributed.elastic", "torch.distributed.run"):
        logging.getLogger(name).setLevel(logging.WARNING)  # its INFO banner per start is noise in train.log
    try:
        run(parse_args(torchrun_args(nproc, train_args)))
    except ChildFailedError as exc:
        codes = {rank: failure.exitcode for rank, failure in exc.failures.items()}
        print(f"torchrun: rank exit codes {codes}", file=sys.stderr, flush=True)
        return exit_code(codes)
    except SignalException as exc:
        # A stop signal reached the launcher: torchrun passed it on to every rank and waited
        # for them (they checkpoint and exit 3) before raising this.
        print(f"torchrun: stopped by {exc.sigval.name}", file=sys.stderr, flush=True)
        return EXIT_STOPPED
    return 0


def exit_as(code: int) -> None:
    """Exit with ``code``; a negative one re-raises that signal on this process, so that the
    supervisor sees the run die the way its rank died (a SIGKILL is an OOM kill, not a failure
    of the training)."""
    if code < 0:
        sig = signal.Signals(-code)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # (those two have no handler to reset)
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    sys.exit(code)
