"""Datasets: discovery, validation against one class map, and loaders.

Everything a config names lives under the data root (``TEACHER_DATA_ROOT``); paths are
confined to it, symlinks included. Problems with the data (a class-map mismatch, an empty class,
a label missing from train, a file outside the root) are :class:`DataError` raised before
training starts, never a crash in epoch 3.
"""
from __future__ import annotations

import csv
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2 as T

from common.config import ConfigError, DataConfig, FilterConfig, PathEscapeError, confine

from .metrics import shard_indices

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# ImageNet statistics: torchvision's pretrained weights expect them, and they are harmless otherwise.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DataError(ConfigError):
    """The dataset named by a config cannot be used as it is."""


@dataclass(frozen=True)
class SplitData:
    name: str
    samples: list[tuple[Path, int]]


@dataclass(frozen=True)
class DataBundle:
    root: Path
    class_names: list[str]
    train: SplitData
    val: SplitData

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train.samples), "val": len(self.val.samples)}


def _confined_file(root: Path, rel: str, what: str) -> Path:
    try:
        return confine(root, rel, what=what)
    except PathEscapeError as exc:
        raise DataError(exc.errors) from None


def scan_imagefolder(root: Path, split: str) -> dict[str, list[Path]]:
    split_dir = _confined_file(root, split, "data.split")
    if not split_dir.is_dir():
        raise DataError({"data.root": [f"split folder '{split}' not found under {root}"]})
    classes: dict[str, list[Path]] = {}
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        files = []
        for f in sorted(os.scandir(entry.path), key=lambda e: e.name):
            if f.name.lower().endswith(IMAGE_EXTENSIONS) and not f.name.startswith("."):
                files.append(_confined_file(root, f"{split}/{entry.name}/{f.name}", "data.file"))
        classes[entry.name] = files
    return classes


def load_imagefolder(root: Path, train_split: str, val_split: str) -> tuple[list[str], dict[str, list[tuple[Path, str]]]]:
    train = scan_imagefolder(root, train_split)
    val = scan_imagefolder(root, val_split)
    if not train:
        raise DataError({"data.root": [f"no class folders in '{train_split}'"]})
    empty = [c for c, files in {**val, **train}.items() if not files]
    if empty:
        raise DataError({"data.root": [f"empty class folder(s): {', '.join(sorted(empty))}"]})
    if set(train) != set(val):
        only_train = sorted(set(train) - set(val))
        only_val = sorted(set(val) - set(train))
        raise DataError({"data.root": [
            f"class map mismatch between '{train_split}' and '{val_split}': "
            f"only in train {only_train or '[]'}, only in val {only_val or '[]'}"
        ]})
    rows = {
        "train": [(p, c) for c, files in train.items() for p in files],
        "val": [(p, c) for c, files in val.items() for p in files],
    }
    return sorted(train), rows


def load_csv_manifest(
    root: Path, manifest: str, train_split: str, val_split: str, row_filter: FilterConfig | None
) -> tuple[list[str], dict[str, list[tuple[Path, str]]]]:
    path = _confined_file(root, manifest, "data.manifest")
    if not path.is_file():
        raise DataError({"data.manifest": [f"manifest '{manifest}' not found under {root}"]})
    rows: dict[str, list[tuple[Path, str]]] = {"train": [], "val": []}
    split_key = {train_split: "train", val_split: "val"}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "label", "split"} - set(reader.fieldnames or [])
        if missing:
            raise DataError({"data.manifest": [f"manifest lacks column(s) {sorted(missing)}"]})
        if row_filter and row_filter.column not in (reader.fieldnames or []):
            raise DataError({"data.filter.column": [f"manifest has no column '{row_filter.column}'"]})
        allowed = set(row_filter.values) if row_filter else None
        for line_no, row in enumerate(reader, start=2):
            split = split_key.get(row["split"])
            if split is None:
                continue
            if allowed is not None and row[row_filter.column] not in allowed:
                continue
            if not row["label"]:
                raise DataError({"data.manifest": [f"line {line_no}: empty label"]})
            rows[split].append((_confined_file(root, row["path"], f"data.manifest line {line_no}"), row["label"]))
    if not rows["train"]:
        raise DataError({"data.manifest": [f"no '{train_split}' rows" + (" after the filter" if row_filter else "")]})
    if not rows["val"]:
        raise DataError({"data.manifest": [f"no '{val_split}' rows" + (" after the filter" if row_filter else "")]})
    classes = sorted({label for _, label in rows["train"]})
    unknown = sorted({label for _, label in rows["val"]} - set(classes))
    if unknown:
        raise DataError({"data.manifest": [f"label(s) in '{val_split}' missing from '{train_split}': {unknown[:20]}"]})
    missing_files = [str(p) for split in rows.values() for p, _ in split if not p.is_file()]
    if missing_files:
        raise DataError({"data.manifest": [f"{len(missing_files)} file(s) not found, e.g. {missing_files[0]}"]})
    return classes, rows


