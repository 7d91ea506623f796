"""Normalised, in-memory metric series.

Every reader turns its input into :class:`Source` objects holding series keyed by a canonical
name, so the checks and plots never care where a number came from:

- per epoch: ``train.loss``, ``train.top1``, ``train.top5``, ``val.loss``, ``val.top1``,
  ``val.top5``, ``lr``, ``train.samples``, ``val.samples``, ``train.throughput``, ``step``
  (optimizer steps at the end of the epoch), ``epoch_time``;
- per step: ``step.train_loss`` (interval loss), ``step.lr``.

Accuracies are always percent after reading; what the reader detected is in ``Source.notes``.
"""
from __future__ import annotations

import math
import re
from array import array
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

import numpy as np

from common.analysis.hints import Hints

SPLITS = ("train", "val")
EPOCH_METRICS = (
    "train.loss", "train.top1", "train.top5", "val.loss", "val.top1", "val.top5",
    "lr", "train.samples", "val.samples", "train.throughput", "step", "epoch_time",
)
STEP_METRICS = ("step.train_loss", "step.lr")
ACCURACY_METRICS = ("train.top1", "train.top5", "val.top1", "val.top5")
LOSS_METRICS = ("train.loss", "val.loss")


class AnalysisInputError(ValueError):
    """An input the analysis cannot read: missing path, unknown format, malformed content."""


@dataclass
class EpochSeries:
    """One metric, one value per epoch record, in the order the source wrote them.

    ``epochs`` may contain duplicates or gaps: that is exactly what the checks look for, so
    readers must not "fix" them. Non-finite values are kept as NaN/inf.
    ``resolution`` is the half-unit of the last printed decimal for values parsed from text
    (0.0 for exact binary/JSON values): cross-source comparisons widen their tolerance by it.
    """

    name: str
    epochs: np.ndarray
    values: np.ndarray
    source: str
    raw_name: str = ""
    resolution: float = 0.0

    def __post_init__(self) -> None:
        self.epochs = np.asarray(self.epochs, dtype=np.int64)
        self.values = np.asarray(self.values, dtype=np.float64)

    def __len__(self) -> int:
        return int(self.values.size)

    def by_epoch(self) -> dict[int, float]:
        """Last value for each epoch (later records win, as a resumed run's would)."""
        return {int(e): float(v) for e, v in zip(self.epochs, self.values)}

    def finite(self) -> "EpochSeries":
        mask = np.isfinite(self.values)
        return EpochSeries(self.name, self.epochs[mask], self.values[mask], self.source, self.raw_name, self.resolution)


@dataclass
class StepSeries:
    """A step-level stream (millions of points possible): numpy arrays only, never lists."""

    name: str
    steps: np.ndarray
    values: np.ndarray
    source: str
    epochs: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.values.size)


class PrintedValues(Mapping[int, list[float]]):
    """Epoch -> the values printed inside it, in write order, read as a list per epoch. Held as
    float64 arrays (8 bytes a value, not a float object's 32): a progress line prints its running
    averages at every iteration, millions of values in a big log, and the checks read one epoch
    at a time."""

    def __init__(self) -> None:
        self._values: dict[int, array] = {}

    def __setitem__(self, epoch: int, values: Iterable[float]) -> None:
        self._values[epoch] = values if isinstance(values, array) and values.typecode == "d" else array("d", values)

    def __getitem__(self, epoch: int) -> list[float]:
        return self._values[epoch].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"PrintedValues({ {e: len(v) for e, v in self._values.items()} } values per epoch)"


