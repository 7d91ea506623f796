"""The training loop, readable top to bottom: set up, then per epoch ``train_one_epoch``,
``evaluate``, record, ``save_checkpoint``, check integrity.

Design notes (the *why*):
* Metrics are per-sample sums on the device (metrics.py), synchronised once per log interval.
* Resume is exact on CPU: the data order depends only on (seed, epoch), every RNG is re-seeded
  at the start of each epoch, and the checkpoint holds every other piece of state. An epoch is
  recorded only together with its checkpoint, so a crash replays the whole unfinished epoch.
* SIGTERM/SIGINT set a flag that is checked after every step: the run stops within one step,
  keeps its last epoch checkpoint and exits with :data:`EXIT_STOPPED` so a supervisor can
  requeue it.
* A full disk (ENOSPC/EDQUOT anywhere in the failure's cause chain) is its own outcome,
  :data:`EXIT_NO_SPACE`: progress.json and train.log live on the full volume too, so the exit
  code is the one channel that always reaches a supervisor. Retrying does not fix it.
"""
from __future__ import annotations

import errno
import json
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
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from common.config import BEST_METRICS, ConfigError, confine
from common.settings import data_root as default_data_root, runs_root as default_runs_root

from . import data as data_mod
from .artifacts import HISTORY_FORMAT, RunFiles, sanitize, setup_logging, teardown_logging
from .checkpoints import CheckpointError, CheckpointManager, load_checkpoint_file, manifest_sha256, sha256_file
from .metrics import MetricSums, Totals
from .models import build_model, load_matching, load_pretrained

log = logging.getLogger("teacher")

