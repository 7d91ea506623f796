"""Turn inputs (run directories, history JSON, CSV, TensorBoard, console logs) into sources.

:func:`load_inputs` is the entry point for the CLI; :func:`read_run_dir` for the live check.
Each reader returns a :class:`Source`; nothing here judges the numbers (that is checks.py).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import yaml

from common.analysis.log_reader import read_console_log
from common.analysis.series import (
    AnalysisInputError,
    RunData,
    Source,
    StepSeries,
    map_metric_name,
    normalise_accuracy_units,
    parse_float,
    series_from_pairs,
    shift_zero_based_epochs,
)
from common.analysis.steps_reader import read_steps_jsonl
from common import rundir
from common.rundir import RunPaths

# What makes a directory one of our run directories (docs/run-directory.md).
RUN_DIR_FILES = (rundir.HISTORY, rundir.STEPS, rundir.LOG, rundir.CONFIG, rundir.TENSORBOARD)
FOREIGN_FILES = ("summary.csv", "metrics.csv", "*history*.json")
# Keys with a fixed meaning that the split/metric vocabulary does not cover.
_SPECIAL_KEYS = {"step": "step", "global_step": "step", "epoch_time_s": "epoch_time", "epoch_time": "epoch_time"}
_EPOCH_KEYS = {"epoch", "epochs"}
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def load_inputs(paths: Sequence[Path], num_classes: int | None = None,
                patterns: Sequence[str] | None = None) -> RunData:
    """Read every path into one :class:`RunData` (a run directory yields several sources)."""
    if not paths:
        raise AnalysisInputError("no input paths given")
    run = RunData(num_classes=num_classes)
    for path in paths:
        if path.is_dir() and is_run_dir(path):
            sub = read_run_dir(path, patterns=patterns)
            run.sources.extend(sub.sources)
            absorb_task_info(run, sub)
        elif path.is_dir():
            run.sources.extend(read_foreign_dir(path, patterns))
        else:
            run.sources.append(read_path(path, patterns))
    if not any(s.series or s.steps for s in run.sources):
        raise AnalysisInputError(f"no metrics found in {', '.join(map(str, paths))}")
    disambiguate_names(run.sources)
    run.merge_task_info()
    return run


def read_foreign_dir(path: Path, patterns: Sequence[str] | None = None) -> list[Source]:
    """Another tool's output folder: TensorBoard events below it, plus the metric files other
    trainers leave at its top (timm's summary.csv, Lightning's metrics.csv, history JSON)."""
    from common.analysis.tb_reader import find_event_files, read_tensorboard

    sources = []
    for name in FOREIGN_FILES:
        for file in sorted(path.glob(name)):
            sources.append(read_path(file, patterns))
    if find_event_files(path):
        sources.append(read_tensorboard(path))
    if not sources:
        raise AnalysisInputError(
            f"{path}: a directory that is neither a run directory ({', '.join(RUN_DIR_FILES)}) nor holds "
            f"TensorBoard event files or {', '.join(FOREIGN_FILES)}")
    return sources


def absorb_task_info(run: RunData, sub: RunData) -> None:
    if run.num_classes is None and sub.num_classes:
        run.num_classes = sub.num_classes
    for split, size in sub.dataset_sizes.items():
        run.dataset_sizes.setdefault(split, size)
    if run.batch_size is None:
        run.batch_size = sub.batch_size


def disambiguate_names(sources: list[Source]) -> None:
    """Two inputs may both be called history.json; prefix the parent folder to tell them apart."""
    seen: dict[str, int] = {}
    for source in sources:
        seen[source.name] = seen.get(source.name, 0) + 1
    for source in sources:
        if seen[source.name] > 1:
            new = f"{Path(source.path).parent.name}/{source.name}"
            for series in source.series.values():
                series.source = new
            for stream in source.steps.values():
                stream.source = new
            source.name = new


def is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in RUN_DIR_FILES)


def read_path(path: Path, patterns: Sequence[str] | None = None) -> Source:
    """Read one file or directory, choosing the reader from its name, then its content."""
    if not path.exists():
        raise AnalysisInputError(f"{path}: no such file or directory")
    if path.is_dir():
        from common.analysis.tb_reader import find_event_files, read_tensorboard

        if find_event_files(path):
            return read_tensorboard(path)
        raise AnalysisInputError(f"{path}: a directory without TensorBoard event files")
    name = path.name.lower()
    if "tfevents" in name:
        from common.analysis.tb_reader import read_tensorboard

        return read_tensorboard(path)
    if name.endswith(".jsonl"):
        return read_steps_jsonl(path)
    if name.endswith(".json"):
        return read_history_json(path)
    if name.endswith(".csv"):
        return read_csv(path)
    if name.endswith((".log", ".txt", ".out", ".err")):
        return read_console_log(path, patterns)
    return read_by_content(path, patterns)


def read_by_content(path: Path, patterns: Sequence[str] | None) -> Source:
    try:
        head = path.read_bytes()[:4096]
    except OSError as exc:
        raise AnalysisInputError(f"{path}: cannot read ({exc.strerror})") from None
    if b"\x00" in head:
        raise AnalysisInputError(f"{path}: unknown file format (binary, and not a TensorBoard event file by name)")
    text = head.decode("utf-8", errors="replace").lstrip()
    if text.startswith(("{", "[")):
        return read_history_json(path)
    return read_console_log(path, patterns)


# --- run directory ---------------------------------------------------------------------------


def read_run_dir(path: Path, *, patterns: Sequence[str] | None = None, include_tensorboard: bool = True) -> RunData:
    """All sources of one of our run directories; files not written yet are simply absent."""
    run = RunData()
    files = RunPaths(path)
    if files.config.is_file():
        run.num_classes, run.batch_size = read_config_task(files.config)
    if files.history.is_file():
        run.sources.append(read_history_json(files.history))
    if files.steps.is_file():
        run.sources.append(read_steps_jsonl(files.steps))
    if files.log.is_file():
        source = read_console_log(files.log, patterns, require_metrics=False)
        if source.series:
            run.sources.append(source)
    tb = files.tensorboard
    if include_tensorboard and tb.is_dir():
        from common.analysis.tb_reader import find_event_files, read_tensorboard

        if find_event_files(tb):
            source = read_tensorboard(tb, accuracy_unit="percent")  # docs/run-directory.md
            source.name = "tb"
            for series in source.series.values():
                series.source = "tb"
            for stream in source.steps.values():
                stream.source = "tb"
            run.sources.append(source)
    run.merge_task_info()
    return run


def read_config_task(path: Path) -> tuple[int | None, int | None]:
    """num_classes (model.num_classes, when set) and batch size from a run's config.yaml."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise AnalysisInputError(f"{path}: not readable YAML ({exc})") from None
    if not isinstance(data, dict):
        return None, None
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    optim = data.get("optim") if isinstance(data.get("optim"), dict) else {}
    num_classes = model.get("num_classes")
    batch = optim.get("batch_size")
    return (int(num_classes) if isinstance(num_classes, int) else None,
            int(batch) if isinstance(batch, int) else None)


# --- history JSON ------------------------------------------------------------------------------


def read_history_json(path: Path) -> Source:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AnalysisInputError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        # NaN/Infinity literals are accepted: other tools write them, and they are findings.
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnalysisInputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return read_history_object(data, path.name, str(path))


def read_history_object(data: Any, name: str, path: str) -> Source:
    source = Source(name=name, kind="history", path=path)
    declared: str | None = None
    if isinstance(data, dict) and isinstance(data.get("epochs"), list):
        read_task_fields(source, data)
        declared = data.get("accuracy_unit") if data.get("accuracy_unit") in ("percent", "fraction") else None
        records = [restore_nonfinite(r) for r in data["epochs"]]
        add_records(source, records)
    elif isinstance(data, dict) and isinstance(data.get("history"), (dict, list)):
        read_task_fields(source, data)
        return merge_into(source, read_history_object(data["history"], name, path))
    elif isinstance(data, dict):
        read_task_fields(source, data)
        add_columns(source, {k: v for k, v in data.items() if isinstance(v, list)})
    elif isinstance(data, list):
        add_records(source, data)
    else:
        raise AnalysisInputError(f"{path}: expected a JSON object or list of per-epoch records")
    if not source.series:
        raise AnalysisInputError(f"{path}: no metric recognised (keys like loss, val_loss, train_top1_acc expected)")
    normalise_accuracy_units(source, declared)
    shift_zero_based_epochs(source)
    return source


def merge_into(outer: Source, inner: Source) -> Source:
    inner.num_classes = inner.num_classes or outer.num_classes
    inner.dataset_sizes = inner.dataset_sizes or outer.dataset_sizes
    return inner


def read_task_fields(source: Source, data: dict) -> None:
    if isinstance(data.get("num_classes"), int):
        source.num_classes = data["num_classes"]
    sizes = data.get("dataset_sizes")
    if isinstance(sizes, dict):
        source.dataset_sizes = {str(k): int(v) for k, v in sizes.items() if isinstance(v, int)}


def restore_nonfinite(record: Any) -> Any:
    """Our history stores non-finite values as null plus ``nonfinite: {"val.loss": "nan"}``."""
    if not isinstance(record, dict) or not isinstance(record.get("nonfinite"), dict):
        return record
    record = json.loads(json.dumps(record))  # a deep copy we may edit
    for dotted, what in record.pop("nonfinite").items():
        node = record
        parts = str(dotted).split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[parts[-1]] = _NONFINITE.get(str(what), math.nan)
    return record


