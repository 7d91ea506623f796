"""The loop's loss weighting: per-sample exact windows, and padding (a sharded sampler's
duplicates) weighing nothing."""
from __future__ import annotations

import math

import torch

from worker.training.data import EpochSampler
from worker.training.metrics import AccumulationPlan, IntervalMeter, Totals


def test_one_process_has_no_weights_and_exact_windows():
    plan = AccumulationPlan.for_sampler(EpochSampler(10, shuffle=False, seed=0), batch_size=4, accum=2)
    assert plan.positions == (4, 4, 2) and plan.windows == (8, 2) and len(plan) == 3
    assert [plan.ends_window(i) for i in range(3)] == [False, True, True] and plan.is_last(2)
    assert all(plan.weight(i, "cpu") is None for i in range(3))
    per_sample = torch.arange(4.0)
    assert plan.loss(per_sample, 1, None).item() == 6.0 / 8


def test_padding_weighs_zero_in_the_loss_and_the_window():
    sampler = EpochSampler(7, shuffle=False, seed=0, world_size=3, rank=2, pad=True)  # 2 real, 1 padded
    assert (len(sampler), sampler.num_real) == (3, 2)
    plan = AccumulationPlan.for_sampler(sampler, batch_size=2, accum=1)
    # windows count the step's samples over all 3 processes: global micro-batches of 6, then 1
    assert plan.positions == (2, 1) and plan.windows == (6, 1) and plan.world_size == 3
    assert plan.weight(0, "cpu") is None and plan.weight(1, "cpu").tolist() == [0.0]
    assert plan.loss(torch.tensor([5.0]), 1, plan.weight(1, "cpu")).item() == 0.0
    # each process's share is scaled by the world size: DDP averages the 3 gradients
    assert plan.loss(torch.tensor([1.0, 2.0]), 0, None).item() == 3.0 * 3 / 6


def test_intervals_are_differences_of_the_running_sums():
    meter = IntervalMeter()
    first = meter.lap(Totals(10.0, 1.0, 2.0, 5.0))
    second = meter.lap(Totals(16.0, 2.0, 3.0, 8.0))
    assert first.loss == 2.0 and second.loss == 2.0 and second.totals.samples == 8.0
    assert math.isnan(meter.lap(Totals(16.0, 2.0, 3.0, 8.0)).loss) and meter.elapsed() >= 0
