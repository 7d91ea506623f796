"""Test-only fault points, parsed once from ``TEACHER_FAULT`` into named hooks.

The fault tests (tests/system) start real processes and need them to crash at
exact places: a SIGKILL half-way through writing a checkpoint, a SIGTERM at step N, a worker
that exits while its child trains. Production code calls a named hook at each such place; with
``TEACHER_FAULT`` unset (always, outside tests) every hook is a no-op, and the spec is parsed
once per process instead of each call site grepping the environment with its own syntax.

``TEACHER_FAULT`` is a comma-separated list of ``name`` or ``name:N`` items, e.g.
``kill_at_step:7,hold_stop``. Torch-free: the supervisor uses it too.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

# name -> takes a number (the epoch or step it fires at)
KNOWN: dict[str, bool] = {
    "kill_at_step": True,            # SIGKILL the trainer right after step N (and its log line, if any)
    "sigterm_at_step": True,         # SIGTERM the trainer after step N (a preemption)
    "hang_at_step": True,            # hang (a deadlock) after step N, once per working directory
    "raise_at_step": True,           # raise a RuntimeError after step N (a training failure, exit 1)
    "sigterm_at_batch": True,        # SIGTERM after the run's N-th micro-batch (counted across epochs)
    "kill_after_epoch": True,        # SIGKILL after epoch N's checkpoint is complete
    "kill_in_checkpoint": True,      # write half of epoch N's file to its temp name, then SIGKILL
    "kill_after_manifest": True,     # SIGKILL after epoch N's manifest, before links and pruning
    "hold_commit": True,             # epoch N's commit (off the training thread) waits before its manifest
                                     # until the process is killed (at most HOLD_COMMIT_S): training goes on
    "hold_stop": False,              # keep a requested stop open until a second signal came
    "once": False,                   # each numbered fault fires once per working directory (a retry gets past it)
    "only_rank": True,               # faults fire only in the training process of rank N (several processes)
    "zero_train_metrics": False,     # record train metrics as 0.0 (the original incident)
    "worker_exit": False,            # the worker process exits after claiming a job
    "worker_exit_after_child": False,  # ... after its training child has started
}


HOLD_COMMIT_S = 120.0


class FaultSpecError(ValueError):
    pass


@dataclass(frozen=True)
class Faults:
    flags: frozenset[str] = frozenset()
    at: dict[str, frozenset[int]] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> "Faults":
        flags: set[str] = set()
        at: dict[str, set[int]] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, arg = item.partition(":")
            if name not in KNOWN:
                raise FaultSpecError(f"TEACHER_FAULT: unknown fault {name!r} (known: {', '.join(sorted(KNOWN))})")
            if KNOWN[name]:
                if not arg.isdigit():
                    raise FaultSpecError(f"TEACHER_FAULT: {name} needs a number ({name}:N), got {item!r}")
                at.setdefault(name, set()).add(int(arg))
            else:
                flags.add(name)
        return cls(frozenset(flags), {k: frozenset(v) for k, v in at.items()})

    @classmethod
    def from_env(cls) -> "Faults":
        faults = cls.parse(os.environ.get("TEACHER_FAULT", ""))
        ranks = faults.at.get("only_rank")
        if ranks and int(os.environ.get("RANK", "0")) not in ranks:
            return cls()  # another rank's faults (RANK: set by torchrun for each process)
        return faults

    def __bool__(self) -> bool:
        return bool(self.flags or self.at)

    def on(self, name: str) -> bool:
        return name in self.flags

    def fires(self, name: str, n: int) -> bool:
        if n not in self.at.get(name, ()):
            return False
        if "once" in self.flags:
            marker = f".fault-{name}-{n}"
            if os.path.exists(marker):
                return False
            open(marker, "w").close()
        return True

    # ---- the hooks, named by where they are called
    def after_step(self, step: int) -> None:
        if self.fires("kill_at_step", step):
            os.kill(os.getpid(), signal.SIGKILL)  # a crash in the middle of an epoch
        if self.fires("sigterm_at_step", step):
            os.kill(os.getpid(), signal.SIGTERM)  # a preemption at a known step
        if self.fires("hang_at_step", step) and not os.path.exists(f".fault-hang-{step}"):
            open(f".fault-hang-{step}", "w").close()  # the retry gets past it
            while True:  # a deadlocked DataLoader or collective: alive, no progress, deaf to SIGTERM
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
                time.sleep(3600)
        if self.fires("raise_at_step", step):
            raise RuntimeError(f"test fault raise_at_step:{step}")  # the training itself fails

    def after_batch(self, batch: int) -> None:
        if self.fires("sigterm_at_batch", batch):
            os.kill(os.getpid(), signal.SIGTERM)  # a preemption inside an accumulation window

    def after_epoch(self, epoch: int, settle: Callable[[], None] = lambda: None) -> None:
        """``settle``: waits until epoch N's checkpoint is committed (the commit runs off the
        training thread), so the kill lands after it, as the fault's name says."""
        if self.fires("kill_after_epoch", epoch):
            settle()
            os.kill(os.getpid(), signal.SIGKILL)

    def in_commit(self, epoch: int) -> None:
        """Called by epoch N's checkpoint commit with its file durable and renamed, before the
        manifest names it: ``hold_commit`` keeps it there while training goes on, so that a
        kill (``kill_at_step`` in the next epoch) lands in the window a background commit opens."""
        if self.fires("hold_commit", epoch):
            deadline = time.monotonic() + HOLD_COMMIT_S
            while time.monotonic() < deadline:
                time.sleep(0.05)

    def after_manifest(self, epoch: int) -> None:
        if self.fires("kill_after_manifest", epoch):
            os.kill(os.getpid(), signal.SIGKILL)

    def in_checkpoint_write(self, epoch: int, serialized: Callable[[], bytes], partial_path: "os.PathLike[str]") -> None:
        """Write half the file's bytes (``serialized()``) to its temp name, then SIGKILL, as a
        power cut would."""
        if self.fires("kill_in_checkpoint", epoch):
            data = serialized()
            with open(partial_path, "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

    def hold_stop(self, signals_seen: Callable[[], int], deadline_s: float = 120) -> None:
        """Hold a requested stop open until a second signal has been handled (a flag polled with
        a deadline, not pause(): the signal may come before we get here)."""
        if self.on("hold_stop"):
            deadline = time.monotonic() + deadline_s
            while signals_seen() < 2 and time.monotonic() < deadline:
                time.sleep(0.05)


_current: Faults | None = None


def current() -> Faults:
    """This process's faults (parsed on first use)."""
    global _current
    if _current is None:
        _current = Faults.from_env()
    return _current
