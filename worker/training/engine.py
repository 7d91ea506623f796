"""The training loop, readable top to bottom: set up, then per epoch ``train_one_epoch``,
``evaluate``, record, ``save_checkpoint``, check integrity. What a run writes (the step stream,
TensorBoard, progress, history, the console) is the recorder's (recorder.py): the loop reports
events to it and knows nothing of files. The config arrives typed (common.config.TrainConfig).

Design notes (the *why*):
* Metrics are per-sample sums on the device (metrics.py), synchronised once per log interval.
* Resume is exact on CPU, also in the middle of an epoch: the data order depends only on
  (seed, epoch), each sample's augmentation only on (seed, epoch, index) (data.py), every RNG is
  re-seeded at the start of each epoch, and a checkpoint holds every other piece of state. An
  epoch checkpoint ends each epoch; a step checkpoint (``checkpoint.every_steps`` /
  ``every_minutes``, and on a stop) also holds the position in the epoch (:class:`EpochPosition`:
  batches done, the running metric sums, the log interval's start, accumulated gradients), so a
  resume continues the epoch where it stopped and records it once, with exact metrics.
* SIGTERM/SIGINT set a flag that is checked after every batch: the run writes a step
  checkpoint if it fits in the grace period before the SIGKILL (``TEACHER_CANCEL_GRACE_S``),
  stops, and exits with :data:`EXIT_STOPPED` so a supervisor can requeue it.
* ``runtime.compile``: the training step and evaluation run torch.compile'd views of the model
  (:class:`Compiled`); everything that is saved or loaded uses the plain module, so checkpoints,
  exports and resumes are the same with and without it, and a run crosses between the two on
  resume. The metric sums are taken from the logits outside the compiled graph, as always.
* A full disk (ENOSPC/EDQUOT anywhere in the failure's cause chain) is its own outcome,
  :data:`EXIT_NO_SPACE`: progress.json and train.log live on the full volume too, so the exit
  code is the one channel that always reaches a supervisor. Retrying does not fix it.
"""
from __future__ import annotations

import dataclasses
import errno
import itertools
import logging
import math
import os
import random
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from common import faults
from common.config import (BEST_METRICS, CheckpointConfig, ConfigError, OptimConfig, RuntimeConfig, TrainConfig, confine,
                           load_train_config)
from common import rundir
from common.rundir import CheckpointEntry, History, Integrity, ResumePoint, RunPaths, RunStatus
from common.settings import data_root as default_data_root, runs_root as default_runs_root, stall_timeout_s, stop_grace_s

from . import data as data_mod
from . import distributed
from .distributed import Dist
from .artifacts import RunFiles, setup_logging, teardown_logging
from .checkpoints import CheckpointError, CheckpointManager, load_checkpoint_file, manifest_sha256, sha256_file
from .metrics import AccumulationPlan, IntervalMeter, MetricSums, Totals
from .models import build_model, load_matching, load_pretrained
from .recorder import Recorder, previous_integrity, record_outcome

log = logging.getLogger("teacher")

