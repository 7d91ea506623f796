"""The training loop on 2 real gloo processes computes what it computes on one: the same
gradient per optimizer step (loss scaling with padding, an uneven last batch and gradient
accumulation), the same metric sums, the same evaluation. A BatchNorm-free model, so that the
only difference left is the floating-point order of the gradient all-reduce: with BatchNorm,
each process normalises its own half of the batch unless runtime.sync_bn (GPU only) is on —
docs/distributed.md says what that changes.

Real processes (torch.multiprocessing, gloo over localhost); the loop functions are the
engine's own (train_one_epoch, evaluate); only the model and the dataset are small stand-ins.
"""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

from common.config import load_train_config
from tests.support.procs import free_port
from worker.training import data as data_mod
from worker.training import distributed
from worker.training.engine import (EpochPosition, StepCheckpoints, StopFlag, TrainState, build_optimizer, evaluate,
                                    lr_factor, resolve_runtime, seed_everything, train_one_epoch)

N_TRAIN, N_VAL, CLASSES, BATCH, ACCUM, EPOCHS = 53, 19, 4, 8, 2, 2  # 53 = 6 full global batches + 5


class Blobs(Dataset):
    """Separable random points: (index, seed) keys as EpochSampler yields them."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, CLASSES, (n,), generator=g)
        self.x = torch.randn(n, 6, generator=g) + 2.0 * nn.functional.one_hot(self.y, 6).float()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, _seed = key
        return self.x[i], int(self.y[i])


def _config():
    return load_train_config({
        "model": {"arch": "resnet18"}, "data": {"format": "imagefolder", "root": "unused"},
        "optim": {"epochs": EPOCHS, "batch_size": BATCH, "optimizer": "sgd", "lr": 0.2, "momentum": 0.9,
                  "grad_accum_steps": ACCUM, "seed": 3},
        "runtime": {"device": "cpu", "num_workers": 0, "log_interval": 1},
        "checkpoint": {"every_minutes": 0},
    })


def _run(dist: distributed.Dist) -> dict:
    cfg = _config()
    seed_everything(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, CLASSES))  # no BatchNorm
    ddp = nn.parallel.DistributedDataParallel(model) if dist.active else None
    loaders = [data_mod.build_loader(ds, data_mod.EpochSampler(len(ds), shuffle=train, seed=3, world_size=dist.world_size,
                                                               rank=dist.rank, pad=train),
                                     batch_size=BATCH // dist.world_size, num_workers=0, pin_memory=False, seed=3)
               for ds, train in ((Blobs(N_TRAIN, 1), True), (Blobs(N_VAL, 2), False))]
    optimizer = build_optimizer(model, cfg.optim)
    steps_per_epoch = math.ceil(len(loaders[0]) / ACCUM)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, optim=cfg.optim,
                                                                               steps_per_epoch=steps_per_epoch))
    st = TrainState(cfg=cfg, run=resolve_runtime(cfg.runtime, dist), data=None, train_loader=loaders[0],  # type: ignore[arg-type]
                    val_loader=loaders[1], model=model, optimizer=optimizer, scheduler=scheduler,
                    scaler=torch.amp.GradScaler("cpu", enabled=False), dist=dist, ddp=ddp)
    steps = StepCheckpoints(None, cfg.checkpoint, grace_s=30)  # type: ignore[arg-type]  (never due: every_minutes 0)
    out: dict = {"train": [], "val": []}
    for epoch in range(1, EPOCHS + 1):
        st.train_loader.sampler.set_epoch(epoch)
        trained = train_one_epoch(st, epoch, None, StopFlag(), steps)
        out["train"].append(trained.totals)
        out["val"].append(evaluate(model, st.val_loader, st.run, 0.0, dist=dist))
    out["step"] = st.step
    out["weights"] = [p.detach().clone() for p in model.parameters()]
    return out


def _rank_main(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        out = _run(distributed.Dist(rank, 2, rank, "gloo"))
        if rank == 0:
            queue.put(out)
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def runs() -> tuple[dict, dict]:
    single = _run(distributed.SINGLE)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, port, queue)) for port in [free_port()] for r in range(2)]
    for p in procs:
        p.start()
    two = queue.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return single, two


def test_same_number_of_optimizer_steps(runs):
    single, two = runs
    # 53 samples, global batch 8: 7 micro-batches (the last of 5), 4 optimizer steps per epoch
    assert single["step"] == two["step"] == EPOCHS * math.ceil(math.ceil(N_TRAIN / BATCH) / ACCUM)


def test_metric_sums_count_every_sample_once(runs):
    single, two = runs
    for a, b in zip(single["train"] + single["val"], two["train"] + two["val"]):
        assert b.samples == a.samples  # padding weighs 0, evaluation shards are not padded
    assert [t.samples for t in two["train"]] == [N_TRAIN] * EPOCHS
    assert [t.samples for t in two["val"]] == [N_VAL] * EPOCHS


def test_same_gradients_so_same_weights_up_to_reduction_order(runs):
    single, two = runs
    # float32 weights after 8 SGD steps with momentum: the only difference is the order in which
    # the two halves of each gradient are added (all-reduce), ~1 ulp per step.
    for a, b in zip(single["weights"], two["weights"]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_same_metrics(runs):
    single, two = runs
    for a, b in zip(single["train"] + single["val"], two["train"] + two["val"]):
        assert b.correct1 == a.correct1 and b.correct5 == a.correct5
        assert math.isclose(b.loss, a.loss, rel_tol=1e-5)


def test_a_position_checkpointed_on_two_ranks_holds_the_sum_of_both(runs):
    """What a step checkpoint keeps of the running sums: rank 0 the total, the others zero."""
    sums = torch.tensor([3.0, 1.0, 2.0, 4.0], dtype=torch.float64)
    state = {"epoch": 1, "batch": 2, "sums": sums, "meter": {"last": [0, 0, 0, 0], "elapsed": 1.0}, "lr": 0.1,
             "grads": None}
    model = nn.Linear(2, 2)
    main = EpochPosition.from_state(state, rng=None, model=model, device=torch.device("cpu"),
                                    dist=distributed.Dist(0, 2, 0, "gloo"))
    other = EpochPosition.from_state(state, rng=None, model=model, device=torch.device("cpu"),
                                     dist=distributed.Dist(1, 2, 1, "gloo"))
    assert main.sums.state().tolist() == sums.tolist()
    assert other.sums.state().tolist() == [0.0] * 4
