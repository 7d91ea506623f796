"""Streaming reader for ``steps.jsonl`` (see docs/run-directory.md; one line is a
:class:`common.rundir.StepRecord`).

A long run writes millions of records, so lines are parsed in chunks (one ``json.loads`` of a
JSON array per chunk: far faster than one call per line) and kept as numpy columns; no list of
dicts for the whole file is ever built. The last line may be incomplete (the writer appends
while we read) and is then ignored.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from common.analysis.series import AnalysisInputError, EpochSeries, Source, StepSeries
from common.rundir import metric_name

_CHUNK_LINES = 20_000
# The numeric fields of common.rundir.StepRecord this reader keeps (``split``/``final`` apart).
_COLUMNS = ("epoch", "step", "samples", "loss_sum", "correct1", "correct5", "lr")


@dataclass
class StepColumns:
    """The file as columns; ``is_train``/``final`` are booleans, the rest float64."""

    is_train: np.ndarray
    final: np.ndarray
    cols: dict[str, np.ndarray]
    skipped_partial_line: bool

    def __len__(self) -> int:
        return int(self.is_train.size)


def iter_line_chunks(path: Path) -> Iterator[tuple[list[str], int, bool]]:
    """Yield (lines, first line number, is_last_chunk_with_partial_tail)."""
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        buffer: list[str] = []
        first = 1
        lineno = 0
        for line in handle:
            lineno += 1
            buffer.append(line)
            if len(buffer) >= _CHUNK_LINES:
                yield buffer, first, False
                buffer, first = [], lineno + 1
        yield buffer, first, bool(buffer) and not buffer[-1].endswith("\n")


def parse_chunk(lines: list[str], first: int, partial_tail: bool) -> tuple[list[dict], bool]:
    """Parse a chunk; returns records and whether an incomplete last line was dropped."""
    body = [ln for ln in lines if ln.strip()]
    if not body:
        return [], False
    try:
        return json.loads("[" + ",".join(body) + "]"), False
    except json.JSONDecodeError:
        pass  # find the bad line below, to drop a partial tail or name the line
    records: list[dict] = []
    dropped = False
    for offset, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if partial_tail and offset == len(lines) - 1:
                dropped = True
                continue
            raise AnalysisInputError(f"line {first + offset}: not a JSON object ({exc.msg})") from None
    return records, dropped


def read_step_columns(path: Path) -> StepColumns:
    is_train: list[np.ndarray] = []
    final: list[np.ndarray] = []
    cols: dict[str, list[np.ndarray]] = {name: [] for name in _COLUMNS}
    dropped_any = False
    for lines, first, partial in iter_line_chunks(path):
        records, dropped = parse_chunk(lines, first, partial)
        dropped_any = dropped_any or dropped
        if not records:
            continue
        if not all(isinstance(r, dict) for r in records):
            raise AnalysisInputError(f"{path}: every line must be a JSON object")
        is_train.append(np.fromiter((r.get("split") == "train" for r in records), dtype=bool, count=len(records)))
        final.append(np.fromiter((bool(r.get("final")) for r in records), dtype=bool, count=len(records)))
        for name, chunks in cols.items():
            chunks.append(column_of(records, name, path, first))
    return StepColumns(
        is_train=join(is_train, bool),
        final=join(final, bool),
        cols={name: join(chunks, np.float64) for name, chunks in cols.items()},
        skipped_partial_line=dropped_any,
    )


def column_of(records: list[dict], name: str, path: Path, first: int) -> np.ndarray:
    # One list comprehension + one C conversion per column: several times faster than
    # converting value by value in Python. numpy turns a missing key (None) into NaN.
    try:
        return np.array([r.get(name) for r in records], dtype=np.float64)
    except (TypeError, ValueError):
        raise AnalysisInputError(f"{path}: '{name}' is not a number in the chunk starting at line {first}") from None


def join(chunks: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=dtype)


def read_steps_jsonl(path: Path) -> Source:
    """Epoch values recomputed from each (epoch, split)'s final record, plus step streams."""
    data = read_step_columns(path)
    source = Source(name=path.name, kind="steps", path=str(path))
    if data.skipped_partial_line:
        source.notes.append("ignored an incomplete last line (still being written)")
    if not len(data):
        return source
    add_epoch_values(source, data)
    add_step_streams(source, data)
    source.notes.append("accuracy recomputed as 100*correct/samples (percent)")
    return source


def add_epoch_values(source: Source, data: StepColumns) -> None:
    c = data.cols
    samples = c["samples"]
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = c["loss_sum"] / samples
        top1 = 100.0 * c["correct1"] / samples
        top5 = 100.0 * c["correct5"] / samples
    for split, mask_split in (("train", data.is_train), ("val", ~data.is_train)):
        mask = data.final & mask_split
        if not mask.any():
            continue
        epochs = c["epoch"][mask].astype(np.int64)
        for metric, values in (("loss", loss), ("top1", top1), ("top5", top5), ("samples", samples)):
            source.add(EpochSeries(metric_name(split, metric), epochs, values[mask], source.name, f"{split}:{metric}"))
        # lr and throughput of a running record may legitimately differ from the epoch's
        # (scheduler stepped, timing window), so only the step counter is taken per epoch.
        if split == "train" and np.isfinite(c["step"][mask]).any():
            source.add(EpochSeries("step", epochs, c["step"][mask], source.name, "train:step"))


def add_step_streams(source: Source, data: StepColumns) -> None:
    c = data.cols
    train = data.is_train
    steps = c["step"][train]
    epochs = c["epoch"][train]
    loss_sum = c["loss_sum"][train]
    samples = c["samples"][train]
    # Sums restart at every epoch: the first record of an epoch is its own interval.
    new_epoch = np.ones(steps.size, dtype=bool)
    new_epoch[1:] = epochs[1:] != epochs[:-1]
    d_loss = np.where(new_epoch, loss_sum, loss_sum - np.roll(loss_sum, 1))
    d_samples = np.where(new_epoch, samples, samples - np.roll(samples, 1))
    # A record that adds no samples has no interval loss (not a NaN loss: that would be a finding).
    keep = d_samples > 0
    if not keep.all():
        source.notes.append(f"{int((~keep).sum())} train record(s) added no samples; no interval loss for them")
    with np.errstate(divide="ignore", invalid="ignore"):
        interval = d_loss[keep] / d_samples[keep]
    ep = epochs.astype(np.int64)
    source.steps["step.train_loss"] = StepSeries("step.train_loss", steps[keep], interval, source.name, ep[keep])
    lr = c["lr"][train]
    has_lr = np.isfinite(lr)
    if has_lr.any():
        source.steps["step.lr"] = StepSeries("step.lr", steps[has_lr], lr[has_lr], source.name, ep[has_lr])
    source.step_sequence = steps