from common.exitcodes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_NO_SPACE, EXIT_OK, EXIT_STOPPED, NO_SPACE_ERRNOS  # noqa: F401 (re-exported)


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, integrity failure, ...)."""


class NonFiniteLossError(TrainingError):
    pass


class IntegrityFailure(TrainingError):
    def __init__(self, message: str, summary: Integrity | None = None):
        super().__init__(message)
        self.summary = summary  # the live integrity verdict that failed (kept in progress.json)


class StopRequested(Exception):
    """A signal asked the run to stop; the last epoch checkpoint stays the resume point."""


class RunDirBusy(StopRequested):
    """Another trainer still holds the run directory (e.g. the orphan of a SIGKILLed worker,
    finishing its current step after its parent-death SIGTERM). Nothing was written: exit 3, and
    the supervisor retries the attempt as an interruption."""


RUN_LOCK = rundir.LOCK
RUN_LOCK_WAIT_S = 600.0  # an orphan stops after its current step (or validation + save)


@contextmanager
def run_dir_lock(run_dir: Path, wait_s: float = RUN_LOCK_WAIT_S) -> Iterator[None]:
    """Hold an exclusive flock on ``run_dir/.lock`` for the whole run, so that two trainers never
    write one run directory at once (the next attempt waits for the previous one's orphan). The
    kernel releases it when the process dies, however it dies."""
    import fcntl

    fd = os.open(RunPaths(run_dir).lock, os.O_RDWR | os.O_CREAT, 0o644)
    alive = Liveness(RunPaths(run_dir).alive)  # waiting for an orphan is not a stall
    try:
        deadline = time.monotonic() + wait_s
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunDirBusy(f"another trainer still holds {run_dir} after {wait_s:.0f}s") from None
                alive()
                if not said:  # stderr: the run's log file belongs to the holder for now
                    print(f"waiting for another trainer to release {run_dir}", file=sys.stderr, flush=True)
                    said = True
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # releases the lock


def find_no_space(exc: BaseException | None) -> OSError | None:
    """The "no space left on device" (or "disk quota exceeded") error in ``exc``'s cause or
    context chain, if there is one."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def no_space_message(exc: OSError, run_dir: Path | None = None) -> str:
    """'no space left on device while writing checkpoints/epoch_0002.pt' (the file relative to
    the run directory when it lies inside it)."""
    what = "no space left on device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
    if exc.filename is None:
        return f"{what} while writing the run's files"
    name = Path(str(exc.filename))
    if run_dir is not None:
        try:
            name = name.resolve().relative_to(Path(run_dir).resolve())
        except ValueError:
            pass
    return f"{what} while writing {name}"


def exit_code_for(exc: BaseException) -> int:
    """The `teacher train` exit code for an exception that ended a run (pure; unit-tested).
    A full disk wins over everything but a stop request: it is what a retry cannot fix."""
    if isinstance(exc, StopRequested):
        return EXIT_STOPPED
    if find_no_space(exc) is not None:
        return EXIT_NO_SPACE
    if isinstance(exc, ConfigError):
        return EXIT_BAD_INPUT
    return EXIT_FAILED


# ---------------------------------------------------------------------------------------------
# Runtime settings derived from the config and the machine
# ---------------------------------------------------------------------------------------------
@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    pin_memory: bool
    num_workers: int

    @property
    def use_scaler(self) -> bool:
        return self.amp_dtype == torch.float16

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def resolve_runtime(rt: RuntimeConfig, dist: Dist = distributed.SINGLE) -> Runtime:
    """The device and its settings. Several processes: rank r on GPU LOCAL_RANK (NCCL), or on the
    CPU for gloo (``resources.processes``), whatever ``device: auto`` would pick."""
    if rt.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("runtime.device is 'cuda' but no CUDA device is visible")
    if dist.backend == "gloo":
        return Runtime(torch.device("cpu"), None, channels_last=False, pin_memory=False, num_workers=rt.num_workers)
    cuda = rt.device == "cuda" or (rt.device == "auto" and torch.cuda.is_available())
    amp_dtype: torch.dtype | None = None
    if cuda and rt.amp != "off":
        if rt.amp == "bf16" or (rt.amp == "auto" and torch.cuda.is_bf16_supported()):
            amp_dtype = torch.bfloat16
        else:
            amp_dtype = torch.float16
    # AMP and channels_last pay off on tensor-core GPUs; on the CPU they are deliberate no-ops.
    device = torch.device("cuda", dist.local_rank) if cuda and dist.active else torch.device("cuda" if cuda else "cpu")
    return Runtime(device, amp_dtype, channels_last=cuda and rt.channels_last != "off",
                   pin_memory=cuda, num_workers=rt.num_workers)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # weights_only loading forbids numpy arrays, so store plain lists.
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Learning-rate schedule: a pure function of the optimizer step, so resume needs only the step
# ---------------------------------------------------------------------------------------------
def lr_factor(step: int, *, optim: OptimConfig, steps_per_epoch: int) -> float:
    total = optim.epochs * steps_per_epoch
    warmup = int(round(optim.warmup_epochs * steps_per_epoch))
    if warmup and step < warmup:
        return (step + 1) / warmup
    if optim.scheduler == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if optim.scheduler == "step":
        return optim.gamma ** ((step // steps_per_epoch) // optim.step_size)
    return 1.0


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    # No weight decay on norms and biases: standard practice (torchvision references, timm).
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if optim.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.momentum > 0)
    return torch.optim.AdamW(groups, lr=optim.lr)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
class Liveness:
    """Touches ``RunPaths.alive`` at most once a second while the run makes progress (a batch
    trained or evaluated): the supervisor's stall watchdog kills a child whose file stops
    changing (a deadlocked DataLoader, a hung collective). One stat-free utime per second."""

    def __init__(self, path: Path | None) -> None:
        self.path, self._next = path, 0.0

    def __call__(self, *, now_anyway: bool = False) -> None:
        """Touch, unless touched less than a second ago (``now_anyway``: touch regardless)."""
        now = time.monotonic()
        if self.path is None or (now < self._next and not now_anyway):
            return
        self._next = now + 1.0
        try:
            os.utime(self.path)
        except FileNotFoundError:
            self.path.touch()
        except OSError:
            pass  # a full disk is reported by the writes that matter, not by this


class CompileFailed(TrainingError):
    """torch.compile could not compile the model (no working C++ compiler, an operator it cannot
    trace, ...). The run fails with the reason; there is no silent fallback to eager mode: a run
    asked to be compiled either is or says why not."""


@dataclass
class Compiled:
    """``runtime.compile``: torch.compile'd views of the model. They share its parameters and
    buffers, and nothing is ever saved from them: checkpoints, exports and resumes use the plain
    module (``TrainState.model``), so their ``state_dict`` keys never gain ``_orig_mod.`` and a
    checkpoint is the same with and without compile.

    ``train`` is the DDP wrapper compiled, as PyTorch recommends for DDP (DDPOptimizer splits the
    graph at the gradient buckets, so the all-reduce still overlaps the backward), or the model
    compiled for one process; ``eval`` is the model compiled (evaluation never runs the DDP
    wrapper): for one process the same object. Eval mode and inference_mode guard differently
    from training, so the first evaluation compiles again, once; a batch of another size (the
    last, smaller one) recompiles once more, with a dynamic batch dimension."""

    train: nn.Module
    eval: nn.Module
    mode: str
    pending: set[str] = dataclasses.field(default_factory=lambda: {"training step", "evaluation batch"})

    @classmethod
    def build(cls, model: nn.Module, ddp: nn.Module | None, mode: str) -> "Compiled":
        eval_net = torch.compile(model, mode=mode)
        return cls(torch.compile(ddp, mode=mode) if ddp is not None else eval_net, eval_net, mode)

    @contextmanager
    def first(self, what: str) -> Iterator[None]:
        """Time the first ``what`` (it compiles: logged once) and turn a torch.compile failure in
        it, or in any later recompile inside the loop, into :class:`CompileFailed`."""
        t0 = time.perf_counter()
        with compile_errors(self.mode):
            yield
        if what in self.pending:
            self.pending.discard(what)
            log.info("torch.compile (runtime.compile, mode %s): the first %s took %.1fs (compiling)", self.mode, what,
                     time.perf_counter() - t0)


@contextmanager
def compile_errors(mode: str) -> Iterator[None]:
    from torch._dynamo.exc import TorchDynamoException  # imported only by a compiled run

    try:
        yield
    except TorchDynamoException as exc:  # BackendCompilerFailed (InductorError: no C++ compiler...), Unsupported...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompileFailed(f"runtime.compile: torch.compile (mode {mode}) failed: {reason}; set runtime.compile: "
                            f"false to train without it") from exc


def _compiling(st: "TrainState | None", what: str) -> Any:
    return st.compiled.first(what) if st is not None and st.compiled is not None else nullcontext()


@dataclass(kw_only=True)
class TrainState:
    """What the loop's functions share. The model, its optimisation state and the position
    (completed epochs, optimizer steps) are what a checkpoint holds; the rest is rebuilt."""

    cfg: TrainConfig
    run: Runtime
    data: data_mod.DataBundle
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    position: "EpochPosition | None" = None  # the epoch in progress (set while training one)
    alive: Liveness = dataclasses.field(default_factory=lambda: Liveness(None))
    dist: Dist = distributed.SINGLE  # this process among the run's processes
    ddp: nn.Module | None = None  # the DistributedDataParallel wrapper of ``model``, for training steps
    compiled: "Compiled | None" = None  # runtime.compile: the torch.compile'd modules (the model stays plain)

    @property
    def net(self) -> nn.Module:
        """What a training step runs: the DDP wrapper (gradients synchronised) or the model,
        compiled with ``runtime.compile``."""
        if self.compiled is not None:
            return self.compiled.train
        return self.ddp if self.ddp is not None else self.model

    @property
    def eval_net(self) -> nn.Module:
        """What evaluation runs: the model (never the DDP wrapper), compiled with ``runtime.compile``."""
        return self.compiled.eval if self.compiled is not None else self.model

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_loader) / self.cfg.optim.grad_accum_steps)


