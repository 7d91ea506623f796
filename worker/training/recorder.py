"""What a run records, in one place: the training loop reports events, the recorder writes them.

Each event goes to the outputs that want it:

=============== ============ ===================== ============ ============ ==============
event           steps.jsonl  TensorBoard (tb/)     progress     history      console / log
=============== ============ ===================== ============ ============ ==============
on_interval     train line   step/train_loss, lr   phase train               debug line
on_validate                                        phase val
on_epoch        val line     split/metric, lr, ...              the epoch    two info lines
on_checked                                         phase epoch_end
on_end                                             phase done
=============== ============ ===================== ============ ============ ==============

The records are common.rundir's (:class:`StepRecord`, :class:`Progress`, :class:`History`),
written through :class:`~worker.training.artifacts.RunFiles`, so the loop knows nothing of file
names or formats. Every progress write carries the latest integrity verdict (null until the
first epoch ends), so a poll between epoch ends does not lose it.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Protocol

from common import faults
from common.rundir import (SPLIT_METRICS, SPLITS, Best, EpochRecord, History, Integrity, Phase, Progress,
                           ResumePoint, RunFileCorrupt, RunPaths, RunStatus, SplitMetrics, StepRecord, metric_name, sanitize,
                           tb_tag)

from .metrics import Interval, Totals

log = logging.getLogger("teacher")


class RunWriter(Protocol):
    """What the recorder needs of :class:`~worker.training.artifacts.RunFiles` (tests pass a fake)."""

    def append_step(self, record: Any) -> None: ...
    def write_history(self, history: Any) -> None: ...
    def write_progress(self, progress: Any) -> None: ...


class ScalarWriter(Protocol):
    """What the recorder needs of TensorBoard's ``SummaryWriter``."""

    def add_scalar(self, tag: str, value: float, step: int) -> Any: ...
    def flush(self) -> Any: ...


class Recorder:
    def __init__(self, files: RunWriter, tb: ScalarWriter, *, history: History, epochs: int, steps_per_epoch: int,
                 batches: int, val_batches: int, integrity: Integrity | None = None,
                 resumed_from: ResumePoint | None = None):
        self.files, self.tb, self.history = files, tb, history
        self.epochs, self.total_steps = epochs, epochs * steps_per_epoch
        self.batches, self.val_batches = batches, val_batches  # per epoch, of the train and val loaders
        self.integrity = integrity  # the latest live verdict (kept from the attempt resumed)
        self.resumed_from = resumed_from  # in every progress write of a resumed attempt

    # ---- events -------------------------------------------------------------------------------
    def on_interval(self, *, epoch: int, batch: int, step: int, interval: Interval, lr: float) -> None:
        """A log interval of optimizer steps ended at ``batch`` (the epoch's running sums so far)."""
        self._step_line("train", epoch, batch, step, interval.totals, lr, interval.throughput, final=batch == self.batches)
        self.tb.add_scalar("step/train_loss", interval.loss, step)
        self.tb.add_scalar("step/lr", lr, step)
        self._progress(Phase.TRAIN, epoch, batch, step, interval.throughput, {"train.loss": interval.loss})
        log.debug("epoch %d batch %d/%d loss %.4f", epoch, batch, self.batches, interval.loss)

    def on_validate(self, *, epoch: int, step: int, throughput: float) -> None:
        """Training of the epoch is done; validation starts."""
        self._progress(Phase.VAL, epoch, self.batches, step, throughput, {})

    def on_epoch(self, *, epoch: int, step: int, lr: float, train: Totals, val: Totals, train_s: float,
                 epoch_s: float) -> EpochRecord:
        """The epoch's exact metrics: into history.json, the step stream, TensorBoard and the
        console. Returns the record as history holds it (its metrics go to the checkpoint)."""
        throughput = train.samples / max(train_s, 1e-9)
        flags: dict[str, str] = {}
        true = {"train": split_metrics(train, flags, "train", throughput), "val": split_metrics(val, flags, "val")}
        rec = EpochRecord(epoch, step, lr, epoch_s, true["train"], true["val"], flags)
        if faults.current().on("zero_train_metrics"):
            # Test-only: reproduce the incident's broken recording. The console, the step stream
            # and TensorBoard keep the true values; only the history file (and what reads it) gets zeros.
            rec.train = dataclasses.replace(rec.train, loss=0.0, top1=0.0, top5=0.0)
        self.history.epochs.append(rec)
        self.files.write_history(self.history.to_json())
        self._step_line("val", epoch, self.val_batches, step, val, lr, None, final=True)
        for split in SPLITS:
            for key in SPLIT_METRICS:
                value = true[split].get(key)
                self.tb.add_scalar(tb_tag(metric_name(split, key)), math.nan if value is None else value, step)
        self.tb.add_scalar("lr", lr, step)
        self.tb.add_scalar("epoch", epoch, step)
        self.tb.add_scalar("throughput", throughput, step)
        self.tb.flush()
        tr, va = true["train"], true["val"]
        log.info("Epoch %d/%d [Train]: loss=%s, top1=%s%%, top5=%s%%, samples=%d, lr=%.6f, %.1f img/s", epoch, self.epochs,
                 _fmt(tr.loss), _fmt(tr.top1, 2), _fmt(tr.top5, 2), tr.samples, lr, throughput)
        log.info("Epoch %d/%d [Val]: loss=%s, top1=%s%%, top5=%s%%, samples=%d", epoch, self.epochs,
                 _fmt(va.loss), _fmt(va.top1, 2), _fmt(va.top5, 2), va.samples)
        return rec

    def on_checked(self, *, rec: EpochRecord, integrity: Integrity | None) -> None:
        """The epoch is checkpointed and its integrity checked."""
        self.integrity = integrity
        self._progress(Phase.EPOCH_END, rec.epoch, self.batches, rec.step, rec.train.throughput or 0.0, rec.metrics())

    def on_end(self, *, epoch: int, step: int, best: dict[str, Any] | None) -> None:
        """The run succeeded (``best``: the checkpoint manager's best epoch, as JSON)."""
        last = self.history.last
        self._progress(Phase.DONE, epoch, self.batches, step, (last.train.throughput or 0.0) if last else 0.0,
                       last.metrics() if last else {}, status=RunStatus.SUCCEEDED,
                       best=Best.from_json(best) if best is not None else None)

    # ---- the records --------------------------------------------------------------------------
    def _step_line(self, split: str, epoch: int, batch: int, step: int, totals: Totals, lr: float,
                   throughput: float | None, *, final: bool) -> None:
        self.files.append_step(StepRecord(split, epoch, batch, step, **totals.as_record(), lr=lr, throughput=throughput,
                                          time=time.time(), final=final).to_json())

    def _progress(self, phase: Phase, epoch: int, batch: int, step: int, throughput: float, latest: dict[str, Any],
                  *, status: RunStatus = RunStatus.RUNNING, best: Best | None = None) -> None:
        done_fraction = ((epoch - 1) + batch / max(self.batches, 1)) / self.epochs if epoch else 0.0
        remaining_images = (1 - done_fraction) * self.epochs * self.history.dataset_sizes["train"]
        self.files.write_progress(Progress(
            status=status, phase=phase, epoch=epoch, epochs=self.epochs, batch=batch, batches=self.batches, step=step,
            total_steps=self.total_steps, percent=round(100.0 * done_fraction, 2), throughput=throughput,
            eta_s=remaining_images / throughput if throughput > 0 else None, latest=latest,
            integrity=self.integrity, best=best, resumed_from=self.resumed_from).to_json())


