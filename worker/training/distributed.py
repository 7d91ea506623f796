"""One training process among several (torchrun), or the only one.

``teacher train`` with ``resources.gpus``/``resources.processes`` > 1 starts torchrun
(launch.py); each of the processes it starts is a rank, and finds its place here from the
environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK). The training loop talks to the other
ranks only through :class:`Dist`, whose methods are no-ops for a single process, so the loop
reads the same for 1 or 8 processes.

What is synchronised, and when (the *why* is in docs/distributed.md):
* gradients: every optimizer step, by DistributedDataParallel (not for the micro-batches inside
  an accumulation window: ``no_sync``);
* metric sums: summed (never averaged) at each log interval, at the epoch's end and after
  evaluation, so every recorded number is the full-dataset one;
* decisions: at each optimizer step, whether to stop (a signal reached any rank) and whether
  rank 0 wants a step checkpoint, so all ranks stop, or checkpoint, at the same step;
* checkpoints: rank 0 writes, everyone waits at a barrier, so no rank runs ahead of one.
"""
from __future__ import annotations

import ctypes
import datetime as dt
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import torch

# Set by launch.py for its ranks: the launcher's pid, to check against after PR_SET_PDEATHSIG.
LAUNCHER_PID_ENV = "TEACHER_LAUNCHER_PID"
# A collective waits this much longer than the stall watchdog, so that a hang is reported once,
# as "stalled", by the watchdog (which kills every rank); a rank that dies is seen by torchrun
# within its monitor interval and ends the job at once.
COLLECTIVE_MARGIN_S = 60


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: a single process, nothing initialised
    control: Any = None  # the process group for decisions (gloo, on the CPU); None: the default group

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory."""
        return self.rank == 0

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def agree(self, flags: list[bool]) -> list[bool]:
        """Each flag true on every rank if it is true on any: one small all-reduce, on the CPU
        (the control group), so that asking every step never waits for the GPU to finish it."""
        if not self.active:
            return flags
        t = torch.tensor([float(f) for f in flags])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=self.control)
        return [bool(v) for v in t.tolist()]

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj, group=self.control)
        return out

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's BatchNorm running statistics on every rank (each rank updated its own with
        its share of the batch), so that every rank evaluates the model rank 0 saves."""
        if self.active:
            for b in module.buffers():
                torch.distributed.broadcast(b, src=0)

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


SINGLE = Dist()


def from_env(backend: str, collective_timeout_s: float) -> Dist:
    """This process's place, from torchrun's environment; :data:`SINGLE` outside torchrun.
    Initialises the process group (and, for NCCL, this rank's GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    _die_with_launcher()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        # NCCL's own failure detection: a failed or timed-out collective aborts the communicator
        # and the process, instead of leaving it blocked (then torchrun ends the others).
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        torch.cuda.set_device(local_rank)
    timeout = dt.timedelta(seconds=collective_timeout_s)
    torch.distributed.init_process_group(backend, timeout=timeout)
    # Decisions (stop? checkpoint?) travel as CPU tensors: with NCCL, a GPU tensor read back
    # every step would make the host wait for each step's kernels.
    control = torch.distributed.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None
    return Dist(rank, world, local_rank, backend, control)


def _die_with_launcher() -> None:
    """torchrun starts each rank in a session of its own, out of reach of the signals the
    supervisor sends to the launcher's process group. If the launcher is SIGKILLed (the stall
    watchdog, a supervisor giving up on a stop), its ranks must not live on: the kernel kills
    them when it dies."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if launcher and os.getppid() != int(launcher):
        os._exit(3)  # the launcher died before prctl took effect