@dataclass
class Source:
    """Everything one input contributed. ``approximate`` marks running averages printed
    mid-epoch (timm, Lightning progress bars): plotted, but never used to accuse another source."""

    name: str
    kind: str  # history | steps | log | tensorboard | csv
    path: str
    series: dict[str, EpochSeries] = field(default_factory=dict)
    steps: dict[str, StepSeries] = field(default_factory=dict)
    mapping: dict[str, str] = field(default_factory=dict)  # raw name -> canonical name
    ignored: list[str] = field(default_factory=list)  # raw names with no canonical meaning
    notes: list[str] = field(default_factory=list)
    approximate: bool = False
    num_classes: int | None = None
    dataset_sizes: dict[str, int] = field(default_factory=dict)
    batch_size: int | None = None
    step_sequence: np.ndarray | None = None  # optimizer steps in write order, for resume checks
    accuracy_unit: str | None = None  # what normalise_accuracy_units detected (None: declared/undetermined)
    detected_unit_metrics: list[str] = field(default_factory=list)
    format: str = ""  # the format the reader recognised (docs/analysis.md "Formats")
    exact_zero_steps: list[int] = field(default_factory=list)  # steps whose loss was printed as an exact 0 (0.0000e+00)
    restarts: list[dict] = field(default_factory=list)  # where an epoch counter restarted (appended sessions)
    session: str = ""  # sources of different sessions (Lightning version_N) are not cross-checked
    # A metric printed several times inside one epoch (evaluation every N steps): canonical name ->
    # epoch -> every value in write order, as printed (before unit conversion). The epoch series
    # keeps one value per epoch; checks that need the evaluations in between read these.
    within_epoch: dict[str, Mapping[int, list[float]]] = field(default_factory=dict)

    def add(self, series: EpochSeries) -> None:
        self.series[series.name] = series
        if series.raw_name:
            self.mapping[series.raw_name] = series.name

    def last_epoch(self) -> int | None:
        ends = [int(s.epochs.max()) for s in self.series.values() if len(s)]
        return max(ends) if ends else None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "path": self.path,
            "metrics": sorted(self.series),
            "step_metrics": sorted(self.steps),
            "mapping": dict(sorted(self.mapping.items())),
            "ignored": sorted(set(self.ignored)),
            "notes": list(self.notes),
            "approximate": self.approximate,
            "format": self.format,
            "accuracy_unit": self.accuracy_unit,
        }


@dataclass
class RunData:
    """All sources of one analysis plus what is known about the task."""

    sources: list[Source] = field(default_factory=list)
    num_classes: int | None = None
    dataset_sizes: dict[str, int] = field(default_factory=dict)
    batch_size: int | None = None
    hints: Hints = field(default_factory=Hints)

    def all_series(self, name: str) -> list[EpochSeries]:
        return [s.series[name] for s in self.sources if name in s.series and len(s.series[name])]

    def primary(self, name: str) -> EpochSeries | None:
        """The series to plot and reason about: the first exact source that has it."""
        exact = [s for s in self.sources if not s.approximate] + [s for s in self.sources if s.approximate]
        for source in exact:
            if name in source.series and len(source.series[name]):
                return source.series[name]
        return None

    def step_series(self, name: str) -> StepSeries | None:
        for source in self.sources:
            if name in source.steps and len(source.steps[name]):
                return source.steps[name]
        return None

    def merge_task_info(self) -> None:
        """Fill class count, dataset sizes and batch size from the sources unless given."""
        for source in self.sources:
            if self.num_classes is None and source.num_classes:
                self.num_classes = int(source.num_classes)
            for split, size in source.dataset_sizes.items():
                self.dataset_sizes.setdefault(split, int(size))
            if self.batch_size is None and source.batch_size:
                self.batch_size = int(source.batch_size)


# --- metric name mapping -------------------------------------------------------------------