@dataclass(frozen=True)
class EpochTrain:
    totals: Totals  # the epoch's exact sums
    lr: float  # of its last optimizer step
    seconds: float

    @property
    def throughput(self) -> float:
        return self.totals.samples / max(self.seconds, 1e-9)


def criterion(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Per-sample loss (reduction='none'): the sums in metrics.py need every sample's value.
    Computed in float32 even under autocast so fp16 cannot overflow the log-sum-exp."""
    return F.cross_entropy(logits.float(), targets, reduction="none", label_smoothing=label_smoothing)


def _move(images: torch.Tensor, targets: torch.Tensor, run: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    images = images.to(run.device, non_blocking=run.pin_memory, memory_format=run.memory_format)
    return images, targets.to(run.device, non_blocking=run.pin_memory)


@dataclass
class EpochPosition:
    """How far the epoch in progress has got: what a step checkpoint holds beyond what an
    epoch checkpoint does."""

    epoch: int  # the epoch in progress
    batch: int  # its micro-batches done
    sums: MetricSums  # its running metric sums
    meter: IntervalMeter  # where the current log interval started
    lr: float  # of the last optimizer step
    rng: dict[str, Any] | None = None  # a resumed position's RNG state, applied when the epoch restarts

    @classmethod
    def start(cls, st: TrainState, epoch: int) -> "EpochPosition":
        st.optimizer.zero_grad(set_to_none=True)
        return cls(epoch, 0, MetricSums(st.run.device), IntervalMeter(), st.optimizer.param_groups[0]["lr"])

    def to_state(self, model: nn.Module, dist: Dist = distributed.SINGLE) -> dict[str, Any]:
        """With several processes a collective (every rank calls it): the sums of all of them.
        Their gradients are None: they stop only at optimizer steps."""
        # Gradients only in the middle of an accumulation window (between windows they are None).
        grads = [None if p.grad is None else p.grad.detach().cpu() for p in model.parameters()]
        sums = self.sums.state(dist.all_reduce_sum if dist.active else None)
        return {"epoch": self.epoch, "batch": self.batch, "sums": sums, "meter": self.meter.state(),
                "lr": self.lr, "grads": grads if any(g is not None for g in grads) else None}

    @classmethod
    def from_state(cls, state: dict[str, Any], *, rng: dict[str, Any] | None, model: nn.Module,
                   device: torch.device, dist: Dist = distributed.SINGLE) -> "EpochPosition":
        for p, g in zip(model.parameters(), state["grads"] or itertools.repeat(None)):
            p.grad = None if g is None else g.to(p.device)
        # The checkpoint holds every rank's sums added up: rank 0 continues from them and the
        # others from zero, so the next all-reduce gives the epoch's sums again.
        sums = MetricSums.from_state(state["sums"], device) if dist.is_main else MetricSums(device)
        return cls(int(state["epoch"]), int(state["batch"]), sums, IntervalMeter.from_state(state["meter"]),
                   float(state["lr"]), rng)


def train_one_epoch(st: TrainState, epoch: int, recorder: Recorder | None, stop: StopFlag,
                    steps: "StepCheckpoints") -> EpochTrain:
    """One pass over the training data, or the rest of it when ``st.position`` is this epoch
    (a resume from a step checkpoint). A requested stop ends it after the current batch (with
    several processes: after the current optimizer step, which every rank agrees on).
    ``recorder`` is None on the ranks that do not write (all but rank 0)."""
    optim, log_interval = st.cfg.optim, st.cfg.runtime.log_interval
    per_rank_batch = st.train_loader.batch_size
    plan = AccumulationPlan.for_sampler(st.train_loader.sampler, per_rank_batch, optim.grad_accum_steps)
    reduce = st.dist.all_reduce_sum if st.dist.active else None
    st.net.train()
    if st.position is None or st.position.epoch != epoch:
        st.position = EpochPosition.start(st, epoch)
    pos = st.position
    for i, (images, targets) in enumerate(st.train_loader, start=pos.batch):
        images, targets = _move(images, targets, st.run)
        # Inside an accumulation window the gradients stay local; the window's last backward
        # all-reduces them (DDP), once per optimizer step.
        with _no_sync(st) if not plan.ends_window(i) else nullcontext(), _compiling(st, "training step"):
            with st.run.autocast():
                logits = st.net(images)
            per_sample = criterion(logits, targets, optim.label_smoothing)
            weight = plan.weight(i, st.run.device)  # None unless the batch holds padding
            st.scaler.scale(plan.loss(per_sample, i, weight)).backward()
        pos.sums.update(per_sample, logits, targets, weight)
        pos.batch = i + 1
        st.alive()
        periodic = False
        if plan.ends_window(i):
            pos.lr = optimizer_step(st)
            # log_interval counts optimizer steps, so every record sits on a step boundary.
            if plan.is_last(i) or st.step % log_interval == 0:
                interval = pos.meter.lap(pos.sums.totals(reduce))  # the one synchronisation per interval
                if not math.isfinite(interval.loss):
                    raise NonFiniteLossError(f"training loss became {interval.loss} at epoch {epoch}, step {st.step}")
                if recorder is not None:
                    recorder.on_interval(epoch=epoch, batch=i + 1, step=st.step, interval=interval, lr=pos.lr)
            faults.current().after_step(st.step)  # test-only crash points
            periodic = steps.due(st.step) and not plan.is_last(i)  # the epoch checkpoint follows the last
        faults.current().after_batch((epoch - 1) * len(plan) + i + 1)
        if st.dist.active and not plan.ends_window(i):
            continue  # ranks stop and checkpoint only at optimizer steps, where they are in step
        # Rank 0's clock decides a periodic checkpoint; a signal to any rank stops them all.
        stopping, periodic = st.dist.agree([stop.requested, periodic and st.dist.is_main])
        if stopping:
            if st.dist.agree([st.dist.is_main and steps.fits(stop)])[0]:
                steps.save(st, recorder, why="stop requested")
            faults.current().hold_stop(lambda: stop.count)
            raise StopRequested()
        if periodic:
            steps.save(st, recorder, why="periodic")
    st.position = None
    return EpochTrain(pos.sums.totals(reduce), pos.lr, pos.meter.elapsed())


def _no_sync(st: TrainState) -> Any:
    return st.ddp.no_sync() if st.ddp is not None else nullcontext()


def optimizer_step(st: TrainState) -> float:
    """Clip, step, advance the schedule. Returns the learning rate the step used."""
    if st.cfg.optim.grad_clip_norm:
        st.scaler.unscale_(st.optimizer)
        torch.nn.utils.clip_grad_norm_(st.model.parameters(), st.cfg.optim.grad_clip_norm)
    lr = st.optimizer.param_groups[0]["lr"]
    st.scaler.step(st.optimizer)
    st.scaler.update()
    st.optimizer.zero_grad(set_to_none=True)
    st.scheduler.step()
    st.step += 1
    return lr


@torch.inference_mode()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, run: Runtime, label_smoothing: float,
             alive: Liveness | None = None, dist: Dist = distributed.SINGLE, compiled: Compiled | None = None) -> Totals:
    """Exact metrics over the loader's samples (unpadded: each sample counted once). With
    several processes each evaluates its shard of the split (``model`` is the plain module, not
    the DDP wrapper: no collective per batch) and the sums are added up. ``compiled``: ``model``
    is its ``eval`` (timed and its failures reported as runtime.compile's)."""
    model.eval()
    sums = MetricSums(run.device)
    for images, targets in loader:
        if alive is not None:
            alive()
        images, targets = _move(images, targets, run)
        with run.autocast(), compiled.first("evaluation batch") if compiled is not None else nullcontext():
            logits = model(images)
        sums.update(criterion(logits, targets, label_smoothing), logits, targets)
    return sums.totals(dist.all_reduce_sum if dist.active else None)


def checkpoint_state(st: TrainState, history: History) -> dict[str, Any]:
    """Everything a resume needs at an epoch boundary (a step checkpoint adds ``position``)."""
    return {
        "format": "teacher-checkpoint/1",
        "model": st.model.state_dict(), "optimizer": st.optimizer.state_dict(),
        "scheduler": st.scheduler.state_dict(), "scaler": st.scaler.state_dict(),
        "epoch": st.epoch, "step": st.step, "rng": rng_state(),
        "config": st.cfg.to_dict(), "class_names": st.data.class_names, "history": history.to_json(),
    }


def save_checkpoint(st: TrainState, ckpts: CheckpointManager, history: History, metrics: dict[str, Any]) -> list[str]:
    # Committed while the next epoch trains (checkpoints.py): the fsync of a large model's
    # checkpoint would otherwise hold up training for as long as the disk takes.
    return ckpts.save({**checkpoint_state(st, history), "metrics": metrics}, epoch=st.epoch, step=st.step,
                      metrics=metrics, background=True)


class StepCheckpoints:
    """When to write a step checkpoint: every ``every_steps`` optimizer steps, when
    ``every_minutes`` have passed since the last checkpoint of either kind, and on a requested
    stop if the write fits in what is left of the grace period (judged by the slowest write so
    far; otherwise the previous checkpoint stays the resume point, and an atomic write means a
    SIGKILL in the middle of one never leaves half a file as one)."""

    MARGIN_S = 2.0  # for the log lines and the exit after the write

    def __init__(self, ckpts: CheckpointManager, cfg: CheckpointConfig, *, grace_s: float,
                 clock: Any = time.monotonic) -> None:
        self.ckpts, self.every_steps, self.every_s = ckpts, cfg.every_steps, cfg.every_minutes * 60.0
        self.grace_s, self.clock = grace_s, clock
        self.last_at = clock()
        self.write_s: float | None = None  # the slowest checkpoint write of this process

    def due(self, step: int) -> bool:
        by_steps = self.every_steps > 0 and step % self.every_steps == 0
        return by_steps or (self.every_s > 0 and self.clock() - self.last_at >= self.every_s)

    def fits(self, stop: StopFlag) -> bool:
        if self.write_s is None or stop.at is None:
            return True  # nothing to judge by: try (atomic, so the worst case is a wasted attempt)
        left = self.grace_s - (self.clock() - stop.at)
        # An epoch save's commit runs in the background (measured apart): the step checkpoint
        # may have to wait for one, so it counts (which overestimates a step save's own time).
        needs = self.write_s + (self.ckpts.slowest_commit_s if self.ckpts is not None else 0.0)
        if needs + self.MARGIN_S <= left:
            return True
        log.warning("no step checkpoint on stop: a write takes ~%.1fs and %.1fs of the %.0fs grace period are left; "
                    "the previous checkpoint stays the resume point", needs, left, self.grace_s)
        return False

    def wrote(self, seconds: float) -> None:
        self.write_s = max(seconds, self.write_s or 0.0)
        self.last_at = self.clock()

    def save(self, st: TrainState, recorder: Recorder | None, *, why: str) -> None:
        """Every rank calls it (its collectives gather what only rank 0 writes: the metric
        sums and each rank's RNG state), then waits until the file is written."""
        assert st.position is not None
        t0 = self.clock()
        position = st.position.to_state(st.model, st.dist)
        ranks_rng = st.dist.gather(rng_state()) if st.dist.active else None
        if recorder is not None:
            state = {**checkpoint_state(st, recorder.history), "position": position}
            if ranks_rng is not None:
                state["rng_ranks"] = ranks_rng
            name = self.ckpts.save_step(state, epoch=st.epoch, step=st.step, batch=st.position.batch)
            log.info("step checkpoint %s (%s): epoch %d, batch %d, step %d, in %.1fs", name, why,
                     st.position.epoch, st.position.batch, st.step, self.clock() - t0)
        st.dist.barrier()
        self.wrote(self.clock() - t0)


def check_integrity(st: TrainState, run_dir: Path) -> Integrity:
    """Run the metrics-integrity report on our own run directory after every epoch."""
    from common.analysis.live import run_integrity

    report = run_integrity(run_dir, num_classes=len(st.data.class_names), dataset_sizes=st.data.sizes)
    for c in report.checks:
        if c.status in ("fail", "warn"):
            log.warning("integrity: %s", c.summary_line())
    summary = Integrity(report.verdict, failed=sorted({c.id for c in report.checks if c.status == "fail"}),
                        warnings=sorted({c.id for c in report.checks if c.status == "warn"}))
    if summary.failed and st.cfg.integrity.on_fail == "stop":
        raise IntegrityFailure(f"integrity check failed: {', '.join(summary.failed)}", summary)
    return summary


RANK_SEED = 1_000_003  # rank r's epoch seed is rank 0's plus r * RANK_SEED


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of an epoch's randomness (dropout, ...) on a rank: a function of (seed, epoch,
    rank) only, so a resume replays it exactly. The data order and each sample's augmentation
    depend on (seed, epoch) alone, whatever the number of processes (data.py)."""
    return seed * 10_007 + epoch + rank * RANK_SEED


def fit(st: TrainState, recorder: Recorder | None, ckpts: CheckpointManager, run_dir: Path, stop: StopFlag,
        steps: StepCheckpoints) -> None:
    """The epochs from the one after ``st.epoch`` (continuing ``st.position`` when a step
    checkpoint was resumed): train, validate, record, checkpoint, check. Rank 0 records and
    checkpoints (``recorder`` is None on the others); all wait for its checkpoint."""
    seed = st.cfg.optim.seed
    for epoch in range(st.epoch + 1, st.cfg.optim.epochs + 1):
        # Each epoch's randomness depends only on (seed, epoch, rank): resume replays it exactly.
        # In the middle of an epoch the RNG is where the step checkpoint left it.
        resumed = st.position if st.position is not None and st.position.epoch == epoch else None
        if resumed is not None and resumed.rng is not None:
            set_rng_state(resumed.rng)
        else:
            seed_everything(epoch_seed(seed, epoch, st.dist.rank))
        # A stop after the epoch's last (smaller) batch is a position past the last sample.
        per_rank_batch = st.train_loader.batch_size
        skip = min(resumed.batch * per_rank_batch, st.train_loader.sampler.epoch_length) if resumed else 0
        st.train_loader.sampler.set_epoch(epoch, skip=skip)
        st.train_loader.generator.manual_seed(seed * 10_007 + epoch)
        t0 = time.perf_counter()
        trained = train_one_epoch(st, epoch, recorder, stop, steps)
        if recorder is not None:
            recorder.on_validate(epoch=epoch, step=st.step, throughput=trained.throughput)
        st.dist.broadcast_buffers(st.model)  # every rank evaluates the model rank 0 saves
        val = evaluate(st.eval_net, st.val_loader, st.run, st.cfg.optim.label_smoothing, st.alive, st.dist,
                       compiled=st.compiled)
        st.epoch = epoch
        if recorder is not None:
            rec = recorder.on_epoch(epoch=epoch, step=st.step, lr=trained.lr, train=trained.totals, val=val,
                                    train_s=trained.seconds, epoch_s=time.perf_counter() - t0)
            t_save = time.perf_counter()
            save_checkpoint(st, ckpts, recorder.history, rec.metrics())
            steps.wrote(time.perf_counter() - t_save)  # the period restarts; what a write takes (for a stop's)
            recorder.on_checked(rec=rec, integrity=check_integrity(st, run_dir))
        else:
            steps.wrote(0.0)  # the period restarts here too (rank 0's clock decides, but keep in step)
        st.dist.barrier()  # no rank runs ahead of a checkpoint (or of a failed integrity check)
        faults.current().after_epoch(epoch, settle=ckpts.wait)  # test-only: a crash between epochs


# ---------------------------------------------------------------------------------------------
# Set-up and the main entry point
# ---------------------------------------------------------------------------------------------
class InitFromError(ConfigError):
    """The ``init_from`` checkpoint cannot be used (missing, failing its sha256, refused by
    weights-only loading, not a teacher checkpoint): bad input, exit 2. A retry reads the same
    file, so the service does not retry it."""

    def __init__(self, message: str):
        super().__init__({"init_from": [message]})


def init_from_checkpoint(model: nn.Module, rel_path: str, runs_root: Path) -> None:
    """Initialise from another run's checkpoint (confined to the runs root, sha256-verified
    against that run's manifest when it has one, loaded with weights_only)."""
    path = confine(runs_root, rel_path, what="init_from")
    if not path.is_file():
        raise InitFromError(f"checkpoint '{rel_path}' not found under {runs_root.resolve()}")
    try:
        state = load_checkpoint_file(path, expected_sha256=manifest_sha256(path))
    except CheckpointError as exc:  # no fallback: the config names this one file
        raise InitFromError(f"init_from {rel_path}: {exc}") from exc
    if "model" not in state:
        raise InitFromError(f"init_from {rel_path}: not a teacher checkpoint (no 'model' entry)")
    load_matching(model, state["model"], source=rel_path)


class StopFlag:
    """SIGTERM/SIGINT ask for a stop after the current step (checked by the loop)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.at: float | None = None  # time.monotonic() of the first signal
        self.count = 0  # signals handled (the hold_stop fault waits for a second one)
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def install(self) -> "StopFlag":
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def restore(self) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        self.count += 1
        if self.signal is not None:
            # A second signal (a supervisor repeating itself, or one per thread of a dying
            # parent) must not turn the graceful stop under way into a failure: raising here
            # would abort at an arbitrary point and record a KeyboardInterrupt.
            log.warning("received %s again: already stopping after the current batch", name)
            return
        self.signal, self.at = signum, time.monotonic()
        log.warning("received %s: stopping after the current batch", name)


@dataclass
class RunResult:
    status: str
    epochs_completed: int
    history: History
    run_dir: Path


def train(cfg: TrainConfig, run_dir: Path, *, resume: bool = False, debug: bool = False,
          data_root: Path | None = None, runs_root: Path | None = None,
          handle_signals: bool = True) -> RunResult:
    """Train ``cfg`` into ``run_dir`` (a fresh directory, or an existing one with ``resume``)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    require_gpus(cfg)
    dist = distributed.from_env(cfg.resources.backend, collective_timeout_s(cfg))  # SINGLE outside torchrun
    try:
        with run_dir_lock(run_dir) if dist.is_main else nullcontext():  # rank 0 owns the directory
            return _train_locked(cfg, run_dir, resume=resume, debug=debug,
                                 data_root=Path(data_root or default_data_root()),
                                 runs_root=Path(runs_root or default_runs_root()), handle_signals=handle_signals,
                                 dist=dist)
    finally:
        dist.close()


def require_gpus(cfg: TrainConfig) -> None:
    """Never train on fewer GPUs than ``resources.gpus`` asks for (placement keeps such a job
    off this host; this is the last word): TrainingError."""
    if cfg.resources.gpus is not None and torch.cuda.device_count() < cfg.resources.gpus:
        raise TrainingError(f"resources.gpus asks for {cfg.resources.gpus} GPU(s); this host has "
                            f"{torch.cuda.device_count()} visible")


def collective_timeout_s(cfg: TrainConfig) -> float:
    """How long a collective may wait for the other ranks: longer than the stall watchdog's
    timeout, so that a hang is the watchdog's to report (distributed.COLLECTIVE_MARGIN_S)."""
    return float(cfg.runtime.stall_timeout_s or stall_timeout_s()) + distributed.COLLECTIVE_MARGIN_S


def _train_locked(cfg: TrainConfig, run_dir: Path, *, resume: bool, debug: bool, data_root: Path,
                  runs_root: Path, handle_signals: bool, dist: Dist = distributed.SINGLE) -> RunResult:
    files = RunFiles(run_dir)
    setup_logging(run_dir, debug=debug, rank=dist.rank)
    if dist.is_main:
        files.reserve_space()
    stop = StopFlag().install() if handle_signals else StopFlag()
    try:
        return _train(cfg, files, resume=resume, data_root=data_root, runs_root=runs_root, stop=stop, dist=dist)
    except StopRequested:
        if dist.is_main:
            log.warning("stopped by signal; resume with: teacher train --resume %s", run_dir)
            record_outcome(files, run_dir, RunStatus.STOPPED)
        raise
    except BaseException as exc:
        if not dist.is_main:
            log.error("failed: %s: %s", type(exc).__name__, exc)
            raise
        nospace = find_no_space(exc)
        if nospace is not None:
            files.release_reserve()  # room to write why, below
            error = no_space_message(nospace, run_dir)
            log.error("%s; the checkpoints written before are intact", error)
        else:
            error = f"{type(exc).__name__}: {exc}"
        # Best effort: on a full disk this write fails too (the exit code still tells).
        record_outcome(files, run_dir, RunStatus.FAILED, error=error,
                       integrity=exc.summary if isinstance(exc, IntegrityFailure) else None)
        raise
    finally:
        if dist.is_main:
            files.release_reserve()
        stop.restore()
        teardown_logging()


def write_export(paths: RunPaths, ckpts: CheckpointManager) -> None:
    """A succeeded run's shippable model (``export/model.pt`` + ``model.json``, from best.pt),
    written before the run reports done, so every succeeded job has one."""
    if not paths.best.is_file():
        log.warning("no best.pt (no epoch had a finite %s): nothing exported", ckpts.best_metric)
        return
    from .export import export_checkpoint

    info = export_checkpoint(paths.best, paths.export)
    log.info("exported best.pt (epoch %d) to %s", info.meta["epoch"], info.out_dir)


def build_state(cfg: TrainConfig, run_dir: Path, *, data_root: Path, runs_root: Path,
                dist: Dist = distributed.SINGLE) -> TrainState:
    """Data, model and optimisation state for a fresh start (a resume then loads a checkpoint).
    With several processes each gets its shard of both splits, ``optim.batch_size`` / world size
    samples per batch, and the model wrapped in DistributedDataParallel."""
    run = resolve_runtime(cfg.runtime, dist)
    seed, optim = cfg.optim.seed, cfg.optim
    seed_everything(seed)
    bundle = data_mod.load_data(cfg.data, data_root, seed=seed, num_classes=cfg.model.num_classes)
    log.info("run %s: %s on %s, %d classes, %d train / %d val samples, device %s, amp %s, channels_last %s%s",
             run_dir, cfg.model.arch, cfg.data.root, len(bundle.class_names), *bundle.sizes.values(),
             run.device, run.amp_dtype, run.channels_last,
             f", {dist.world_size} processes ({dist.backend}), {optim.batch_size // dist.world_size} samples per "
             f"process and batch" if dist.active else "")
    loaders = []
    for split, train in ((bundle.train, True), (bundle.val, False)):
        transform = data_mod.build_transforms(cfg.data.image_size, train=train, augment=train and cfg.data.augment)
        ds = data_mod.ImageListDataset(split.samples, transform)
        # Training shards are padded to equal length (every rank takes the same steps; padding
        # weighs 0); evaluation shards are not (each sample counted once).
        sampler = data_mod.EpochSampler(len(ds), shuffle=train, seed=seed, world_size=dist.world_size,
                                        rank=dist.rank, pad=train)
        loaders.append(data_mod.build_loader(ds, sampler, batch_size=optim.batch_size // dist.world_size,
                                             num_workers=run.num_workers, pin_memory=run.pin_memory, seed=seed))
    model = build_model(cfg.model.arch, len(bundle.class_names))
    if cfg.model.pretrained:
        load_pretrained(model, cfg.model.arch)
    if cfg.init_from:
        init_from_checkpoint(model, cfg.init_from, runs_root)
    if dist.active and cfg.runtime.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(run.device, memory_format=run.memory_format)
    ddp = None
    if dist.active:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[run.device.index] if run.device.type == "cuda"
                                                  else None)
    compiled = None
    if cfg.runtime.compile:  # after the move to the device (and channels_last) and the DDP wrapper
        compiled = Compiled.build(model, ddp, cfg.runtime.compile_mode)
        log.info("runtime.compile: torch.compile on (mode %s, backend inductor); the first training step and the "
                 "first evaluation compile", cfg.runtime.compile_mode)
    optimizer = build_optimizer(model, optim)
    steps_per_epoch = math.ceil(len(loaders[0]) / optim.grad_accum_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, optim=optim, steps_per_epoch=steps_per_epoch))
    return TrainState(cfg=cfg, run=run, data=bundle, train_loader=loaders[0], val_loader=loaders[1], model=model,
                      optimizer=optimizer, scheduler=scheduler,
                      scaler=torch.amp.GradScaler(run.device.type, enabled=run.use_scaler), dist=dist, ddp=ddp,
                      compiled=compiled)


