"""How a run of several processes reports its end (worker/training/launch.py) and which samples
each process sees (data.EpochSampler sharding): pure functions, no processes."""
from __future__ import annotations

import pytest

from common import faults
from common.exitcodes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_NO_SPACE, EXIT_STOPPED
from worker.training.data import EpochSampler
from worker.training.metrics import batch_sizes
from worker.training.launch import exit_code, torchrun_args


@pytest.mark.parametrize("failures, code", [
    ({0: EXIT_FAILED}, EXIT_FAILED),
    ({1: EXIT_FAILED}, EXIT_FAILED),
    ({0: EXIT_STOPPED, 1: EXIT_STOPPED}, EXIT_STOPPED),
    # a rank killed by a signal is the root cause; its peer's collective failed afterwards
    ({0: EXIT_FAILED, 1: -9}, -9),
    # a full disk wins (a retry cannot help), then bad input, then what rank 0 said
    ({0: EXIT_FAILED, 1: EXIT_NO_SPACE}, EXIT_NO_SPACE),
    ({0: EXIT_FAILED, 2: EXIT_BAD_INPUT}, EXIT_BAD_INPUT),
    ({0: EXIT_STOPPED, 1: EXIT_FAILED}, EXIT_STOPPED),
    ({2: 7, 1: 5}, 5),
    # rank 0 failed at set-up and torchrun SIGTERMed rank 1 before it had a handler: rank 0's code
    ({0: EXIT_FAILED, 1: -15}, EXIT_FAILED),
    ({0: -15, 1: -15}, -15),
    ({}, EXIT_FAILED),
])
def test_exit_code_of_a_run_of_several_processes(failures, code):
    assert exit_code(failures) == code


def test_torchrun_runs_one_host_without_restarts():
    args = torchrun_args(4, ["--resume", "/runs/x"])
    assert args[:8] == ["--standalone", "--nnodes", "1", "--nproc-per-node", "4", "--max-restarts", "0",
                        "--monitor-interval"]
    assert args[-4:] == ["common.apps.cli", "train", "--resume", "/runs/x"]


@pytest.mark.parametrize("n, batch, world", [(53, 8, 2), (31, 16, 2), (100, 12, 4), (7, 4, 2), (65, 16, 2)])
def test_the_ranks_micro_batch_i_together_is_the_single_process_batch_i(n, batch, world):
    """So a config means the same on 1 or N processes: the same samples per optimizer step, in
    the same epoch order, with the same augmentation seeds; padding only fills the last one."""
    single = EpochSampler(n, shuffle=True, seed=5)
    single.set_epoch(3)
    order = list(single)
    starts = [sum(batch_sizes(n, batch)[:i]) for i in range(len(batch_sizes(n, batch)))]
    global_batches = [set(order[s:s + size]) for s, size in zip(starts, batch_sizes(n, batch))]
    per_rank = batch // world
    shards = []
    for rank in range(world):
        sampler = EpochSampler(n, shuffle=True, seed=5, world_size=world, rank=rank, pad=True)
        sampler.set_epoch(3)
        keys = list(sampler)
        real = keys[:sampler.num_real]
        shards.append([set(real[i * per_rank:(i + 1) * per_rank]) for i in range(len(global_batches))])
        assert len(keys) == -(-n // world)  # every rank takes the same number of steps
    for i, expected in enumerate(global_batches):
        assert set().union(*(shard[i] for shard in shards)) == expected


def test_faults_of_another_rank_do_not_fire(monkeypatch):
    monkeypatch.setenv("TEACHER_FAULT", "kill_at_step:3,only_rank:1")
    monkeypatch.setenv("RANK", "0")
    assert not faults.Faults.from_env()
    monkeypatch.setenv("RANK", "1")
    assert faults.Faults.from_env().fires("kill_at_step", 3)


def test_once_fires_a_fault_once_per_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = faults.Faults.parse("raise_at_step:2,once")
    assert f.fires("raise_at_step", 2)
    assert not f.fires("raise_at_step", 2)
    assert not f.fires("raise_at_step", 3)
