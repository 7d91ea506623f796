"""The one owner of the run directory: every file name, and typed records for what is in them.

docs/run-directory.md specifies the layout and the formats; this module is the code of that
page. The trainer writes a run directory, the supervisor, the API and the analysis readers
read it, and all of them name its files and parse its records through here, so a new file or a
new field is added in one place.

- Names: :class:`RunPaths` (``teacher train --run-dir``) and :class:`JobPaths`
  (``JOBS_ROOT/<id>/``, whose ``run/`` is a run directory).
- Records: :class:`Progress` (progress.json), :class:`History` (history.json),
  :class:`Manifest` (checkpoints/manifest.json), :class:`StepRecord` (a steps.jsonl line), and
  the config (config.yaml, an open mapping: its schema is common/config.py's).
- Metric names: one spelling in code and files, ``split.metric`` (``val.top1``); TensorBoard's
  tag is derived from it by :func:`tb_tag` (``val/top1``). See :class:`Metric`.

Readers return ``None`` for a file that does not exist yet (a run that has not got there) and
raise :class:`RunFileCorrupt` for one that exists but does not parse as its record: files are
replaced atomically, so a corrupt one means outside damage, never a read that raced a write.
Writers are atomic (:mod:`common.atomic`), except the append-only streams (steps.jsonl,
train.log), whose readers ignore an incomplete last line.

Torch-free and Flask-free: the API and the supervisor's parent process import it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from common.atomic import TMP_PREFIX, append_line, atomic_write_json, atomic_write_text
from common.runfiles import read_json

# A record's JSON form: what json.loads gives and json.dumps takes. Only the from_json/to_json
# edges of the records below handle it; code uses the records.
JsonObject = dict[str, Any]

# ----------------------------------------------------------------------------- file names

CONFIG = "config.yaml"
HISTORY = "history.json"
STEPS = "steps.jsonl"
PROGRESS = "progress.json"
LOG = "train.log"
TENSORBOARD = "tb"
CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
LAST = "last.pt"
BEST = "best.pt"
ALIASES = (LAST, BEST)
EXPORT = "export"
EXPORT_MODEL = "model.pt"
EXPORT_META = "model.json"
RESERVE = ".space-reserve"
LOCK = ".lock"
# Touched by the trainer at least every second while it makes progress (batches, validation):
# the supervisor's stall watchdog reads its mtime.
ALIVE = ".alive"
# JOBS_ROOT/<id>/: the job's own files beside its run directory.
JOB_CONFIG = "config.yaml"
JOB_LOG = "child.log"
JOB_RUN = "run"

HISTORY_FORMAT = "teacher-history/1"
MANIFEST_FORMAT = "teacher-checkpoints/1"
_EPOCH_FILE = re.compile(r"^epoch_(\d{4,})\.pt$")
_STEP_FILE = re.compile(r"^step_(\d{8,})(?:-\d+)?\.pt$")
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def epoch_file(epoch: int) -> str:
    """``epoch_0003.pt``: the one file a save writes."""
    return f"epoch_{epoch:04d}.pt"


def epoch_of_file(name: str) -> int | None:
    """The epoch an ``epoch_NNNN.pt`` name holds; None for any other name."""
    m = _EPOCH_FILE.match(name)
    return int(m.group(1)) if m else None


def is_epoch_file(name: str) -> bool:
    return epoch_of_file(name) is not None


def step_file(step: int, batch: int | None = None) -> str:
    """``step_00001234.pt``: a mid-epoch checkpoint after optimizer step 1234 (periodic, or
    written when a stop was requested). Removed once a later epoch checkpoint exists. A second
    one at the same step (a stop inside the accumulation window after a periodic save) is
    ``step_00001234-000007.pt`` (batch 7), so the listed file is never overwritten in place."""
    return f"step_{step:08d}.pt" if batch is None else f"step_{step:08d}-{batch:06d}.pt"


def step_of_file(name: str) -> int | None:
    """The optimizer step a ``step_NNNNNNNN.pt`` name holds; None for any other name."""
    m = _STEP_FILE.match(name)
    return int(m.group(1)) if m else None


def is_step_file(name: str) -> bool:
    return step_of_file(name) is not None


def is_job_id(text: str) -> bool:
    return _JOB_ID.match(text) is not None


@dataclass(frozen=True)
class RunPaths:
    """The files of one run directory (``teacher train --run-dir DIR``)."""

    dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "dir", Path(self.dir))

    @property
    def config(self) -> Path:
        return self.dir / CONFIG

    @property
    def history(self) -> Path:
        return self.dir / HISTORY

    @property
    def steps(self) -> Path:
        return self.dir / STEPS

    @property
    def progress(self) -> Path:
        return self.dir / PROGRESS

    @property
    def log(self) -> Path:
        return self.dir / LOG

    @property
    def tensorboard(self) -> Path:
        return self.dir / TENSORBOARD

    @property
    def checkpoints(self) -> Path:
        return self.dir / CHECKPOINTS

    @property
    def manifest(self) -> Path:
        return self.checkpoints / MANIFEST

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST

    @property
    def export(self) -> Path:
        return self.dir / EXPORT

    @property
    def reserve(self) -> Path:
        return self.dir / RESERVE

    @property
    def lock(self) -> Path:
        return self.dir / LOCK

    @property
    def alive(self) -> Path:
        return self.dir / ALIVE

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / name

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / epoch_file(epoch)

    def relative(self, path: Path) -> str:
        """``path`` as named inside the run directory (for messages), else as given."""
        try:
            return str(Path(path).relative_to(self.dir))
        except ValueError:
            return str(path)


class InvalidJobId(LookupError):
    """A job directory was asked for with something that is not a job id (never build paths
    from anything but a real id). A LookupError, like the store's JobNotFound."""