def split_metrics(t: Totals, flags: dict[str, str], split: str, throughput: float | None = None) -> SplitMetrics:
    """One split's epoch values; a non-finite one is None and named in ``flags`` (``val.loss``)."""
    values = {"loss": t.loss, "top1": t.top1, "top5": t.top5}
    if throughput is not None:
        values["throughput"] = throughput
    clean = sanitize(values, flags, split)
    return SplitMetrics(clean["loss"], clean["top1"], clean["top5"], int(round(t.samples)), clean.get("throughput"))


def _fmt(value: float | None, digits: int = 4) -> str:
    return "null" if value is None else f"{value:.{digits}f}"


# ---- how a run ended, and what the previous attempt left ---------------------------------------
def previous_integrity(run_dir: Any) -> Integrity | None:
    """The integrity verdict the interrupted attempt last recorded (kept until this attempt
    finishes an epoch of its own)."""
    try:
        progress = Progress.read(RunPaths(run_dir).progress)
    except (OSError, RunFileCorrupt):
        return None
    return progress.integrity if progress is not None else None


def record_outcome(files: RunWriter, run_dir: Any, status: RunStatus, *, error: str | None = None,
                   integrity: Integrity | None = None) -> None:
    """Record how the run ended in progress.json, over what the last write said. Best effort:
    it runs while an error (often a full disk) is already propagating, and must not replace
    that error with its own."""
    try:
        current = Progress.read(RunPaths(run_dir).progress)
    except (OSError, RunFileCorrupt):
        current = None
    progress = current or Progress.from_json({"status": status.value})  # only the keys set below
    changes: dict[str, Any] = {"status": status}
    if error is not None:
        changes["error"] = error
    if integrity is not None:
        changes["integrity"] = integrity
    record = dataclasses.replace(progress, **changes).to_json()
    record.pop("nonfinite", None)  # flags of the last write's values, which are null now
    try:
        files.write_progress(record)
    except OSError as exc:
        log.warning("could not record the final status in progress.json: %s", exc)