_TRAIN_TOKENS = {"train", "training", "tr"}
# ultralytics writes validation metrics as ``metrics/accuracy_top1``.
_METRICS_TOKENS = {"metrics"}
_VAL_TOKENS = {"val", "valid", "validation", "eval", "evaluation", "test", "dev"}
# Tokens that say "aggregated per epoch" (Lightning's ``_epoch``, Keras TB's ``epoch_``).
_EPOCH_TOKENS = {"epoch", "avg", "mean"}
_METRIC_WORDS: dict[str, str] = {
    "loss": "loss", "ce": "loss", "xent": "loss", "cross_entropy": "loss", "nll": "loss",
    "acc": "top1", "accuracy": "top1", "top1": "top1", "acc1": "top1", "top_1": "top1",
    "top1_acc": "top1", "top1_accuracy": "top1", "acc_top1": "top1", "acc@1": "top1",
    "accuracy_top1": "top1", "accuracy_top_1": "top1", "acc_top_1": "top1",
    "accuracy_top5": "top5", "accuracy_top_5": "top5", "acc_top_5": "top5",
    "categorical_accuracy": "top1", "sparse_categorical_accuracy": "top1", "prec1": "top1",
    "top5": "top5", "acc5": "top5", "top_5": "top5", "top5_acc": "top5", "top5_accuracy": "top5",
    "acc_top5": "top5", "acc@5": "top5", "top_k_categorical_accuracy": "top5",
    "sparse_top_k_categorical_accuracy": "top5", "prec5": "top5",
    "samples": "samples", "n": "samples", "num_samples": "samples",
    "throughput": "throughput", "img_s": "throughput", "images_per_sec": "throughput",
    "samples_per_sec": "throughput",
}
_LR_WORDS = {"lr", "learning_rate", "lr_0", "lr_pg0", "lr_sgd", "lr_adam", "lr_adamw", "learningrate", "lr_group0"}
_NON_ALNUM = re.compile(r"[^a-z0-9@]+")


def map_metric_name(raw: str) -> tuple[str, bool] | None:
    """Canonical name for a raw metric name, and whether the split was explicit.

    ``val_acc`` -> ("val.top1", True); Keras ``accuracy`` -> ("train.top1", False);
    ``step/train_loss`` or ``train_loss_step`` -> ("step.train_loss", True).
    Returns None for names with no canonical meaning (time, epoch, v_num, ...).
    """
    norm = _NON_ALNUM.sub("_", raw.strip().lower()).strip("_")
    if not norm:
        return None
    if norm in _LR_WORDS or (norm.startswith("lr_") and len(norm) <= 12) or norm.startswith("learning_rate"):
        return ("lr", True)
    tokens = norm.split("_")
    step_level = tokens[0] == "step" or tokens[-1] == "step"
    if step_level:
        tokens = [t for t in tokens if t != "step"]
        inner = map_metric_name("_".join(tokens)) if tokens else None
        if inner is None:
            return None
        name = inner[0]
        if name == "lr":
            return ("step.lr", True)
        if name == "train.loss":
            return ("step.train_loss", True)
        return None  # other step-level metrics are not used
    split = None
    rest = []
    for token in tokens:
        if token in _TRAIN_TOKENS and split is None:
            split = "train"
        elif token in _VAL_TOKENS and split is None:
            split = "val"
        elif token in _METRICS_TOKENS and split is None and len(tokens) > 1:
            split = "val"
        else:
            rest.append(token)
    if len(rest) > 1:
        rest = [t for t in rest if t not in _EPOCH_TOKENS] or rest
    word = _METRIC_WORDS.get("_".join(rest)) or truncated_accuracy(rest, split)
    if word is None:
        return None
    if word in ("samples", "throughput") and split is None:
        return None if word == "samples" else ("train.throughput", False)
    return (f"{split or 'train'}.{word}", split is not None)


def truncated_accuracy(rest: list[str], split: str | None) -> str | None:
    """A cut-off accuracy name with an explicit split (``valid_ac``, ``val_accur``: a header
    printed with its last characters lost) is that split's top-1. Only with a split: a bare
    ``ac`` means nothing."""
    if split is None or len(rest) != 1 or len(rest[0]) < 2:
        return None
    return "top1" if "accuracy".startswith(rest[0]) else None


# --- accuracy unit --------------------------------------------------------------------------