@dataclass(frozen=True)
class JobPaths:
    """JOBS_ROOT/<id>/{config.yaml, child.log, run/}; `run/` is `teacher train --run-dir`."""

    root: Path

    @classmethod
    def of(cls, jobs_root: Path, job_id: str) -> "JobPaths":
        if not is_job_id(job_id):
            raise InvalidJobId(job_id)
        return cls(Path(jobs_root) / job_id)

    @property
    def config(self) -> Path:
        return self.root / JOB_CONFIG

    @property
    def log(self) -> Path:
        return self.root / JOB_LOG

    @property
    def run(self) -> Path:
        return self.root / JOB_RUN

    @property
    def files(self) -> RunPaths:
        """The run directory's files (``paths.files.steps``, ``paths.files.export``, ...)."""
        return RunPaths(self.run)

    @property
    def checkpoints(self) -> Path:
        return self.files.checkpoints

    @property
    def progress(self) -> Path:
        return self.files.progress

    @property
    def history(self) -> Path:
        return self.files.history

    @property
    def manifest(self) -> Path:
        return self.files.manifest


# ----------------------------------------------------------------------------- metric names

SPLITS = ("train", "val")
SPLIT_METRICS = ("loss", "top1", "top5")


class Metric(str, Enum):
    """A per-epoch metric, by its one name: ``split.metric``. The name is what history's
    ``nonfinite`` flags, the manifest's ``metrics``, progress's ``latest``, the config's
    ``checkpoint.best_metric`` and the API say; history.json nests it (``epochs[i].val.top1``),
    TensorBoard spells it with a slash (:func:`tb_tag`)."""

    TRAIN_LOSS = "train.loss"
    TRAIN_TOP1 = "train.top1"
    TRAIN_TOP5 = "train.top5"
    VAL_LOSS = "val.loss"
    VAL_TOP1 = "val.top1"
    VAL_TOP5 = "val.top5"

    @property
    def split(self) -> str:
        return self.value.partition(".")[0]

    @property
    def key(self) -> str:
        """The key inside the split's record of history.json: ``top1``."""
        return self.value.partition(".")[2]


def metric_name(split: str, key: str) -> str:
    """``metric_name("val", "top1") == "val.top1"``: the one way to spell a metric in code."""
    return f"{split}.{key}"


def tb_tag(name: str) -> str:
    """TensorBoard's tag for a metric name: ``val.top1`` -> ``val/top1`` (TensorBoard groups
    scalars by the part before the slash)."""
    return name.replace(".", "/", 1)


