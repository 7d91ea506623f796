"""build_loader keeps its DataLoader workers between epochs (persistent_workers) and that changes
no batch: the same samples in the same order with the same augmentation as fresh workers and
as no workers at all, epoch after epoch, after a resume in the middle of an epoch
(``set_epoch(epoch, skip=k)``) and after an epoch left unfinished. The order comes from the
sampler, iterated in this process at each ``iter()``; each sample's augmentation from the seed in
its key (data.py), never from a worker's RNG, which a persistent worker does not re-seed."""
from __future__ import annotations

import pytest
import torch

from worker.training import data as data_mod
from worker.training.synthetic import SyntheticSpec, make_dataset

BATCH, SEED = 5, 11


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> data_mod.ImageListDataset:
    root = tmp_path_factory.mktemp("persistent") / "synthetic"
    make_dataset(root, SyntheticSpec(num_classes=3, train_per_class=8, val_per_class=1, image_size=40))
    bundle = data_mod.load_data(
        data_mod.DataConfig(format="imagefolder", root="synthetic", manifest=None, train_split="train",
                            val_split="val", image_size=32, augment=True, max_samples=None, filter=None),
        root.parent, seed=SEED, num_classes=None)
    # The training transforms: the random crop and flip are what a worker's RNG could change.
    return data_mod.ImageListDataset(bundle.train.samples, data_mod.build_transforms(32, train=True, augment=True))


def _loader(dataset, workers: int) -> torch.utils.data.DataLoader:
    sampler = data_mod.EpochSampler(len(dataset), shuffle=True, seed=SEED)
    return data_mod.build_loader(dataset, sampler, batch_size=BATCH, num_workers=workers, pin_memory=False, seed=SEED)


def _epoch(loader, epoch: int, skip: int = 0, stop_after: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch as the engine runs it (fit: set_epoch, then the loader's generator re-seeded)."""
    loader.sampler.set_epoch(epoch, skip=skip)
    loader.generator.manual_seed(SEED * 10_007 + epoch)
    out = []
    for images, labels in loader:
        out.append((images, labels))
        if stop_after is not None and len(out) == stop_after:
            break
    return out


def _assert_same(got, want, what: str) -> None:
    assert len(got) == len(want), what
    for n, ((gi, gl), (wi, wl)) in enumerate(zip(got, want)):
        assert torch.equal(gl, wl), f"{what}: batch {n} holds other samples"
        assert torch.equal(gi, wi), f"{what}: batch {n} is augmented differently"


@pytest.fixture(scope="module")
def reference(dataset) -> dict[int, list]:
    """No workers (everything in this process): epochs 1 to 3."""
    loader = _loader(dataset, 0)
    assert not loader.persistent_workers
    return {epoch: _epoch(loader, epoch) for epoch in (1, 2, 3)}


def test_workers_persist_and_the_epochs_equal_the_in_process_ones(dataset, reference):
    loader = _loader(dataset, 2)
    assert loader.persistent_workers
    pids = None
    for epoch in (1, 2, 3):
        _assert_same(_epoch(loader, epoch), reference[epoch], f"epoch {epoch}")
        workers = [w.pid for w in loader._iterator._workers]
        assert pids in (None, workers), "the workers were started again"
        pids = workers
    # the reference epochs differ from each other (a shuffled order and fresh augmentation per epoch)
    assert not torch.equal(reference[1][0][0], reference[2][0][0])


def test_fresh_workers_give_the_same_batches(dataset, reference):
    """What build_loader did before (persistent_workers=False): the same batches again."""
    sampler = data_mod.EpochSampler(len(dataset), shuffle=True, seed=SEED)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=2,
                                         generator=torch.Generator().manual_seed(SEED), persistent_workers=False)
    for epoch in (1, 2, 3):
        _assert_same(_epoch(loader, epoch), reference[epoch], f"fresh workers, epoch {epoch}")


def test_a_resume_mid_epoch_and_an_unfinished_epoch_change_no_batch(dataset, reference):
    """A resumed run's loader starts at epoch 2, batch 2 (skip = 2 batches of samples), then
    runs epoch 3; another loader leaves epoch 1 after one batch (its workers have prefetched
    more), then runs epoch 2 whole."""
    resumed = _loader(dataset, 2)
    _assert_same(_epoch(resumed, 2, skip=2 * BATCH), reference[2][2:], "resumed epoch 2")
    _assert_same(_epoch(resumed, 3), reference[3], "epoch 3 after the resume")
    cut = _loader(dataset, 2)
    _assert_same(_epoch(cut, 1, stop_after=1), reference[1][:1], "epoch 1's first batch")
    _assert_same(_epoch(cut, 2), reference[2], "epoch 2 after an unfinished epoch 1")