def normalise_accuracy_units(source: Source, declared: str | dict[str, str] | None = None) -> None:
    """Convert fractional accuracies to percent in place, recording what was decided.

    The unit is decided once for the whole source, not per series: a source whose undeclared
    accuracies all lie in [0, 1] is a fraction (x100); one with any undeclared accuracy above 1
    is percent throughout (top-1 of 0.36% next to top-5 of 1.5% is one unit, not two). A
    declared unit (our history's ``accuracy_unit``, a '%' printed in a log) wins for its series.
    All-zero sources are ambiguous and left alone, with a note. ``source.accuracy_unit`` keeps
    the decision so that a user's ``--accuracy-unit`` can override it (:func:`override_accuracy_unit`).
    """
    present = [n for n in ACCURACY_METRICS if n in source.series and len(source.series[n])]
    undeclared = []
    for name in present:
        unit = declared.get(name) if isinstance(declared, dict) else declared
        if unit == "percent":
            source.notes.append(f"{name}: percent (declared by the source)")
        elif unit == "fraction":
            _scale(source.series[name], 100.0)
            source.notes.append(f"{name}: fraction (declared by the source), converted to percent")
        else:
            undeclared.append(name)
    if not undeclared:
        return
    finite = np.concatenate([source.series[n].values[np.isfinite(source.series[n].values)] for n in undeclared])
    if finite.size == 0 or not np.any(finite != 0):
        source.notes.append(f"{', '.join(undeclared)}: unit undetermined (no non-zero values), kept as is")
        return
    top = float(np.max(np.abs(finite)))
    if top <= 1.0:
        for name in undeclared:
            _scale(source.series[name], 100.0)
        source.accuracy_unit = "fraction"
        source.notes.append(f"{', '.join(undeclared)}: fraction detected for the source (all values <= 1, "
                            f"max {top:.4g}), converted to percent")
    else:
        source.accuracy_unit = "percent"
        source.notes.append(f"{', '.join(undeclared)}: percent detected for the source (max {top:.4g})")
    source.detected_unit_metrics = list(undeclared)


def override_accuracy_unit(source: Source, unit: str) -> None:
    """The user says the source's undeclared accuracies are ``unit`` (percent or fraction)."""
    names = [n for n in (source.detected_unit_metrics or
                         [n for n in ACCURACY_METRICS if n in source.series]) if n in source.series]
    current = source.accuracy_unit or "percent"  # undetermined (all zero) series were kept as is
    if not names or unit == current:
        return
    factor = 100.0 if unit == "fraction" else 0.01
    for name in names:
        _scale(source.series[name], factor)
    source.accuracy_unit = unit
    source.notes.append(f"{', '.join(names)}: {unit} as given by the accuracy_unit hint (detected: {current})")


def _scale(series: EpochSeries, factor: float) -> None:
    series.values = series.values * factor
    series.resolution *= factor


def shift_zero_based_epochs(source: Source) -> None:
    """Frameworks that count epochs from 0 (timm, Lightning) are shifted to our 1-based epochs."""
    starts = [int(s.epochs.min()) for s in source.series.values() if len(s)]
    if starts and min(starts) == 0:
        for series in source.series.values():
            series.epochs = series.epochs + 1
        for series in source.steps.values():
            if series.epochs is not None:
                series.epochs = series.epochs + 1
        for restart in source.restarts:  # "epoch" stays as written; "continues_as" is the series' epoch
            restart["continues_as"] += 1
        source.notes.append("epochs counted from 0 in the source; shifted by +1 to count from 1")


def decimals_resolution(text: str) -> float:
    """Half a unit of the last printed digit: '7.5350' -> 5e-5, '960' -> 0.5, '1e-3' -> tiny."""
    text = text.strip().lower()
    if "e" in text or not text:
        mantissa, _, exp = text.partition("e")
        digits = len(mantissa.split(".")[1]) if "." in mantissa else 0
        try:
            return 0.5 * 10.0 ** (int(exp or 0) - digits)
        except ValueError:
            return 0.0
    digits = len(text.split(".")[1]) if "." in text else 0
    return 0.5 * 10.0 ** (-digits)


def parse_float(value: object) -> float:
    """A metric value from JSON/CSV/text; None and '' become NaN so gaps stay visible."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if not text:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise AnalysisInputError(f"not a number: {text!r}") from None


def series_from_pairs(name: str, pairs: Iterable[tuple[int, float]], source: str, raw_name: str = "",
                      resolution: float = 0.0) -> EpochSeries:
    pairs = list(pairs)
    epochs = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
    values = np.fromiter((p[1] for p in pairs), dtype=np.float64, count=len(pairs))
    return EpochSeries(name, epochs, values, source, raw_name, resolution)