# ----------------------------------------------------------------------------- errors, JSON


_R = TypeVar("_R", bound="_JsonFile")


class RunFileCorrupt(ValueError):
    """A run-directory file exists but is not what its format says (outside damage: every
    file is replaced atomically)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def finite_or_flag(name: str, value: float | None, flags: dict[str, str]) -> float | None:
    """``value`` if finite; else ``None`` and ``flags[name]`` = 'nan' / 'inf' / '-inf'."""
    if value is None or math.isfinite(value):
        return value
    flags[name] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return None


def sanitize(obj: Any, flags: dict[str, str], prefix: str = "") -> Any:
    """Replace every non-finite float in a nested structure, recording its dotted name."""
    if isinstance(obj, float):
        return finite_or_flag(prefix, obj, flags)
    if isinstance(obj, dict):
        return {k: sanitize(v, flags, f"{prefix}.{k}" if prefix else k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [sanitize(v, flags, f"{prefix}[{i}]") for i, v in enumerate(obj)]
    return obj


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Name ``path`` in an OSError raised while writing it. A failed write(2) or fsync(2)
    reports no file name, and an atomic write's temp file is an internal name; so a full disk
    would otherwise say only "No space left on device", not what was being written."""
    try:
        yield
    except OSError as exc:
        if exc.errno is not None and (exc.filename is None or Path(str(exc.filename)).name.startswith(TMP_PREFIX)):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def read_object(path: Path) -> JsonObject | None:
    """A run file's JSON object as written (for showing a file as it is, e.g. the API's
    /metrics); None when the file does not exist yet; RunFileCorrupt when it is not a JSON
    object. Code that acts on a file's content reads its record instead (Progress.read, ...)."""
    try:
        data = read_json(Path(path))
    except ValueError as exc:
        raise RunFileCorrupt(path, f"not valid JSON ({exc})") from None
    if data is not None and not isinstance(data, dict):
        raise RunFileCorrupt(path, f"expected a JSON object, found {type(data).__name__}")
    return data



def manifest_entries(path: Path) -> list[JsonObject]:
    """The manifest's checkpoint entries that have a name, as written: lenient, for listing
    them or looking one up (a manifest edited by another tool may hold entries that
    :class:`Manifest`, for code that acts on the whole manifest, refuses). [] without a manifest."""
    entries = (read_object(path) or {}).get("checkpoints")
    return [e for e in entries if isinstance(e, dict) and e.get("name")] if isinstance(entries, list) else []

@contextmanager
def _parsing(path: Path) -> Iterator[None]:
    """A record whose fields have the wrong shape is a corrupt file, named."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, RunFileCorrupt):
            raise
        raise RunFileCorrupt(path, f"not a valid {Path(path).name} ({type(exc).__name__}: {exc})") from None


def _write_json(path: Path, obj: Any) -> None:
    with naming(path):
        atomic_write_json(path, obj)


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return value


def _num(value: Any) -> float:
    number = _opt_float(value)
    if number is None:
        raise TypeError("expected a number, got null")
    return number


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)


def _flags(value: Any) -> dict[str, str]:
    """A ``nonfinite`` mapping: dotted name -> 'nan' / 'inf' / '-inf'."""
    if not isinstance(value, dict):
        raise TypeError(f"expected a mapping of names to 'nan'/'inf'/'-inf', got {value!r}")
    return {str(k): str(v) for k, v in value.items()}


def _metrics(value: Any) -> dict[str, float | None]:
    if not isinstance(value, dict):
        raise TypeError(f"expected a mapping of metric names to numbers, got {value!r}")
    return {str(k): _opt_float(v) for k, v in value.items()}


# ----------------------------------------------------------------------------- config.yaml

RunConfig = dict[str, Any]  # open: validated and defaulted by common/config.py's schema


def read_config(path: Path) -> RunConfig | None:
    """The resolved config a run was started with; None before it is written."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RunFileCorrupt(path, f"not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise RunFileCorrupt(path, "expected a mapping")
    return data