def restore(st: TrainState, ckpts: CheckpointManager, files: RunFiles) -> tuple[History | None, ResumePoint | None]:
    """Load the latest usable checkpoint into ``st``; returns its history and where it resumes
    (None, None: start afresh). Step records written after it are dropped."""
    # Every rank loads the checkpoint rank 0 chose (it may have skipped a damaged newer one).
    loaded = ckpts.load_latest() if st.dist.is_main else None
    name = st.dist.broadcast(loaded[1].name if loaded is not None else None)
    if not st.dist.is_main and name is not None:
        loaded = ckpts.load_named(name)
    history, point = None, None
    if loaded is None:
        log.warning("no usable checkpoint in %s: starting from epoch 1", ckpts.dir)
    else:
        state, entry = loaded
        for key in ("model", "optimizer", "scheduler", "scaler"):
            getattr(st, key).load_state_dict(state[key])
        rng = own_rng(state, st.dist)
        if rng is not None:
            set_rng_state(rng)
        history = History.from_json(state["history"])
        st.epoch, st.step = state["epoch"], state["step"]
        if "position" in state:  # a step checkpoint: continue its epoch
            st.position = EpochPosition.from_state(state["position"], rng=rng, model=st.model,
                                                   device=st.run.device, dist=st.dist)
        point = resume_point(st, entry)
        log.info("resumed from %s (epoch %d, step %d%s)", entry.name, st.epoch, st.step,
                 f", batch {point.batch} of epoch {st.epoch + 1}" if point.batch else "")
    if st.dist.is_main:
        dropped = files.truncate_steps(st.step, st.epoch + (1 if st.position is not None else 0))
        if dropped:
            log.info("dropped %d step record(s) written after that checkpoint", dropped)
    return history, point


