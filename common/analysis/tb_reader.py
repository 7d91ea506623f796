"""TensorBoard logs as a :class:`Source` (no TensorFlow needed).

Every scalar event is kept (TensorBoard's own loader keeps a reservoir sample of each tag by
default: a sampled stream could hide a spike or a backwards step); the files are read by
common/analysis/tb_events.py, which gives what ``EventAccumulator(size_guidance={SCALARS: 0})``
does, several times faster, plus TF2's tensor-valued scalars.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.analysis.series import (
    AnalysisInputError,
    EpochSeries,
    Source,
    StepSeries,
    map_metric_name,
    normalise_accuracy_units,
    shift_zero_based_epochs,
)
from common.analysis.tb_events import EventFileError, read_scalars

_SPLIT_DIRS = {"train", "training", "val", "valid", "validation", "eval", "test"}


def find_event_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*tfevents*") if p.is_file())


def read_tensorboard(path: Path, accuracy_unit: str | None = None) -> Source:
    """``accuracy_unit`` ("percent"/"fraction") when the writer is known (our own tb/ logs
    percent); otherwise guessed, which is ambiguous while every accuracy is still below 1%."""
    files = find_event_files(path)
    if not files:
        raise AnalysisInputError(f"{path}: no TensorBoard event files (*tfevents*)")
    source = Source(name=path.name or str(path), kind="tensorboard", path=str(path))
    # The event files of one directory are one stream, in name order (as TensorBoard reads them).
    groups: dict[Path, list[Path]] = {}
    directory = path.is_dir()
    for f in files:
        groups.setdefault(f.parent if directory else path, []).append(f)
    raw: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for group in sorted(groups):
        try:
            scalars = read_scalars(sorted(groups[group]))
        except (EventFileError, OSError) as exc:
            raise AnalysisInputError(f"{group}: cannot read TensorBoard events ({exc})") from exc
        source.notes.extend(scalars.notes)
        prefix = split_prefix(group, path)
        for tag, (steps, values) in scalars.series.items():
            name = f"{prefix}/{tag}" if prefix else tag
            if name in raw:
                source.notes.append(f"tag {name} found in several directories; kept the first")
                continue
            raw[name] = (np.frombuffer(steps, dtype=np.int64), np.frombuffer(values, dtype=np.float64))  # no copy
    build_tb_series(source, raw)
    normalise_accuracy_units(source, accuracy_unit)
    shift_zero_based_epochs(source)
    return source


def split_prefix(group: Path, root: Path) -> str:
    """Keras writes ``train/`` and ``validation/`` subdirectories with the same tag names."""
    if group == root or not group.is_dir():
        return ""
    return group.name if group.name.lower() in _SPLIT_DIRS else ""


def build_tb_series(source: Source, raw: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    epoch_tag = next((t for t in raw if t.strip("/").split("/")[-1].lower() == "epoch"), None)
    epoch_steps = epoch_values = None
    if epoch_tag is not None:
        steps, values = raw[epoch_tag]
        order = np.argsort(steps, kind="stable")
        epoch_steps, epoch_values = steps[order], np.rint(values[order]).astype(np.int64)
        source.step_sequence = steps
    for tag, (steps, values) in raw.items():
        if tag == epoch_tag:
            continue
        mapped = map_metric_name(tag)
        if mapped is None:
            source.ignored.append(tag)
            continue
        name = mapped[0]
        if epoch_steps is not None:
            idx = np.searchsorted(epoch_steps, steps, side="right") - 1
            epochs = np.where(idx >= 0, epoch_values[np.clip(idx, 0, None)], 0)
        else:
            epochs = np.arange(1, steps.size + 1, dtype=np.int64)
        distinct = max(1, np.unique(epochs).size)
        if name.startswith("step.") or steps.size > 1.5 * distinct:
            add_step_level(source, tag, name, steps, values, epochs)
            continue
        source.add(EpochSeries(name, epochs, values, source.name, tag))


def add_step_level(source: Source, tag: str, name: str, steps: np.ndarray, values: np.ndarray,
                   epochs: np.ndarray) -> None:
    step_name = {"train.loss": "step.train_loss", "lr": "step.lr"}.get(name, name)
    if not step_name.startswith("step."):
        source.ignored.append(tag)
        source.notes.append(f"{tag}: logged several times per epoch and not a step metric we use; ignored")
        return
    if step_name in source.steps:
        source.notes.append(f"{tag}: a second stream for {step_name}; ignored")
        return
    source.steps[step_name] = StepSeries(step_name, steps, values, source.name, epochs)
    source.mapping[tag] = step_name