def write_config(path: Path, cfg: Mapping[str, Any]) -> None:
    with naming(path):
        atomic_write_text(path, yaml.safe_dump(dict(cfg), sort_keys=False))


class _JsonFile:
    """A record stored as one JSON object in one file: ``read`` is None for a missing file and
    raises RunFileCorrupt for one that is not the record."""

    @classmethod
    def read(cls: type[_R], path: Path) -> _R | None:
        obj = read_object(path)
        if obj is None:
            return None
        with _parsing(path):
            return cls.from_json(obj)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- history.json


@dataclass
class SplitMetrics:
    """One split of one epoch. ``throughput`` is the train split's only (images/s)."""

    loss: float | None
    top1: float | None
    top5: float | None
    samples: int
    throughput: float | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "SplitMetrics":
        return cls(_opt_float(obj["loss"]), _opt_float(obj["top1"]), _opt_float(obj["top5"]), _int(obj["samples"]),
                   _opt_float(obj.get("throughput")))

    def to_json(self, *, with_throughput: bool) -> JsonObject:
        out: JsonObject = {"loss": self.loss, "top1": self.top1, "top5": self.top5, "samples": self.samples}
        if with_throughput:
            out["throughput"] = self.throughput
        return out

    def get(self, key: str) -> float | None:
        """A metric by its key in the split (``top1``)."""
        if key not in SPLIT_METRICS:
            raise KeyError(key)
        return getattr(self, key)


@dataclass
class EpochRecord:
    """history.json ``epochs[i]``: the k-th completed epoch (numbered from 1). Non-finite values
    are ``None`` here and named in ``nonfinite`` (``{"val.loss": "nan"}``)."""

    epoch: int
    step: int
    lr: float | None
    epoch_time_s: float | None
    train: SplitMetrics
    val: SplitMetrics
    nonfinite: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "EpochRecord":
        return cls(_int(obj["epoch"]), _int(obj["step"]), _opt_float(obj.get("lr")), _opt_float(obj.get("epoch_time_s")),
                   SplitMetrics.from_json(obj["train"]), SplitMetrics.from_json(obj["val"]),
                   _flags(obj.get("nonfinite") or {}))

    def to_json(self) -> JsonObject:
        return {"epoch": self.epoch, "step": self.step, "lr": self.lr, "epoch_time_s": self.epoch_time_s,
                "train": self.train.to_json(with_throughput=True), "val": self.val.to_json(with_throughput=False),
                "nonfinite": dict(self.nonfinite)}

    def split(self, name: str) -> SplitMetrics:
        if name not in SPLITS:
            raise KeyError(name)
        return self.train if name == "train" else self.val

    def value(self, metric: str | Metric) -> float | None:
        """A metric of this epoch by its name (``"val.top1"``)."""
        split, _, key = Metric(metric).value.partition(".")
        return self.split(split).get(key)

    def metrics(self) -> dict[str, float | None]:
        """Every per-epoch metric by name: what the manifest and progress's ``latest`` record."""
        return {m.value: self.value(m) for m in Metric}


@dataclass
class History(_JsonFile):
    """history.json: the task and every completed epoch, in order."""

    num_classes: int | None
    class_names: list[str]
    dataset_sizes: dict[str, int]
    epochs: list[EpochRecord] = field(default_factory=list)
    accuracy_unit: str = "percent"
    format: str = HISTORY_FORMAT

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "History":
        return cls(_opt_int(obj.get("num_classes")), [str(c) for c in obj.get("class_names") or []],
                   {str(k): _int(v) for k, v in (obj.get("dataset_sizes") or {}).items()},
                   [EpochRecord.from_json(e) for e in obj["epochs"]],
                   str(obj.get("accuracy_unit", "percent")), str(obj.get("format", HISTORY_FORMAT)))

    def to_json(self) -> JsonObject:
        return {"format": self.format, "accuracy_unit": self.accuracy_unit, "num_classes": self.num_classes,
                "class_names": list(self.class_names), "dataset_sizes": dict(self.dataset_sizes),
                "epochs": [e.to_json() for e in self.epochs]}

    def write(self, path: Path) -> None:
        write_history(path, self.to_json())

    @property
    def last(self) -> EpochRecord | None:
        return self.epochs[-1] if self.epochs else None