def own_rng(state: dict[str, Any], dist: Dist) -> dict[str, Any] | None:
    """This rank's RNG state in a checkpoint: its own when the checkpoint was written by as many
    ranks (a step checkpoint of a run of several processes), rank 0's for rank 0, else None (the
    epoch's seed then stands in: only per-rank randomness such as dropout differs)."""
    ranks = state.get("rng_ranks")
    if ranks is not None and len(ranks) == dist.world_size:
        return ranks[dist.rank]
    return state["rng"] if dist.is_main else None


def resume_point(st: TrainState, entry: CheckpointEntry) -> ResumePoint:
    return ResumePoint(st.epoch, st.step, st.position.batch if st.position is not None else 0, entry.name,
                       entry.created_at)


def _train(cfg: TrainConfig, files: RunFiles, *, resume: bool, data_root: Path, runs_root: Path,
           stop: StopFlag, dist: Dist = distributed.SINGLE) -> RunResult:
    paths = RunPaths(files.dir)
    # Before anything else: a save that a crash cut short (after the manifest, before the
    # links and pruning) is finished, so what follows sees a consistent checkpoint directory.
    ckpts = CheckpointManager(paths.checkpoints, keep_last=cfg.checkpoint.keep_last,
                              every_epochs=cfg.checkpoint.every_epochs, best_metric=cfg.checkpoint.best_metric,
                              best_mode=BEST_METRICS[cfg.checkpoint.best_metric])
    alive = Liveness(paths.alive if dist.is_main else None)
    alive()  # started: the watchdog's clock restarts here, not at the child's start
    if dist.is_main:
        ckpts.complete_interrupted_save()
    st = build_state(cfg, files.dir, data_root=data_root, runs_root=runs_root, dist=dist)
    integrity = previous_integrity(files.dir) if resume and dist.is_main else None
    st.alive = alive
    alive(now_anyway=True)  # set up (data listed, model built)
    history, resumed_from = restore(st, ckpts, files) if resume else (None, None)
    steps = StepCheckpoints(ckpts, cfg.checkpoint, grace_s=stop_grace_s())
    history = history or History(len(st.data.class_names), st.data.class_names, st.data.sizes)
    if not dist.is_main:  # trains in step with rank 0, which writes everything
        fit(st, None, ckpts, files.dir, stop, steps)
        return RunResult("succeeded", st.epoch, history, files.dir)
    files.write_config(cfg.to_dict())
    files.write_history(history.to_json())
    # purge_step: TensorBoard readers discard events from the interrupted epoch.
    tb = SummaryWriter(str(paths.tensorboard), purge_step=st.step + 1 if resume else None)
    recorder = Recorder(files, tb, history=history, epochs=cfg.optim.epochs,
                        steps_per_epoch=st.steps_per_epoch,
                        batches=len(st.train_loader), val_batches=len(st.val_loader),
                        integrity=integrity if st.epoch else None, resumed_from=resumed_from)
    try:
        fit(st, recorder, ckpts, files.dir, stop, steps)
    except BaseException:
        ckpts.settle()  # the last epoch's commit finishes (a stop resumes from it); the run's error stands
        raise
    finally:
        tb.close()
    ckpts.wait()  # before the export reads best.pt and before "succeeded": the last commit is durable
    write_export(paths, ckpts)
    recorder.on_end(epoch=st.epoch, step=st.step, best=ckpts.best)
    log.info("done: %d epoch(s); best %s", st.epoch, ckpts.best)
    return RunResult("succeeded", st.epoch, history, files.dir)


