"""Exactness of the recorded metrics, against an independent full-dataset computation and
against torchmetrics as an oracle, over random data, batch sizes, ranks and accumulation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from worker.training.metrics import MetricSums, accumulation_windows, batch_sizes, shard_indices, topk_correct


def reference(losses: np.ndarray, logits: np.ndarray, targets: np.ndarray) -> tuple[float, float, float]:
    """Full-dataset values computed independently with numpy (float64)."""
    order = np.argsort(-logits, axis=1, kind="stable")
    k5 = min(5, logits.shape[1])
    top1 = (order[:, 0] == targets).mean() * 100
    top5 = (order[:, :k5] == targets[:, None]).any(axis=1).mean() * 100
    return float(losses.astype(np.float64).mean()), float(top1), float(top5)


def make_data(seed: int, n: int, classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    # Continuous random logits: ties (where top-k is ambiguous) have probability zero.
    logits = torch.tensor(rng.normal(size=(n, classes)) * rng.uniform(0.1, 5), dtype=torch.float32)
    targets = torch.tensor(rng.integers(0, classes, size=n))
    losses = F.cross_entropy(logits, targets, reduction="none")
    return losses, logits, targets


def run_ranks(losses, logits, targets, *, world: int, batch: int, pad: bool) -> MetricSums:
    """Simulate ``world`` processes: each takes its shard in batches; the all-reduce sums the
    ranks' tensors (what torch.distributed.all_reduce(SUM) does across processes)."""
    ranks = []
    for rank in range(world):
        idx, real = shard_indices(len(targets), world, rank, pad=pad)
        sums = MetricSums()
        for start in range(0, len(idx), batch):
            sel = torch.tensor(idx[start:start + batch])
            pos = torch.arange(start, start + len(sel))
            weight = (pos < real).double() if pad else None
            sums.update(losses[sel], logits[sel], targets[sel], weight)
        ranks.append(sums)
    return ranks


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 300),
    classes=st.integers(2, 40),
    batch=st.integers(1, 64),
    world=st.integers(1, 3),
    pad=st.booleans(),
)
def test_epoch_metrics_equal_full_dataset_computation(seed, n, classes, batch, world, pad):
    losses, logits, targets = make_data(seed, n, classes)
    ranks = run_ranks(losses, logits, targets, world=world, batch=batch, pad=pad)
    totals = ranks[0].totals(all_reduce=lambda t: torch.stack([r._sums for r in ranks]).sum(0))
    ref_loss, ref_top1, ref_top5 = reference(losses.numpy(), logits.numpy(), targets.numpy())

    assert totals.samples == n  # padded duplicates are not counted
    assert totals.loss == pytest.approx(ref_loss, rel=1e-6, abs=1e-12)
    assert totals.top1 == pytest.approx(ref_top1, rel=1e-6)
    assert totals.top5 == pytest.approx(ref_top5, rel=1e-6)

    # torchmetrics as an independent oracle: a weighted mean of batch means (weights = batch
    # sizes) and micro top-k accuracy.
    mean = MeanMetric()
    for start in range(0, n, batch):
        chunk = losses[start:start + batch]
        mean.update(chunk.mean(), weight=len(chunk))
    assert totals.loss == pytest.approx(mean.compute().item(), rel=1e-5)
    for k, value in ((1, totals.top1), (min(5, classes), totals.top5)):
        acc = MulticlassAccuracy(num_classes=classes, top_k=k, average="micro")
        assert value == pytest.approx(100 * acc(logits, targets).item(), rel=1e-5)


def test_mean_of_batch_means_is_biased_with_a_smaller_last_batch():
    # 5 samples, batches of 4 and 1: the lone sample would count as much as the other four.
    losses = torch.tensor([1.0, 1.0, 1.0, 1.0, 9.0])
    logits = torch.zeros(5, 3)
    targets = torch.zeros(5, dtype=torch.long)
    sums = MetricSums()
    for chunk in (slice(0, 4), slice(4, 5)):
        sums.update(losses[chunk], logits[chunk], targets[chunk])
    mean_of_means = (losses[:4].mean() + losses[4:].mean()).item() / 2
    assert sums.totals().loss == pytest.approx(13.0 / 5)  # 2.6, the true mean
    assert mean_of_means == pytest.approx(5.0)  # what the incident's "fix" would record
    assert not math.isclose(sums.totals().loss, mean_of_means)


def test_accumulating_does_not_keep_the_graph_alive():
    w = torch.randn(3, 4, requires_grad=True)
    logits = torch.randn(8, 3) @ w[:, :3].T
    losses = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long), reduction="none")
    sums = MetricSums()
    sums.update(losses, logits, torch.zeros(8, dtype=torch.long))
    assert not sums._sums.requires_grad and sums._sums.grad_fn is None


def test_topk_with_fewer_classes_than_k_counts_all_predictions():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    assert topk_correct(logits, torch.tensor([0, 0]), 5).tolist() == [True, True]


def test_eval_shards_never_duplicate_and_cover_everything():
    for n in range(0, 20):
        for world in (1, 2, 3):
            shards = [shard_indices(n, world, r, pad=False)[0] for r in range(world)]
            flat = sorted(i for s in shards for i in s)
            assert flat == list(range(n))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 50), batch=st.integers(1, 16), accum=st.integers(1, 5))
def test_gradient_accumulation_matches_full_window_gradient(seed, n, batch, accum):
    """Σ over micro-batches of grad(Σ loss / window samples) equals, per optimizer step, the
    gradient of the mean loss over exactly the samples in that window — including a smaller
    last batch and a smaller last window."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    sizes = batch_sizes(n, batch)
    windows = accumulation_windows(sizes, accum)
    w = torch.randn(3, 6, generator=g, requires_grad=True)
    start = 0
    for wi, window_samples in enumerate(windows):
        w.grad = None
        first = start
        for size in sizes[wi * accum:(wi + 1) * accum]:
            xb, yb = x[start:start + size], y[start:start + size]
            (F.cross_entropy(xb @ w.T, yb, reduction="none").sum() / window_samples).backward()
            start += size
        got = w.grad.clone()
        w.grad = None
        F.cross_entropy(x[first:start] @ w.T, y[first:start]).backward()
        torch.testing.assert_close(got, w.grad, rtol=1e-5, atol=1e-6)
    assert start == n