def write_history(path: Path, history: Mapping[str, Any] | History) -> None:
    """history.json, atomically (strict JSON: a NaN that was not sanitized raises)."""
    _write_json(path, history.to_json() if isinstance(history, History) else dict(history))


# ----------------------------------------------------------------------------- manifest.json


@dataclass
class CheckpointEntry:
    """One name in checkpoints/: an epoch file, a step file (mid-epoch), ``last.pt`` or
    ``best.pt`` (the aliases carry the entry of the epoch whose bytes they name). ``epoch`` is
    the number of completed epochs; a step file also has ``batch``, the micro-batches done of
    the epoch after it."""

    name: str
    epoch: int
    step: int
    size: int
    sha256: str
    metrics: dict[str, float | None]
    created_at: float | None  # the trainer always records it; a hand-made manifest may not
    batch: int | None = None  # step files only

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "CheckpointEntry":
        return cls(str(obj["name"]), _int(obj["epoch"]), _int(obj["step"]), _int(obj["size"]), str(obj["sha256"]),
                   _metrics(obj["metrics"]), _opt_float(obj.get("created_at")), _opt_int(obj.get("batch")))

    def to_json(self) -> JsonObject:
        out = {"name": self.name, "epoch": self.epoch, "step": self.step, "size": self.size, "sha256": self.sha256,
               "metrics": dict(self.metrics), "created_at": self.created_at}
        if self.created_at is None:
            del out["created_at"]
        if self.batch is not None:
            out["batch"] = self.batch
        return out

    to_dict = to_json  # the name checkpoints.py used

    def value(self, metric: str) -> float | None:
        """The recorded metric, None when missing or NaN (never a best)."""
        value = self.metrics.get(metric)
        return None if value is None or value != value else value

    @property
    def kind(self) -> str:
        """``epoch``, ``step`` (mid-epoch), ``last`` or ``best``."""
        if is_epoch_file(self.name):
            return "epoch"
        return "step" if is_step_file(self.name) else self.name.removesuffix(".pt")


@dataclass(frozen=True)
class Best:
    """The manifest's ``best``: the best recorded epoch by ``metric``."""

    metric: str
    value: float
    epoch: int

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Best":
        return cls(str(obj["metric"]), _num(obj["value"]), _int(obj["epoch"]))

    def to_json(self) -> JsonObject:
        return {"metric": self.metric, "value": self.value, "epoch": self.epoch}


@dataclass
class Manifest(_JsonFile):
    """checkpoints/manifest.json: each name's digest, size, epoch, step and metrics, and the
    best epoch. Entries are written ordered by (step, name)."""

    best_metric: str
    best: Best | None = None
    checkpoints: list[CheckpointEntry] = field(default_factory=list)
    format: str = MANIFEST_FORMAT

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Manifest":
        best = obj.get("best")
        return cls(str(obj.get("best_metric") or ""), Best.from_json(best) if best is not None else None,
                   [CheckpointEntry.from_json(e) for e in obj.get("checkpoints") or []],
                   str(obj.get("format", MANIFEST_FORMAT)))

    def to_json(self) -> JsonObject:
        return {"format": self.format, "best_metric": self.best_metric,
                "best": self.best.to_json() if self.best is not None else None,
                "checkpoints": [e.to_json() for e in self.checkpoints]}

    def write(self, path: Path) -> None:
        _write_json(path, self.to_json())

    def entries(self) -> dict[str, CheckpointEntry]:
        return {e.name: e for e in self.checkpoints}

    def entry(self, name: str) -> CheckpointEntry | None:
        return next((e for e in self.checkpoints if e.name == name), None)

    def sha256_of(self, name: str) -> str | None:
        entry = self.entry(name)
        return entry.sha256 if entry is not None else None

    def resume_point(self) -> CheckpointEntry | None:
        """The checkpoint a resume starts from when it verifies: the newest epoch or step file.
        A step file is only kept while it is newer than every epoch file, so at the same
        optimizer step (a stop in the middle of an epoch's first accumulation window) it wins."""
        files = [e for e in self.checkpoints if e.kind in ("epoch", "step")]
        return max(files, key=lambda e: (e.step, e.kind == "step", e.batch or 0), default=None)


# ----------------------------------------------------------------------------- steps.jsonl


@dataclass
class StepRecord:
    """One line of steps.jsonl: running sums from the start of ``(epoch, split)``; the
    ``final`` record of an epoch reproduces its history entry exactly."""

    split: str
    epoch: int
    batch: int
    step: int
    loss_sum: float | None
    correct1: int
    correct5: int
    samples: int
    lr: float | None
    throughput: float | None
    time: float
    final: bool
    nonfinite: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "StepRecord":
        return cls(str(obj["split"]), _int(obj["epoch"]), _int(obj["batch"]), _int(obj["step"]),
                   _opt_float(obj["loss_sum"]), _int(obj["correct1"]), _int(obj["correct5"]), _int(obj["samples"]),
                   _opt_float(obj.get("lr")), _opt_float(obj.get("throughput")), _num(obj["time"]), bool(obj["final"]),
                   _flags(obj.get("nonfinite") or {}))

    def to_json(self) -> JsonObject:
        out = dataclasses.asdict(self)
        if not out["nonfinite"]:
            del out["nonfinite"]
        return out

    @property
    def loss(self) -> float | None:
        return None if self.loss_sum is None or not self.samples else self.loss_sum / self.samples


def append_step(path: Path, record: StepRecord | Mapping[str, Any]) -> None:
    """One line of steps.jsonl, flushed. Non-finite numbers become null plus ``nonfinite``."""
    obj = record.to_json() if isinstance(record, StepRecord) else dict(record)
    flags: dict[str, str] = {}
    clean = sanitize(obj, flags)
    if flags:
        clean["nonfinite"] = {**clean.get("nonfinite", {}), **flags}
    with naming(path):
        append_line(path, json.dumps(clean, allow_nan=False))


def iter_step_lines(path: Path) -> Iterator[tuple[str, JsonObject | None]]:
    """Each line of steps.jsonl with its parsed object (None when it does not parse: the
    incomplete last line of a file being written, or a line cut short by a crash)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    for line in text.splitlines():
        if line.strip():
            yield line, _parse_line(line)


def _parse_line(line: str) -> JsonObject | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def read_steps(path: Path) -> list[StepRecord] | None:
    """Every record of steps.jsonl; None before the file exists. An incomplete last line is
    ignored (the writer appends while we read); a bad line elsewhere is corruption. For
    millions of lines, common.analysis.steps_reader reads numpy columns instead."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()  # still being written: not a record yet
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        obj = _parse_line(line)
        if obj is None:
            raise RunFileCorrupt(path, f"line {number} is not a JSON object")
        with _parsing(path):
            out.append(StepRecord.from_json(obj))
    return out


# ----------------------------------------------------------------------------- export/model.json

EXPORT_FORMAT = "teacher-export/1"


@dataclass(frozen=True)
class ExportSource:
    """Where an export came from, by name only (an export is shipped elsewhere)."""

    checkpoint: str
    run_name: str | None
    run_dir: str | None
    job_id: str | None
    sha256: str
    verified_against_manifest: bool

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "ExportSource":
        return cls(str(obj["checkpoint"]), obj.get("run_name"), obj.get("run_dir"), obj.get("job_id"),
                   str(obj["sha256"]), bool(obj["verified_against_manifest"]))

    def to_json(self) -> JsonObject:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ExportMeta(_JsonFile):
    """export/model.json (docs/checkpoints.md): what it takes to run ``model.pt`` elsewhere.
    ``preprocessing`` is open (the evaluation transform, step by step, as data)."""

    sha256: str
    size: int
    arch: str
    num_classes: int
    class_names: list[str]
    build: str
    image_size: int
    preprocessing: JsonObject
    source: ExportSource
    epoch: int
    step: int
    metrics: dict[str, float | None]
    best_metric: str | None
    torch_version: str
    torchvision_version: str
    exported_at: str
    model_file: str = EXPORT_MODEL
    format: str = EXPORT_FORMAT

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "ExportMeta":
        return cls(str(obj["sha256"]), _int(obj["size"]), str(obj["arch"]), _int(obj["num_classes"]),
                   [str(c) for c in obj["class_names"]], str(obj["build"]), _int(obj["image_size"]),
                   dict(obj["preprocessing"]), ExportSource.from_json(obj["source"]), _int(obj["epoch"]),
                   _int(obj["step"]), _metrics(obj["metrics"]), obj.get("best_metric"), str(obj["torch_version"]),
                   str(obj["torchvision_version"]), str(obj["exported_at"]), str(obj["model_file"]),
                   str(obj["format"]))

    def to_json(self) -> JsonObject:
        # The documented key order: the file's own facts first, the environment last.
        return {"format": self.format, "model_file": self.model_file, "sha256": self.sha256, "size": self.size,
                "arch": self.arch, "num_classes": self.num_classes, "class_names": list(self.class_names),
                "build": self.build, "image_size": self.image_size, "preprocessing": self.preprocessing,
                "source": self.source.to_json(), "epoch": self.epoch, "step": self.step,
                "metrics": dict(self.metrics), "best_metric": self.best_metric, "torch_version": self.torch_version,
                "torchvision_version": self.torchvision_version, "exported_at": self.exported_at}

    def write(self, path: Path) -> None:
        _write_json(path, self.to_json())


# ----------------------------------------------------------------------------- progress.json


class RunStatus(str, Enum):
    """progress.json ``status``: how far the trainer got (not the job's status, which the
    job store owns)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


class Phase(str, Enum):
    TRAIN = "train"
    VAL = "val"
    EPOCH_END = "epoch_end"
    DONE = "done"


@dataclass(frozen=True)
class Integrity:
    """The live metrics-integrity verdict after an epoch (common.analysis.live)."""

    verdict: str
    failed: list[str]
    warnings: list[str]

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Integrity":
        return cls(str(obj["verdict"]), [str(x) for x in obj.get("failed") or []],
                   [str(x) for x in obj.get("warnings") or []])

    def to_json(self) -> JsonObject:
        return {"verdict": self.verdict, "failed": list(self.failed), "warnings": list(self.warnings)}


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed attempt started: after ``epoch`` completed epochs and ``step`` optimizer
    steps, ``batch`` micro-batches into the next epoch (0 at an epoch boundary), loaded from the
    checkpoint ``checkpoint`` (written at ``created_at``, Unix time)."""

    epoch: int
    step: int
    batch: int
    checkpoint: str
    created_at: float | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "ResumePoint":
        return cls(_int(obj["epoch"]), _int(obj["step"]), _int(obj.get("batch", 0)), str(obj["checkpoint"]),
                   _opt_float(obj.get("created_at")))

    def to_json(self) -> JsonObject:
        return {"epoch": self.epoch, "step": self.step, "batch": self.batch, "checkpoint": self.checkpoint,
                "created_at": self.created_at}


# Keys every progress write of the trainer carries (null when unknown); the others only when set.
_PROGRESS_ALWAYS = ("status", "phase", "epoch", "epochs", "batch", "batches", "step", "total_steps", "percent",
                    "throughput", "eta_s", "latest", "integrity", "updated_at")