def stratified_subset(samples: list[tuple[Path, int]], limit: int | None, seed: int) -> list[tuple[Path, int]]:
    """At most ``limit`` samples, classes interleaved round-robin from seeded shuffles, so a
    small debug subset still covers every class it can."""
    if limit is None or limit >= len(samples):
        return samples
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[tuple[Path, int]]] = defaultdict(list)
    for s in samples:
        by_class[s[1]].append(s)
    queues = []
    for label in sorted(by_class):
        items = by_class[label]
        order = torch.randperm(len(items), generator=g).tolist()
        queues.append([items[i] for i in order])
    out: list[tuple[Path, int]] = []
    depth = 0
    while len(out) < limit:
        for q in queues:
            if depth < len(q) and len(out) < limit:
                out.append(q[depth])
        depth += 1
    return sorted(out, key=lambda s: (s[1], str(s[0])))


def load_data(data_cfg: DataConfig, data_root: Path, *, seed: int, num_classes: int | None) -> DataBundle:
    root = confine(data_root, data_cfg.root, what="data.root")
    if not root.is_dir():
        raise DataError({"data.root": [f"dataset folder '{data_cfg.root}' not found under {data_root.resolve()}"]})
    if data_cfg.format == "imagefolder":
        classes, rows = load_imagefolder(root, data_cfg.train_split, data_cfg.val_split)
    else:
        classes, rows = load_csv_manifest(root, data_cfg.manifest, data_cfg.train_split, data_cfg.val_split, data_cfg.filter)
    if num_classes is not None and num_classes != len(classes):
        raise DataError({"model.num_classes": [f"config says {num_classes} classes but the training data has {len(classes)}"]})
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split, items in rows.items():
        labelled = [(p, index[c]) for p, c in items]
        splits[split] = stratified_subset(labelled, data_cfg.max_samples, seed + (0 if split == "train" else 1))
    val_classes = {label for _, label in splits["val"]}
    absent = [classes[i] for i in range(len(classes)) if i not in val_classes]
    if absent and data_cfg.max_samples is None:
        log.warning("%d class(es) have no validation samples, e.g. %s", len(absent), absent[:5])
    return DataBundle(root=root, class_names=classes,
                      train=SplitData("train", splits["train"]), val=SplitData("val", splits["val"]))


class ImageListDataset(Dataset):
    """Images and labels. A key may carry its own augmentation seed (``(index, seed)``, as
    :class:`EpochSampler` yields them): the random transforms then depend only on that seed,
    not on which process loads the sample or what it loaded before, so a run resumed in the
    middle of an epoch augments the rest of it exactly as an uninterrupted run would have, with
    any number of DataLoader workers."""

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Any):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[i]
        with Image.open(path) as im:
            image = im.convert("RGB")
        if seed is None:
            return self.transform(image), label
        # The transforms draw from torch's global generator: seed it for this sample, and put
        # the caller's state back (in the main process that state is the model's dropout).
        outer = torch.get_rng_state()
        torch.default_generator.manual_seed(seed)  # the CPU generator only (manual_seed would reseed CUDA's too)
        try:
            return self.transform(image), label
        finally:
            torch.set_rng_state(outer)


def build_transforms(image_size: int, *, train: bool, augment: bool) -> Any:
    to_tensor = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)]
    if train and augment:
        return T.Compose([T.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True), T.RandomHorizontalFlip(), *to_tensor])
    return T.Compose([T.Resize(image_size, antialias=True), T.CenterCrop(image_size), *to_tensor])


class EpochSampler(Sampler[tuple[int, int]]):
    """Deterministic per-epoch order: the permutation depends only on (seed, epoch), so a run
    resumed at epoch k sees exactly the batches an uninterrupted run would have seen. Each
    index comes with its sample's augmentation seed, a function of (seed, epoch, index) only.
    ``set_epoch(epoch, skip=n)`` starts the epoch's order at position n (a resume in the
    middle of an epoch: the skipped samples are not loaded at all).
    Shards for several processes; see :func:`shard_indices` for padding."""

    def __init__(self, n: int, *, shuffle: bool, seed: int, world_size: int = 1, rank: int = 0, pad: bool = False):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.world_size, self.rank, self.pad = world_size, rank, pad
        self.epoch, self.skip = 0, 0
        self._positions, self.num_real = shard_indices(n, world_size, rank, pad=pad)

    def set_epoch(self, epoch: int, *, skip: int = 0) -> None:
        if not 0 <= skip <= len(self._positions):
            raise ValueError(f"skip {skip} outside the epoch's {len(self._positions)} positions")
        self.epoch, self.skip = epoch, skip

    @property
    def epoch_length(self) -> int:
        """Positions in a whole epoch (padding included), whatever ``skip`` is."""
        return len(self._positions)

    def __len__(self) -> int:
        return len(self._positions) - self.skip

    def sample_seed(self, index: int) -> int:
        return ((self.seed * 1_000_003 + self.epoch) * 2_147_483_647 + index) % 2**63

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        return iter([(order[p], self.sample_seed(order[p])) for p in self._positions[self.skip:]])


def build_loader(dataset: Dataset, sampler: EpochSampler, *, batch_size: int, num_workers: int, pin_memory: bool, seed: int) -> DataLoader:
    """With workers, they persist from epoch to epoch: each ``iter()`` still asks the sampler
    afresh in this process (so the order starts where ``set_epoch`` says, skip included), and a
    sample's augmentation is seeded from its key, not from the worker's RNG (which a persistent
    worker does not re-seed per epoch); so the batches are the same as with fresh workers, and
    an epoch starts without forking and importing a new set (tests/unit/worker/test_loader_persistent.py;
    figures in docs/performance.md)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=False,  # every sample counts; the smaller last batch is handled exactly
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )

