"""Exact epoch metrics: per-sample sums and counts, kept on the device.

The incident this product exists for recorded a mean of batch means, which is biased when the
last batch is smaller, and zeros where a metric was never updated. Here every epoch value is
``Σ per-sample value / N`` over the samples actually seen:

* sums live in a float64 tensor on the training device, so updating them never synchronises
  with the GPU (no ``.item()`` per step) and never keeps an autograd graph alive (``detach``);
* :meth:`MetricSums.totals` synchronises once (one ``tolist``), optionally after summing the
  per-process tensors with an all-reduce, so several processes give the full-dataset value;
* a per-sample ``weight`` of 0 excludes padded duplicates (e.g. a distributed sampler's padding).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sized

import torch

# Order of the entries in the sums tensor.
_LOSS, _TOP1, _TOP5, _COUNT = range(4)

AllReduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Totals:
    """Synchronised sums; the epoch metrics derive from these and nothing else."""

    loss_sum: float
    correct1: float
    correct5: float
    samples: float

    @property
    def loss(self) -> float:
        return self.loss_sum / self.samples if self.samples else math.nan

    @property
    def top1(self) -> float:
        """Micro top-1 accuracy in percent."""
        return 100.0 * self.correct1 / self.samples if self.samples else math.nan

    @property
    def top5(self) -> float:
        return 100.0 * self.correct5 / self.samples if self.samples else math.nan

    def as_record(self) -> dict[str, float | int]:
        return {
            "loss_sum": self.loss_sum,
            "correct1": int(round(self.correct1)),
            "correct5": int(round(self.correct5)),
            "samples": int(round(self.samples)),
        }


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean per sample: is the target among the top ``min(k, C)`` logits?"""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return top.eq(targets.unsqueeze(1)).any(dim=1)