def flatten_record(record: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        full = f"{prefix}_{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten_record(value, full))
        elif not isinstance(value, list):
            out[full] = value
    return out


def canonical_key(source: Source, key: str) -> str | None:
    if key.lower() in _SPECIAL_KEYS:
        return _SPECIAL_KEYS[key.lower()]
    mapped = map_metric_name(key)
    if mapped is None:
        if key not in source.ignored:
            source.ignored.append(key)
        return None
    return mapped[0]


def add_records(source: Source, records: Iterable[Any]) -> None:
    columns: dict[str, list[tuple[int, float]]] = {}
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise AnalysisInputError(f"{source.path}: record {index + 1} is not an object")
        flat = flatten_record(record)
        epoch = epoch_of(flat, index, source.path)
        for key, value in flat.items():
            if key.lower() in _EPOCH_KEYS or canonical_key(source, key) is None:
                continue  # unmapped fields may be anything (names, phases), so are not parsed
            columns.setdefault(key, []).append((epoch, value_of(value, source.path, key)))
    add_pairs(source, columns)


def add_columns(source: Source, data: dict[str, list]) -> None:
    epochs_key = next((k for k in data if k.lower() in _EPOCH_KEYS), None)
    columns: dict[str, list[tuple[int, float]]] = {}
    for key, values in data.items():
        if key == epochs_key or canonical_key(source, key) is None:
            continue
        pairs = []
        for index, value in enumerate(values):
            epoch = int(data[epochs_key][index]) if epochs_key and index < len(data[epochs_key]) else index + 1
            pairs.append((epoch, value_of(value, source.path, key)))
        columns[key] = pairs
    add_pairs(source, columns)


def add_pairs(source: Source, columns: dict[str, list[tuple[int, float]]]) -> None:
    for key, pairs in columns.items():
        name = canonical_key(source, key)
        if name is None or name.startswith("step."):
            continue
        if name in source.series:
            source.notes.append(f"{key}: a second column for {name}; kept {source.series[name].raw_name}")
            continue
        source.add(series_from_pairs(name, pairs, source.name, key))


def epoch_of(flat: dict[str, Any], index: int, path: str) -> int:
    for key in flat:
        if key.lower() in _EPOCH_KEYS and flat[key] is not None:
            try:
                return int(flat[key])
            except (TypeError, ValueError):
                raise AnalysisInputError(f"{path}: record {index + 1} has a non-integer epoch {flat[key]!r}") from None
    return index + 1


def value_of(value: Any, path: str, key: str) -> float:
    try:
        return parse_float(value)
    except AnalysisInputError as exc:
        raise AnalysisInputError(f"{path}: {key}: {exc}") from None


# --- CSV ---------------------------------------------------------------------------------------


def read_csv(path: Path) -> Source:
    """timm's summary.csv, Lightning's metrics.csv, or any CSV with one row per epoch."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise AnalysisInputError(f"{path}: not a readable CSV ({exc})") from None
    if not rows or not rows[0]:
        raise AnalysisInputError(f"{path}: empty CSV")
    source = Source(name=path.name, kind="csv", path=str(path))
    header = list(rows[0].keys())
    epoch_col = next((h for h in header if h and h.strip().lower() == "epoch"), None)
    step_col = next((h for h in header if h and h.strip().lower() in ("step", "global_step")), None)
    epochs = [csv_epoch(row, epoch_col, i, path) for i, row in enumerate(rows)]
    for col in header:
        if col in (epoch_col, step_col) or col is None:
            continue
        add_csv_column(source, col, rows, epochs, step_col, path)
    if not source.series and not source.steps:
        raise AnalysisInputError(f"{path}: no metric column recognised (columns: {', '.join(map(str, header))})")
    normalise_accuracy_units(source)
    shift_zero_based_epochs(source)
    return source


def csv_epoch(row: dict, epoch_col: str | None, index: int, path: Path) -> int:
    if epoch_col is None:
        return index + 1
    try:
        return int(float(row[epoch_col]))
    except (TypeError, ValueError):
        raise AnalysisInputError(f"{path}: row {index + 2}: epoch {row[epoch_col]!r} is not a number") from None


def add_csv_column(source: Source, col: str, rows: list[dict], epochs: list[int], step_col: str | None,
                   path: Path) -> None:
    name = canonical_key(source, col)
    if name is None:
        return
    pairs, steps = [], []
    for index, row in enumerate(rows):
        cell = row.get(col)
        if cell is None or not str(cell).strip():
            continue  # Lightning leaves cells empty in rows logged by other hooks
        pairs.append((epochs[index], value_of(cell, str(path), col)))
        if step_col is not None:
            steps.append(parse_float(row.get(step_col)))
    if not pairs:
        return
    distinct = len({e for e, _ in pairs})
    if name.startswith("step.") or len(pairs) > 1.5 * distinct:
        stream = {"train.loss": "step.train_loss", "lr": "step.lr"}.get(name, name)
        if stream.startswith("step.") and len(steps) == len(pairs):
            source.steps[stream] = StepSeries(stream, np.asarray(steps), np.asarray([v for _, v in pairs]),
                                              source.name, np.asarray([e for e, _ in pairs]))
            source.mapping[col] = stream
        else:
            source.notes.append(f"{col}: several values per epoch; not an epoch metric, ignored")
        return
    if name in source.series:
        source.notes.append(f"{col}: a second column for {name}; kept {source.series[name].raw_name}")
        return
    source.add(series_from_pairs(name, pairs, source.name, col))