@dataclass
class Progress(_JsonFile):
    """progress.json: live progress for pollers, rewritten at every log interval. A run that
    failed before its first write has only ``status`` and ``error``; keys this version does
    not know are kept in ``extra`` and written back."""

    status: RunStatus
    phase: Phase | None = None
    epoch: int | None = None
    epochs: int | None = None
    batch: int | None = None
    batches: int | None = None
    step: int | None = None
    total_steps: int | None = None
    percent: float | None = None
    throughput: float | None = None
    eta_s: float | None = None
    latest: dict[str, float | None] | None = None
    best: Best | None = None  # the final write's; before integrity, where the file always had it
    integrity: Integrity | None = None
    updated_at: float | None = None
    error: str | None = None
    nonfinite: dict[str, str] | None = None
    # Set by a resumed attempt in every write (absent for a run that started afresh).
    resumed_from: ResumePoint | None = None
    extra: JsonObject = field(default_factory=dict)
    # The keys the file had (from_json), so a record read and written back has the same keys.
    present: frozenset[str] = field(default=frozenset(_PROGRESS_ALWAYS), repr=False, compare=False)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Progress":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "present"}
        integrity, best = obj.get("integrity"), obj.get("best")
        return cls(
            status=RunStatus(obj["status"]), phase=Phase(obj["phase"]) if obj.get("phase") is not None else None,
            epoch=_opt_int(obj.get("epoch")), epochs=_opt_int(obj.get("epochs")),
            batch=_opt_int(obj.get("batch")), batches=_opt_int(obj.get("batches")),
            step=_opt_int(obj.get("step")), total_steps=_opt_int(obj.get("total_steps")),
            percent=_opt_float(obj.get("percent")), throughput=_opt_float(obj.get("throughput")),
            eta_s=_opt_float(obj.get("eta_s")),
            latest=_metrics(obj["latest"]) if obj.get("latest") is not None else None,
            integrity=Integrity.from_json(integrity) if integrity is not None else None,
            updated_at=_opt_float(obj.get("updated_at")),
            error=str(obj["error"]) if obj.get("error") is not None else None,
            best=Best.from_json(best) if best is not None else None,
            nonfinite=_flags(obj["nonfinite"]) if obj.get("nonfinite") is not None else None,
            resumed_from=ResumePoint.from_json(obj["resumed_from"]) if obj.get("resumed_from") is not None else None,
            extra={k: v for k, v in obj.items() if k not in known},
            present=frozenset(k for k in obj if k in known),
        )

    def to_json(self) -> JsonObject:
        out: JsonObject = {}
        for f in dataclasses.fields(self):
            if f.name in ("extra", "present"):
                continue
            value = getattr(self, f.name)
            if value is None and f.name not in self.present:
                continue
            if isinstance(value, (Integrity, Best, ResumePoint)):
                value = value.to_json()
            out[f.name] = value.value if isinstance(value, Enum) else value
        return {**out, **self.extra}

    @property
    def finished(self) -> bool:
        return self.status is not RunStatus.RUNNING


def write_progress(path: Path, progress: Progress | Mapping[str, Any], *, now: float) -> None:
    """progress.json, atomically, stamped ``updated_at = now``; non-finite numbers become null
    and are named in ``nonfinite``."""
    obj = progress.to_json() if isinstance(progress, Progress) else dict(progress)
    obj.pop("nonfinite", None)  # recomputed from this write's values
    flags: dict[str, str] = {}
    clean = sanitize({**obj, "updated_at": now}, flags)
    if flags:
        clean["nonfinite"] = flags
    _write_json(path, clean)


__all__ = [
    "CONFIG", "HISTORY", "STEPS", "PROGRESS", "LOG", "TENSORBOARD", "CHECKPOINTS", "MANIFEST", "LAST", "BEST",
    "ALIASES", "EXPORT", "EXPORT_MODEL", "EXPORT_META", "RESERVE", "LOCK", "ALIVE", "JOB_CONFIG", "JOB_LOG", "JOB_RUN",
    "HISTORY_FORMAT", "MANIFEST_FORMAT", "JsonObject", "epoch_file", "epoch_of_file", "is_epoch_file",
    "step_file", "step_of_file", "is_step_file", "ResumePoint",
    "is_job_id", "RunPaths", "JobPaths", "InvalidJobId", "SPLITS", "SPLIT_METRICS", "Metric", "metric_name",
    "tb_tag", "RunFileCorrupt", "read_object", "finite_or_flag", "sanitize", "naming", "RunConfig",
    "read_config", "write_config", "SplitMetrics", "EpochRecord", "History", "write_history", "CheckpointEntry",
    "Best", "Manifest", "StepRecord", "append_step", "iter_step_lines", "read_steps", "RunStatus", "Phase",
    "Integrity", "Progress", "write_progress", "EXPORT_FORMAT", "ExportSource", "ExportMeta",
]