class MetricSums:
    def __init__(self, device: torch.device | str = "cpu"):
        # float64: float32 sums of ~1e7 per-sample losses lose the 1e-6 relative accuracy we promise.
        # (MPS has no float64; we do not support MPS.)
        self._sums = torch.zeros(4, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(
        self,
        per_sample_loss: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> None:
        loss = per_sample_loss.detach().to(torch.float64)
        logits = logits.detach()
        c1 = topk_correct(logits, targets, 1).to(torch.float64)
        c5 = topk_correct(logits, targets, 5).to(torch.float64)
        if weight is None:
            w_sum = torch.tensor(float(loss.numel()), dtype=torch.float64, device=loss.device)
            update = torch.stack([loss.sum(), c1.sum(), c5.sum(), w_sum])
        else:
            w = weight.to(torch.float64)
            update = torch.stack([(loss * w).sum(), (c1 * w).sum(), (c5 * w).sum(), w.sum()])
        self._sums += update

    def state(self, all_reduce: AllReduce | None = None) -> torch.Tensor:
        """The running sums, exactly (float64, on the CPU), for a mid-epoch checkpoint; with
        ``all_reduce``, every process's sums added up (what the one process that writes the
        checkpoint keeps)."""
        sums = self._sums.detach().clone()
        if all_reduce is not None:
            sums = all_reduce(sums)
        return sums.cpu()

    @classmethod
    def from_state(cls, sums: torch.Tensor, device: torch.device | str = "cpu") -> "MetricSums":
        out = cls(device)
        out._sums.copy_(sums.to(torch.float64))
        return out

    def totals(self, all_reduce: AllReduce | None = None) -> Totals:
        """One synchronisation: sum across processes (if given) and copy to the host."""
        sums = self._sums.clone()
        if all_reduce is not None:
            sums = all_reduce(sums)
        loss_sum, c1, c5, n = sums.tolist()
        return Totals(loss_sum=loss_sum, correct1=c1, correct5=c5, samples=n)


def torch_distributed_all_reduce(t: torch.Tensor) -> torch.Tensor:
    """All-reduce for real multi-process runs (``torch.distributed`` initialised)."""
    import torch.distributed as dist

    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shard_indices(n: int, world_size: int, rank: int, *, pad: bool) -> tuple[list[int], int]:
    """This rank's share of ``range(n)`` and how many of its entries are real (not padding).

    Evaluation uses ``pad=False``: shards differ in length by at most one and no sample is
    counted twice (torch's DistributedSampler pads with duplicates, which would bias metrics).
    Training uses ``pad=True`` so every rank takes the same number of steps; padded positions
    come last and get weight 0 in the metric sums.
    """
    if not 0 <= rank < world_size:
        raise ValueError("rank must be in [0, world_size)")
    mine = list(range(rank, n, world_size))
    real = len(mine)
    if pad:
        per_rank = -(-n // world_size)
        while len(mine) < per_rank:
            mine.append(mine[len(mine) % max(real, 1)] if real else 0)
    return mine, real


# ---------------------------------------------------------------------------------------------
# Log intervals and loss weighting: the pieces of the training loop that keep its records exact
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A log interval of an epoch: the epoch's running sums at its end, and its own mean loss
    and throughput (over the samples since the previous interval)."""

    totals: Totals
    loss: float
    throughput: float


class IntervalMeter:
    """Cuts an epoch's running sums into log intervals (and times the epoch)."""

    def __init__(self) -> None:
        self.started = self._last_t = time.perf_counter()
        self._last = Totals(0.0, 0.0, 0.0, 0.0)

    def lap(self, totals: Totals) -> Interval:
        now = time.perf_counter()
        n = totals.samples - self._last.samples
        loss = (totals.loss_sum - self._last.loss_sum) / n if n else math.nan
        interval = Interval(totals, loss, throughput=n / max(now - self._last_t, 1e-9))
        self._last, self._last_t = totals, now
        return interval

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def state(self) -> dict[str, object]:
        """Where the current interval started (its sums) and the epoch's time so far."""
        t = self._last
        return {"last": [t.loss_sum, t.correct1, t.correct5, t.samples], "elapsed": self.elapsed()}

    @classmethod
    def from_state(cls, state: dict[str, object]) -> "IntervalMeter":
        """Continue an interrupted epoch: the interval's loss counts from the same samples as
        it would have; its throughput (timing, not a metric) restarts now."""
        meter = cls()
        meter._last = Totals(*(float(x) for x in state["last"]))  # type: ignore[union-attr]
        meter.started -= float(state["elapsed"])  # type: ignore[arg-type]
        return meter


def batch_sizes(num_samples: int, batch_size: int) -> list[int]:
    full, rest = divmod(num_samples, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


def accumulation_windows(sizes: list[int], accum: int) -> list[int]:
    """Samples per optimizer step: each window of ``accum`` micro-batches, the last one shorter."""
    return [sum(sizes[i:i + accum]) for i in range(0, len(sizes), accum)]


@dataclass(frozen=True)
class AccumulationPlan:
    """How an epoch's micro-batches make optimizer steps, with per-sample exact gradients: each
    window's loss is Σ loss / (samples in the window), so a smaller last batch or last window is
    weighted exactly, not as a full one. Positions from ``num_real`` on are a sharded sampler's
    padding (several processes, see :func:`shard_indices`): they weigh 0, in the loss and in the
    metric sums. With one process there is none, and :meth:`weight` is always None.

    With ``world_size`` processes, ``windows`` counts the samples of the whole step across all
    of them (rank r's micro-batch i holds every world_size-th of the global batch i, so the
    global micro-batch i is the one a single process would see), and each process's loss is
    scaled by ``world_size``: DistributedDataParallel averages gradients over the processes, and
    ``world_size * Σ_rank / N_step`` averaged is ``Σ_all / N_step`` — the same gradient as on one
    process, also for a smaller, unevenly sharded last batch."""

    batch_size: int  # per process
    accum: int
    num_real: int
    positions: tuple[int, ...]  # per batch, as the loader yields them (padding included)
    windows: tuple[int, ...]  # real samples per optimizer step, over all processes (at least 1)
    world_size: int = 1

    @classmethod
    def for_sampler(cls, sampler: Sized, batch_size: int, accum: int) -> "AccumulationPlan":
        length = getattr(sampler, "epoch_length", len(sampler))  # the whole epoch, also when resumed mid-way
        num_real = getattr(sampler, "num_real", length)
        world = getattr(sampler, "world_size", 1)
        total = getattr(sampler, "n", num_real) if world > 1 else num_real  # samples over all processes
        positions = batch_sizes(length, batch_size)
        step = batch_size * world  # the global micro-batch
        real = [max(0, min(step, total - i * step)) for i in range(len(positions))]
        windows = [max(1, w) for w in accumulation_windows(real, accum)]
        return cls(batch_size, accum, num_real, tuple(positions), tuple(windows), world)

    def __len__(self) -> int:
        return len(self.positions)

    def ends_window(self, batch: int) -> bool:
        """Does micro-batch ``batch`` (from 0) end an optimizer step?"""
        return (batch + 1) % self.accum == 0 or self.is_last(batch)

    def is_last(self, batch: int) -> bool:
        return batch + 1 == len(self.positions)

    def weight(self, batch: int, device: torch.device | str) -> torch.Tensor | None:
        """1 for each real sample of the batch, 0 for padding; None when all are real."""
        start = batch * self.batch_size
        if start + self.positions[batch] <= self.num_real:
            return None
        return (torch.arange(start, start + self.positions[batch], device=device) < self.num_real).float()

    def loss(self, per_sample: torch.Tensor, batch: int, weight: torch.Tensor | None) -> torch.Tensor:
        """The micro-batch's share of its window's mean loss (what ``backward`` is called on)."""
        terms = per_sample if weight is None else per_sample * weight
        return terms.sum() * self.world_size / self.windows[batch // self.accum]