def evaluate_checkpoint(path: Path, *, data_root: Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """Re-evaluate a saved checkpoint on its run's validation split with a fresh model."""
    state = load_checkpoint_file(path, expected_sha256=manifest_sha256(path))
    cfg, class_names = load_train_config(state["config"]), state["class_names"]
    bundle = data_mod.load_data(cfg.data, Path(data_root or default_data_root()), seed=cfg.optim.seed,
                                num_classes=len(class_names))
    if bundle.class_names != class_names:
        raise TrainingError("the dataset's classes differ from the checkpoint's")
    model = build_model(cfg.model.arch, len(class_names))
    model.load_state_dict(state["model"])
    run = resolve_runtime(dataclasses.replace(cfg.runtime, device=device, amp="off", channels_last="off", num_workers=0))
    model.to(run.device)
    transform = data_mod.build_transforms(cfg.data.image_size, train=False, augment=False)
    ds = data_mod.ImageListDataset(bundle.val.samples, transform)
    loader = data_mod.build_loader(ds, data_mod.EpochSampler(len(ds), shuffle=False, seed=0),
                                   batch_size=cfg.optim.batch_size, num_workers=0, pin_memory=False, seed=0)
    totals = evaluate(model, loader, run, cfg.optim.label_smoothing)
    return {"epoch": state["epoch"], "sha256": sha256_file(path),
            "loss": totals.loss, "top1": totals.top1, "top5": totals.top5, "samples": int(round(totals.samples))}