from common.exitcodes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_NO_SPACE, EXIT_OK, EXIT_STOPPED, NO_SPACE_ERRNOS  # noqa: F401 (re-exported)


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, integrity failure, ...)."""


class NonFiniteLossError(TrainingError):
    pass


class IntegrityFailure(TrainingError):
    def __init__(self, message: str, summary: dict[str, Any] | None = None):
        super().__init__(message)
        self.summary = summary  # the live integrity summary that failed (kept in progress.json)


class StopRequested(Exception):
    """A signal asked the run to stop; the last epoch checkpoint stays the resume point."""


class RunDirBusy(StopRequested):
    """Another trainer still holds the run directory (e.g. the orphan of a SIGKILLed worker,
    finishing its current step after its parent-death SIGTERM). Nothing was written: exit 3, and
    the supervisor retries the attempt as an interruption."""


RUN_LOCK = ".lock"
RUN_LOCK_WAIT_S = 600.0  # an orphan stops after its current step (or validation + save)


@contextmanager
def run_dir_lock(run_dir: Path, wait_s: float = RUN_LOCK_WAIT_S) -> Iterator[None]:
    """Hold an exclusive flock on ``run_dir/.lock`` for the whole run, so that two trainers never
    write one run directory at once (the next attempt waits for the previous one's orphan). The
    kernel releases it when the process dies, however it dies."""
    import fcntl

    fd = os.open(run_dir / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
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

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def resolve_runtime(rt: dict[str, Any]) -> Runtime:
    if rt["device"] == "cuda" and not torch.cuda.is_available():
        raise TrainingError("runtime.device is 'cuda' but no CUDA device is visible")
    cuda = rt["device"] == "cuda" or (rt["device"] == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    amp = rt["amp"]
    amp_dtype: torch.dtype | None = None
    if cuda and amp != "off":
        if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
            amp_dtype = torch.bfloat16
        else:
            amp_dtype = torch.float16
    # AMP and channels_last pay off on tensor-core GPUs; on the CPU they are deliberate no-ops.
    channels_last = cuda and rt["channels_last"] != "off"
    return Runtime(device, amp_dtype, channels_last, pin_memory=cuda, num_workers=rt["num_workers"])


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
def lr_factor(step: int, *, optim: dict[str, Any], steps_per_epoch: int) -> float:
    total = optim["epochs"] * steps_per_epoch
    warmup = int(round(optim["warmup_epochs"] * steps_per_epoch))
    if warmup and step < warmup:
        return (step + 1) / warmup
    if optim["scheduler"] == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if optim["scheduler"] == "step":
        return optim["gamma"] ** ((step // steps_per_epoch) // optim["step_size"])
    return 1.0


def build_optimizer(model: nn.Module, optim: dict[str, Any]) -> torch.optim.Optimizer:
    # No weight decay on norms and biases: standard practice (torchvision references, timm).
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": optim["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    if optim["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=optim["lr"], momentum=optim["momentum"], nesterov=optim["momentum"] > 0)
    return torch.optim.AdamW(groups, lr=optim["lr"])


# ---------------------------------------------------------------------------------------------
# State shared by the loop's functions
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    cfg: dict[str, Any]
    run: Runtime
    files: RunFiles
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    writer: SummaryWriter
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    train_sampler: data_mod.EpochSampler
    class_names: list[str]
    dataset_sizes: dict[str, int]
    history: dict[str, Any]
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    stop: Callable[[], bool] = lambda: False
    faults: str = ""
    integrity: dict[str, Any] | None = None  # the latest live integrity summary

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_loader) / self.cfg["optim"]["grad_accum_steps"])

    @property
    def total_steps(self) -> int:
        return self.cfg["optim"]["epochs"] * self.steps_per_epoch


def criterion(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Per-sample loss (reduction='none'): the sums in metrics.py need every sample's value.
    Computed in float32 even under autocast so fp16 cannot overflow the log-sum-exp."""
    return F.cross_entropy(logits.float(), targets, reduction="none", label_smoothing=label_smoothing)


def _move(images: torch.Tensor, targets: torch.Tensor, run: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    fmt = torch.channels_last if run.channels_last else torch.contiguous_format
    images = images.to(run.device, non_blocking=run.pin_memory, memory_format=fmt)
    return images, targets.to(run.device, non_blocking=run.pin_memory)


def accumulation_windows(sizes: list[int], accum: int) -> list[int]:
    """Samples per optimizer step: each window of ``accum`` micro-batches, the last one shorter."""
    return [sum(sizes[i:i + accum]) for i in range(0, len(sizes), accum)]


def train_one_epoch(st: TrainState, epoch: int) -> tuple[Totals, float, float]:
    """One pass over the training data. Returns (totals, lr of the last step, seconds)."""
    cfg, run = st.cfg, st.run
    optim, log_interval = cfg["optim"], cfg["runtime"]["log_interval"]
    accum, ls = optim["grad_accum_steps"], optim["label_smoothing"]
    st.model.train()
    sums = MetricSums(run.device)
    num_batches = len(st.train_loader)
    # Per-sample exact gradients under accumulation: each window's loss is Σ loss / (samples in
    # the window), so a smaller last batch or last window is weighted exactly, not as a full one.
    num_real = st.train_sampler.num_real
    sizes, start = [], 0
    for size in data_mod.batch_sizes(len(st.train_sampler), optim["batch_size"]):
        sizes.append(max(0, min(size, num_real - start)))  # padded positions carry no weight
        start += size
    windows = [max(1, w) for w in accumulation_windows(sizes, accum)]
    seen = 0  # positions consumed; positions >= num_real are padding (several processes)
    last_lr = st.optimizer.param_groups[0]["lr"]
    t0 = last_t = time.perf_counter()
    last_logged = Totals(0.0, 0.0, 0.0, 0.0)
    st.optimizer.zero_grad(set_to_none=True)
    for batch_idx, (images, targets) in enumerate(st.train_loader):
        images, targets = _move(images, targets, run)
        bsz = targets.shape[0]
        weight = None
        if seen + bsz > num_real:
            weight = (torch.arange(seen, seen + bsz, device=run.device) < num_real).float()
        seen += bsz
        with run.autocast():
            logits = st.model(images)
        per_sample = criterion(logits, targets, ls)
        loss_terms = per_sample if weight is None else per_sample * weight
        loss = loss_terms.sum() / windows[batch_idx // accum]
        st.scaler.scale(loss).backward()
        sums.update(per_sample, logits, targets, weight)

        end_of_window = (batch_idx + 1) % accum == 0 or batch_idx + 1 == num_batches
        if end_of_window:
            if optim["grad_clip_norm"]:
                st.scaler.unscale_(st.optimizer)
                torch.nn.utils.clip_grad_norm_(st.model.parameters(), optim["grad_clip_norm"])
            last_lr = st.optimizer.param_groups[0]["lr"]
            st.scaler.step(st.optimizer)
            st.scaler.update()
            st.optimizer.zero_grad(set_to_none=True)
            st.scheduler.step()
            st.step += 1

        final = batch_idx + 1 == num_batches
        # log_interval counts optimizer steps, so every record sits on a step boundary.
        if final or (end_of_window and st.step % log_interval == 0):
            totals = sums.totals()  # the one synchronisation per interval
            now = time.perf_counter()
            interval_n = totals.samples - last_logged.samples
            interval_loss = (totals.loss_sum - last_logged.loss_sum) / interval_n if interval_n else math.nan
            if not math.isfinite(interval_loss):
                raise NonFiniteLossError(f"training loss became {interval_loss} at epoch {epoch}, step {st.step}")
            throughput = interval_n / max(now - last_t, 1e-9)
            st.files.append_step({
                "split": "train", "epoch": epoch, "batch": batch_idx + 1, "step": st.step,
                **totals.as_record(), "lr": last_lr, "throughput": throughput, "time": time.time(), "final": final,
            })
            st.writer.add_scalar("step/train_loss", interval_loss, st.step)
            st.writer.add_scalar("step/lr", last_lr, st.step)
            write_progress(st, epoch=epoch, phase="train", batch=batch_idx + 1, batches=num_batches,
                           throughput=throughput, latest={"train.loss": interval_loss})
            log.debug("epoch %d batch %d/%d loss %.4f", epoch, batch_idx + 1, num_batches, interval_loss)
            last_logged, last_t = totals, now
            if f"kill_at_step:{st.step}" in st.faults.split(","):
                os.kill(os.getpid(), signal.SIGKILL)  # test-only: a crash in the middle of an epoch
            if f"sigterm_at_step:{st.step}" in st.faults.split(","):
                os.kill(os.getpid(), signal.SIGTERM)  # test-only: a preemption at a known step
        if st.stop():
            if "hold_stop" in st.faults.split(","):
                # Test-only: hold the stop open until a second signal has been handled (a flag
                # polled with a deadline, not pause(): the signal may come before we get here).
                seen, deadline = getattr(st.stop, "signals_seen", lambda: 2), time.monotonic() + 120
                while seen() < 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
            raise StopRequested()
    return sums.totals(), last_lr, time.perf_counter() - t0


@torch.inference_mode()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, run: Runtime, label_smoothing: float) -> Totals:
    """Exact metrics over the loader's samples (unpadded: each sample counted once)."""
    model.eval()
    sums = MetricSums(run.device)
    for images, targets in loader:
        images, targets = _move(images, targets, run)
        with run.autocast():
            logits = model(images)
        sums.update(criterion(logits, targets, label_smoothing), logits, targets)
    return sums.totals()


def save_checkpoint(st: TrainState, ckpts: CheckpointManager, metrics: dict[str, Any]) -> list[str]:
    state = {
        "format": "teacher-checkpoint/1",
        "model": st.model.state_dict(),
        "optimizer": st.optimizer.state_dict(),
        "scheduler": st.scheduler.state_dict(),
        "scaler": st.scaler.state_dict(),
        "epoch": st.epoch,
        "step": st.step,
        "rng": rng_state(),
        "config": st.cfg,
        "class_names": st.class_names,
        "history": st.history,
        "metrics": metrics,
    }
    return ckpts.save(state, epoch=st.epoch, step=st.step, metrics=metrics)


def write_progress(st: TrainState, *, epoch: int, phase: str, batch: int, batches: int, throughput: float,
                   latest: dict[str, Any], status: str = "running", **extra: Any) -> None:
    """Every write carries the latest integrity verdict (null until the first epoch ends), so
    a poll between epoch ends does not lose it."""
    extra.setdefault("integrity", st.integrity)
    epochs = st.cfg["optim"]["epochs"]
    done_fraction = ((epoch - 1) + batch / max(batches, 1)) / epochs if epoch else 0.0
    remaining_images = (1 - done_fraction) * epochs * st.dataset_sizes["train"]
    st.files.write_progress({
        "status": status, "phase": phase, "epoch": epoch, "epochs": epochs,
        "batch": batch, "batches": batches, "step": st.step, "total_steps": st.total_steps,
        "percent": round(100.0 * done_fraction, 2), "throughput": throughput,
        "eta_s": remaining_images / throughput if throughput > 0 else None,
        "latest": latest, **extra,
    })


def split_record(t: Totals) -> dict[str, Any]:
    return {"loss": t.loss, "top1": t.top1, "top5": t.top5, "samples": int(round(t.samples))}


def record_epoch(st: TrainState, epoch: int, train: Totals, val: Totals, lr: float, train_s: float, epoch_s: float) -> dict[str, Any]:
    train_rec = {**split_record(train), "throughput": train.samples / max(train_s, 1e-9)}
    flags: dict[str, str] = {}
    rec = {"epoch": epoch, "step": st.step, "lr": lr, "epoch_time_s": epoch_s,
           "train": sanitize(train_rec, flags, "train"), "val": sanitize(split_record(val), flags, "val")}
    rec["nonfinite"] = flags
    console = {"train": dict(rec["train"]), "val": rec["val"]}
    if "zero_train_metrics" in st.faults:
        # Test-only: reproduce the incident's broken recording. The console, the step stream
        # and TensorBoard keep the true values; only the history file gets zeros.
        rec["train"].update(loss=0.0, top1=0.0, top5=0.0)
    st.history["epochs"].append(rec)
    st.files.write_history(st.history)
    st.files.append_step({"split": "val", "epoch": epoch, "batch": len(st.val_loader), "step": st.step,
                          **val.as_record(), "lr": lr, "throughput": None, "time": time.time(), "final": True})
    for split in ("train", "val"):
        for name in ("loss", "top1", "top5"):
            value = console[split][name]
            st.writer.add_scalar(f"{split}/{name}", math.nan if value is None else value, st.step)
    st.writer.add_scalar("lr", lr, st.step)
    st.writer.add_scalar("epoch", epoch, st.step)
    st.writer.add_scalar("throughput", train_rec["throughput"], st.step)
    st.writer.flush()
    epochs = st.cfg["optim"]["epochs"]
    tr, va = console["train"], console["val"]
    log.info("Epoch %d/%d [Train]: loss=%s, top1=%s%%, top5=%s%%, samples=%d, lr=%.6f, %.1f img/s",
             epoch, epochs, _fmt(tr["loss"]), _fmt(tr["top1"], 2), _fmt(tr["top5"], 2), tr["samples"], lr, train_rec["throughput"])
    log.info("Epoch %d/%d [Val]: loss=%s, top1=%s%%, top5=%s%%, samples=%d",
             epoch, epochs, _fmt(va["loss"]), _fmt(va["top1"], 2), _fmt(va["top5"], 2), va["samples"])
    return rec


def _fmt(value: float | None, digits: int = 4) -> str:
    return "null" if value is None else f"{value:.{digits}f}"


def epoch_metrics(rec: dict[str, Any]) -> dict[str, Any]:
    return {f"{split}.{k}": rec[split][k] for split in ("train", "val") for k in ("loss", "top1", "top5")}


def check_integrity(st: TrainState) -> dict[str, Any] | None:
    """Run the metrics-integrity report on our own run directory after every epoch."""
    from common.analysis.live import run_integrity

    report = run_integrity(st.files.dir, num_classes=len(st.class_names), dataset_sizes=st.dataset_sizes)
    failed = sorted({c.id for c in report.checks if c.status == "fail"})
    warned = sorted({c.id for c in report.checks if c.status == "warn"})
    for c in report.checks:
        if c.status in ("fail", "warn"):
            log.warning("integrity: %s", c.summary_line())
    summary = {"verdict": report.verdict, "failed": failed, "warnings": warned}
    if failed and st.cfg["integrity"]["on_fail"] == "stop":
        raise IntegrityFailure(f"integrity check failed: {', '.join(failed)}", summary)
    return summary


# ---------------------------------------------------------------------------------------------
# Set-up and the main entry point
# ---------------------------------------------------------------------------------------------
def init_from_checkpoint(model: nn.Module, rel_path: str, runs_root: Path) -> None:
    """Initialise from another run's checkpoint (confined to the runs root, sha256-verified
    against that run's manifest when it has one, loaded with weights_only)."""
    path = confine(runs_root, rel_path, what="init_from")
    if not path.is_file():
        raise TrainingError(f"init_from: checkpoint '{rel_path}' not found under {runs_root.resolve()}")
    try:
        state = load_checkpoint_file(path, expected_sha256=manifest_sha256(path))
    except CheckpointError as exc:  # no fallback: the config names this one file
        raise CheckpointError(f"init_from {rel_path}: {exc}") from exc
    if "model" not in state:
        raise CheckpointError(f"init_from {rel_path}: not a teacher checkpoint (no 'model' entry)")
    load_matching(model, state["model"], source=rel_path)


def install_signal_handlers() -> tuple[Callable[[], bool], Callable[[], None]]:
    """SIGTERM/SIGINT ask for a stop after the current step. Returns (stop requested?, restore)."""
    requested: dict[str, Any] = {"signal": None, "count": 0}

    def handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        requested["count"] += 1
        if requested["signal"] is not None:
            # A second signal (a supervisor repeating itself, or one per thread of a dying
            # parent) must not turn the graceful stop under way into a failure: raising here
            # would abort at an arbitrary point and record a KeyboardInterrupt.
            log.warning("received %s again: already stopping after the current step", name)
            return
        requested["signal"] = signum
        log.warning("received %s: stopping after the current step", name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    def stop_requested() -> bool:
        return requested["signal"] is not None

    stop_requested.signals_seen = lambda: requested["count"]  # type: ignore[attr-defined]  # for hold_stop
    return stop_requested, restore


@dataclass
class RunResult:
    status: str
    epochs_completed: int
    history: dict[str, Any]
    run_dir: Path


def train(cfg: dict[str, Any], run_dir: Path, *, resume: bool = False, debug: bool = False,
          data_root: Path | None = None, runs_root: Path | None = None,
          handle_signals: bool = True) -> RunResult:
    """Train ``cfg`` into ``run_dir`` (a fresh directory, or an existing one with ``resume``)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_dir_lock(run_dir):
        return _train_locked(cfg, run_dir, resume=resume, debug=debug, data_root=data_root, runs_root=runs_root,
                             handle_signals=handle_signals)


def _train_locked(cfg: dict[str, Any], run_dir: Path, *, resume: bool, debug: bool, data_root: Path | None,
                  runs_root: Path | None, handle_signals: bool) -> RunResult:
    files = RunFiles(run_dir)
    setup_logging(run_dir, debug=debug)
    files.reserve_space()
    data_root = Path(data_root or default_data_root())
    runs_root = Path(runs_root or default_runs_root())
    faults = os.environ.get("TEACHER_FAULT", "")
    stop, restore_signals = install_signal_handlers() if handle_signals else ((lambda: False), (lambda: None))
    try:
        return _train(cfg, files, resume=resume, data_root=data_root, runs_root=runs_root, faults=faults, stop=stop)
    except StopRequested:
        log.warning("stopped by signal; resume with: teacher train --resume %s", run_dir)
        _final_progress(files, "stopped")
        raise
    except BaseException as exc:
        extra = {"integrity": exc.summary} if isinstance(exc, IntegrityFailure) and exc.summary else {}
        nospace = find_no_space(exc)
        if nospace is not None:
            files.release_reserve()  # room to write why, below
            error = no_space_message(nospace, run_dir)
            log.error("%s; the checkpoints written before are intact", error)
        else:
            error = f"{type(exc).__name__}: {exc}"
        # Best effort: on a full disk this write fails too (the exit code still tells).
        _final_progress(files, "failed", error=error, **extra)
        raise
    finally:
        files.release_reserve()
        restore_signals()
        teardown_logging()


def _final_progress(files: RunFiles, status: str, **extra: Any) -> None:
    """Record how the run ended in progress.json. Best effort: it runs while an error (often a
    full disk) is already propagating, and must not replace that error with its own."""
    path = files.dir / "progress.json"
    try:
        current = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        current = {}
    current.pop("nonfinite", None)
    try:
        files.write_progress({**current, "status": status, **extra})
    except OSError as exc:
        log.warning("could not record the final status in progress.json: %s", exc)


def write_export(files: RunFiles, ckpts: CheckpointManager) -> None:
    """A succeeded run's shippable model (``export/model.pt`` + ``model.json``, from best.pt),
    written before the run reports done, so every succeeded job has one."""
    best = ckpts.dir / "best.pt"
    if not best.is_file():
        log.warning("no best.pt (no epoch had a finite %s): nothing exported", ckpts.best_metric)
        return
    from .export import export_checkpoint

    info = export_checkpoint(best, files.dir / "export")
    log.info("exported best.pt (epoch %d) to %s", info.meta["epoch"], info.out_dir)


def _previous_integrity(files: RunFiles) -> dict[str, Any] | None:
    """The integrity verdict the interrupted attempt last recorded (kept until this attempt
    finishes an epoch of its own)."""
    try:
        value = json.loads((files.dir / "progress.json").read_text()).get("integrity")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, dict) else None


def _train(cfg: dict[str, Any], files: RunFiles, *, resume: bool, data_root: Path, runs_root: Path,
           faults: str, stop: Callable[[], bool]) -> RunResult:
    optim = cfg["optim"]
    # Before anything else: a save that a crash cut short (after the manifest, before the
    # links and pruning) is finished, so what follows sees a consistent checkpoint directory.
    ckpts = CheckpointManager(files.dir / "checkpoints", keep_last=cfg["checkpoint"]["keep_last"],
                              every_epochs=cfg["checkpoint"]["every_epochs"],
                              best_metric=cfg["checkpoint"]["best_metric"],
                              best_mode=BEST_METRICS[cfg["checkpoint"]["best_metric"]])
    ckpts.complete_interrupted_save()
    run = resolve_runtime(cfg["runtime"])
    seed_everything(optim["seed"])
    bundle = data_mod.load_data(cfg["data"], data_root, seed=optim["seed"], num_classes=cfg["model"]["num_classes"])
    num_classes = len(bundle.class_names)
    log.info("run %s: %s on %s, %d classes, %d train / %d val samples, device %s, amp %s, channels_last %s",
             files.dir, cfg["model"]["arch"], cfg["data"]["root"], num_classes, *bundle.sizes.values(),
             run.device, run.amp_dtype, run.channels_last)

    size, augment = cfg["data"]["image_size"], cfg["data"]["augment"]
    train_ds = data_mod.ImageListDataset(bundle.train.samples, data_mod.build_transforms(size, train=True, augment=augment))
    val_ds = data_mod.ImageListDataset(bundle.val.samples, data_mod.build_transforms(size, train=False, augment=False))
    train_sampler = data_mod.EpochSampler(len(train_ds), shuffle=True, seed=optim["seed"])
    val_sampler = data_mod.EpochSampler(len(val_ds), shuffle=False, seed=optim["seed"])
    loader_args = dict(num_workers=run.num_workers, pin_memory=run.pin_memory, seed=optim["seed"])
    train_loader = data_mod.build_loader(train_ds, train_sampler, batch_size=optim["batch_size"], **loader_args)
    val_loader = data_mod.build_loader(val_ds, val_sampler, batch_size=optim["batch_size"], **loader_args)

    model = build_model(cfg["model"]["arch"], num_classes)
    if cfg["model"]["pretrained"]:
        load_pretrained(model, cfg["model"]["arch"])
    if cfg["init_from"]:
        init_from_checkpoint(model, cfg["init_from"], runs_root)
    model.to(run.device, memory_format=torch.channels_last if run.channels_last else torch.contiguous_format)
    optimizer = build_optimizer(model, optim)
    steps_per_epoch = math.ceil(len(train_loader) / optim["grad_accum_steps"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, optim=optim, steps_per_epoch=steps_per_epoch))
    scaler = torch.amp.GradScaler(run.device.type, enabled=run.use_scaler)
    history = {"format": HISTORY_FORMAT, "accuracy_unit": "percent", "num_classes": num_classes,
               "class_names": bundle.class_names, "dataset_sizes": bundle.sizes, "epochs": []}

    epoch = step = 0
    integrity: dict[str, Any] | None = None
    if resume:
        integrity = _previous_integrity(files)
        loaded = ckpts.load_latest()
        if loaded is None:
            log.warning("no usable checkpoint in %s: starting from epoch 1", ckpts.dir)
        else:
            state, entry = loaded
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            history = state["history"]
            epoch, step = state["epoch"], state["step"]
            log.info("resumed from %s (epoch %d, step %d)", entry.name, epoch, step)
        dropped = files.truncate_steps(step, epoch)
        if dropped:
            log.info("dropped %d step record(s) written after that checkpoint", dropped)
    files.write_config(cfg)
    files.write_history(history)
    # purge_step: TensorBoard readers discard events from the interrupted epoch.
    writer = SummaryWriter(str(files.dir / "tb"), purge_step=step + 1 if resume else None)
    st = TrainState(cfg, run, files, model, optimizer, scheduler, scaler, writer, train_loader, val_loader,
                    train_sampler, bundle.class_names, bundle.sizes, history, epoch, step, stop, faults,
                    integrity if epoch else None)
    try:
        for epoch in range(st.epoch + 1, optim["epochs"] + 1):
            # Each epoch's randomness depends only on (seed, epoch): resume replays it exactly.
            seed_everything(optim["seed"] * 10_007 + epoch)
            train_sampler.set_epoch(epoch)
            train_loader.generator.manual_seed(optim["seed"] * 10_007 + epoch)
            t0 = time.perf_counter()
            train_totals, lr, train_s = train_one_epoch(st, epoch)
            write_progress(st, epoch=epoch, phase="val", batch=len(train_loader), batches=len(train_loader),
                           throughput=train_totals.samples / max(train_s, 1e-9), latest={})
            val_totals = evaluate(model, val_loader, run, optim["label_smoothing"])
            st.epoch = epoch
            rec = record_epoch(st, epoch, train_totals, val_totals, lr, train_s, time.perf_counter() - t0)
            save_checkpoint(st, ckpts, epoch_metrics(rec))
            st.integrity = check_integrity(st)
            write_progress(st, epoch=epoch, phase="epoch_end", batch=len(train_loader), batches=len(train_loader),
                           throughput=rec["train"]["throughput"] or 0.0, latest=epoch_metrics(rec), integrity=st.integrity)
            if f"kill_after_epoch:{epoch}" in faults.split(","):
                os.kill(os.getpid(), signal.SIGKILL)  # test-only: a crash between epochs
    finally:
        writer.close()
    write_export(files, ckpts)
    last = st.history["epochs"][-1] if st.history["epochs"] else {}
    write_progress(st, epoch=st.epoch, phase="done", batch=len(train_loader), batches=len(train_loader),
                   throughput=(last.get("train") or {}).get("throughput") or 0.0,
                   latest=epoch_metrics(last) if last else {}, status="succeeded",
                   best=ckpts.best, integrity=st.integrity)
    log.info("done: %d epoch(s); best %s", st.epoch, ckpts.best)
    return RunResult("succeeded", st.epoch, st.history, files.dir)


def evaluate_checkpoint(path: Path, *, data_root: Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """Re-evaluate a saved checkpoint on its run's validation split with a fresh model."""
    state = load_checkpoint_file(path, expected_sha256=manifest_sha256(path))
    cfg = state["config"]
    bundle = data_mod.load_data(cfg["data"], Path(data_root or default_data_root()), seed=cfg["optim"]["seed"],
                                num_classes=len(state["class_names"]))
    if bundle.class_names != state["class_names"]:
        raise TrainingError("the dataset's classes differ from the checkpoint's")
    model = build_model(cfg["model"]["arch"], len(state["class_names"]))
    model.load_state_dict(state["model"])
    run = resolve_runtime({**cfg["runtime"], "device": device, "amp": "off", "channels_last": "off", "num_workers": 0})
    model.to(run.device)
    ds = data_mod.ImageListDataset(bundle.val.samples, data_mod.build_transforms(cfg["data"]["image_size"], train=False, augment=False))
    loader = data_mod.build_loader(ds, data_mod.EpochSampler(len(ds), shuffle=False, seed=0),
                                   batch_size=cfg["optim"]["batch_size"], num_workers=0, pin_memory=False, seed=0)
    totals = evaluate(model, loader, run, cfg["optim"]["label_smoothing"])
    return {"epoch": state["epoch"], "sha256": sha256_file(path), **split_record(totals)}
