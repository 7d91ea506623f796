"""Turn inputs (run directories, history JSON, CSV, TensorBoard, console logs) into sources.

:func:`load_inputs` is the entry point for the CLI; :func:`read_run_dir` for the live check.
Each reader returns a :class:`Source`; nothing here judges the numbers (that is checks.py).
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import yaml

from common.analysis.foreign import (
    is_hf_state,
    looks_like_python_repr,
    parse_json_lines,
    read_hf_log_history,
    read_json_lines,
    read_python_repr,
)
from common.analysis.hints import Hints, read_sidecar, sidecar_hints
from common.analysis.log_reader import NOT_RECOGNISED, read_console_log
from common.analysis.series import (
    AnalysisInputError,
    RunData,
    Source,
    StepSeries,
    map_metric_name,
    normalise_accuracy_units,
    override_accuracy_unit,
    parse_float,
    series_from_pairs,
    shift_zero_based_epochs,
)
from common.analysis.steps_reader import read_steps_jsonl
from common import rundir
from common.rundir import RunPaths

# What makes a directory one of our run directories (docs/run-directory.md).
RUN_DIR_FILES = (rundir.HISTORY, rundir.STEPS, rundir.LOG, rundir.CONFIG, rundir.TENSORBOARD)
FOREIGN_FILES = ("summary.csv", "metrics.csv", "results.csv", "history.csv", "*history*.json", "trainer_state.json",
                 "log.txt", "*.log.json")
# Lightning writes one version_N folder per fit(): each is its own session (never cross-checked).
SESSION_DIRS = ("version_*", "lightning_logs/version_*")
HINT_SUFFIXES = (".yaml", ".yml")
# Keys with a fixed meaning that the split/metric vocabulary does not cover.
_SPECIAL_KEYS = {"step": "step", "global_step": "step", "epoch_time_s": "epoch_time", "epoch_time": "epoch_time"}
_EPOCH_KEYS = {"epoch", "epochs"}
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
# fastai's CSVLogger writes "#na#" for a value it does not have (no validation that epoch).
FASTAI_NA = "#na#"


def load_inputs(paths: Sequence[Path], num_classes: int | None = None,
                patterns: Sequence[str] | None = None, hints: Hints | None = None) -> RunData:
    """Read every path into one :class:`RunData` (a run directory yields several sources).
    ``hints`` are the user's (they win); sidecar files next to the inputs fill in the rest; a
    ``.yaml`` input is read as a sidecar, not as metrics."""
    if not paths:
        raise AnalysisInputError("no input paths given")
    given = hints or Hints()
    if num_classes is not None and given.num_classes is None:
        given.num_classes = num_classes
        given.origin["num_classes"] = "given"
    run = RunData()
    found = Hints()
    folders: list[Path] = []
    for path in paths:
        if path.is_file() and path.suffix.lower() in HINT_SUFFIXES and not is_run_dir(path.parent):
            found.fill_from(read_sidecar(path))
            continue
        folder = path if path.is_dir() else path.parent
        if folder not in folders:
            folders.append(folder)
        if path.is_dir() and is_run_dir(path):
            sub = read_run_dir(path, patterns=patterns)
            run.sources.extend(sub.sources)
            absorb_task_info(run, sub)
        elif path.is_dir():
            run.sources.extend(read_foreign_dir(path, patterns))
        else:
            run.sources.append(read_path(path, patterns))
    for folder in folders:
        found.fill_from(sidecar_hints(folder))
    if not any(s.series or s.steps for s in run.sources):
        raise AnalysisInputError(f"no metrics found in {', '.join(map(str, paths))}")
    disambiguate_names(run.sources)
    apply_hints(run, given, found)
    run.merge_task_info()
    return run


def apply_hints(run: RunData, given: Hints, found: Hints) -> None:
    """The user's hints, then the sidecars'; a class count from either beats the sources'."""
    hints = Hints()
    hints.fill_from(given)
    hints.fill_from(found)
    if run.num_classes is not None and hints.num_classes is None:
        hints.num_classes = run.num_classes
        hints.origin["num_classes"] = "run config"
    if hints.num_classes is not None:
        run.num_classes = hints.num_classes
    if hints.accuracy_unit:
        for source in run.sources:
            if source.accuracy_unit is not None:
                override_accuracy_unit(source, hints.accuracy_unit)
    run.hints = hints


def read_foreign_dir(path: Path, patterns: Sequence[str] | None = None) -> list[Source]:
    """Another tool's output folder: TensorBoard events below it, the metric files other
    trainers leave at its top (timm's summary.csv, Lightning's metrics.csv, ultralytics'
    results.csv, history JSON, trainer_state.json, DeiT's log.txt), and Lightning's
    ``version_N/metrics.csv`` sessions."""
    from common.analysis.tb_reader import find_event_files, read_tensorboard

    sources = []
    for name in FOREIGN_FILES:
        for file in sorted(path.glob(name)):
            sources.append(read_path(file, patterns))
    for pattern in SESSION_DIRS:
        for folder in sorted(path.glob(pattern), key=_version_order):
            file = folder / "metrics.csv"
            if file.is_file():
                source = read_path(file, patterns)
                source.session = folder.name
                rename_source(source, f"{folder.name}/{file.name}")
                sources.append(source)
    if find_event_files(path):
        sources.append(read_tensorboard(path))
    if not sources:
        raise AnalysisInputError(
            f"{path}: a directory that is neither a run directory ({', '.join(RUN_DIR_FILES)}) nor holds "
            f"TensorBoard event files, {', '.join(FOREIGN_FILES)} or version_N/metrics.csv")
    return sources


def _version_order(folder: Path) -> tuple[int, str]:
    tail = folder.name.rsplit("_", 1)[-1]
    return (int(tail) if tail.isdigit() else 1 << 30, folder.name)


def rename_source(source: Source, new: str) -> None:
    for series in [*source.series.values(), *source.steps.values()]:
        series.source = new
    source.name = new


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
    """Read one file or directory. The format is decided by the content, not the name (a
    DeiT ``log.txt`` is JSON lines, an ``output.log`` may be a CSV): only TensorBoard event
    files are recognised by name or by their binary record header."""
    if not path.exists():
        raise AnalysisInputError(f"{path}: no such file or directory")
    if path.is_dir():
        from common.analysis.tb_reader import find_event_files, read_tensorboard

        if find_event_files(path):
            return read_tensorboard(path)
        raise AnalysisInputError(f"{path}: a directory without TensorBoard event files")
    try:
        with path.open("rb") as handle:
            head = handle.read(HEAD_BYTES)
    except OSError as exc:
        raise AnalysisInputError(f"{path}: cannot read ({exc.strerror})") from None
    if "tfevents" in path.name.lower() or _is_tfrecord(path, head):
        from common.analysis.tb_reader import read_tensorboard

        return read_tensorboard(path)
    if b"\x00" in head:
        raise AnalysisInputError(f"{path}: unknown file format (binary, and not a TensorBoard event file); "
                                 + NOT_RECOGNISED.split(". ", 1)[1])
    if surely_console_log(path, head):
        return read_console_log(path, patterns)  # streamed: a big log's text is never held whole
    text = path.read_bytes().decode("utf-8", errors="replace")
    source = read_text(path, text, patterns)
    return source


HEAD_BYTES = 65536


def surely_console_log(path: Path, head: bytes) -> bool:
    """Whether :func:`read_text` of the whole file would surely end in :func:`read_console_log`,
    decided from ``head`` (the file's first bytes) and one streamed pass: so a big console log
    is read line by line instead of whole. False where in doubt (the whole text is read then);
    a file that fits in the head is read whole anyway (small)."""
    if len(head) < HEAD_BYTES:
        return False
    # Not final: an incomplete sequence at the end is held back, so this is an exact prefix of the text.
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(head)
    stripped = text.lstrip()
    if not stripped:
        return False
    if stripped[0] in ("{", "[") and not _json_ruled_out(stripped):
        return False
    if len(text.splitlines()) <= 3 or looks_like_csv(text):
        return False  # looks_like_csv reads the first 3 lines: complete here only if a 4th begins
    return not _python_repr_anywhere(path)


def _json_ruled_out(stripped: str) -> bool:
    """read_json_text gives None (console log next) when the first line fails as JSON; a failure
    before the line's end also fails the whole text (``json.loads(text)``, tried first), as no
    JSON token spans a newline (strings may not hold one). A failure at the line's end may be
    the text going on on the next line: not ruled out."""
    end = stripped.find("\n")
    if end < 0:
        return False
    first = stripped[:end]
    try:
        json.loads(first)
    except json.JSONDecodeError as exc:
        return exc.pos < len(first)
    except (ValueError, RecursionError):
        return False
    return False  # a JSON first line: JSON lines, maybe


def _python_repr_anywhere(path: Path) -> bool:
    """looks_like_python_repr of the whole text, a chunk (ending at a newline) at a time: its
    pattern never spans a newline."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with path.open("rb") as handle:
        while True:
            block = handle.read(1 << 20)
            if not block:
                return False
            if looks_like_python_repr(decoder.decode(block + handle.readline())):
                return True


def _is_tfrecord(path: Path, head: bytes) -> bool:
    if b"\x00" not in head[:12]:
        return False  # a record length below 2**56 always has a zero byte: text never does
    from common.analysis.formats import starts_with_tfrecord

    return starts_with_tfrecord(head, path.stat().st_size)


def read_text(path: Path, text: str, patterns: Sequence[str] | None) -> Source:
    """Try the structured formats the content can be, then console-log patterns."""
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        source = read_json_text(path, text)
        if source is not None:
            return source
    if looks_like_python_repr(text):
        try:
            return read_python_repr(text, path.name, str(path))
        except AnalysisInputError:
            pass
    if looks_like_csv(text):
        return read_csv(path)
    source = read_console_log(path, patterns)
    return source


def read_json_text(path: Path, text: str) -> Source | None:
    try:
        # NaN/Infinity literals are accepted: other tools write them, and they are findings.
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = _NOT_JSON
    if data is not _NOT_JSON:
        if is_hf_state(data):
            source = read_hf_log_history(data["log_history"], path.name, str(path), "hf_trainer_state")
            _hf_task_fields(source, data)
            return source
        if isinstance(data, list) and data and all(isinstance(r, dict) for r in data) and \
                any("step" in r and ("loss" in r or any(str(k).startswith("eval_") for k in r)) for r in data):
            return read_hf_log_history(data, path.name, str(path), "hf_log_history")
        source = read_history_object(data, path.name, str(path))
        source.format = "history_json"
        return source
    first = text.lstrip().split("\n", 1)[0]
    try:
        head = json.loads(first)
    except (ValueError, RecursionError):
        return None
    if isinstance(head, dict) and ({"loss_sum", "correct1"} & set(head) or {"split", "final"} <= set(head)):
        source = read_steps_jsonl(path)
        source.format = "teacher_steps_jsonl"
        return source
    body = text if text.endswith("\n") else text.rsplit("\n", 1)[0]  # a line being written is ignored
    records = parse_json_lines(body, str(path))
    if records is None:
        return None
    return read_json_lines(records, path.name, str(path))


_NOT_JSON = object()


def _hf_task_fields(source: Source, data: dict) -> None:
    if isinstance(data.get("train_batch_size"), int):
        source.batch_size = data["train_batch_size"]


def looks_like_csv(text: str) -> bool:
    lines = [line for line in text.splitlines()[:3] if line.strip()]
    if len(lines) < 2 or "," not in lines[0]:
        return False
    try:
        rows = list(csv.reader(io.StringIO("\n".join(lines))))
    except csv.Error:
        return False
    header = [c.strip() for c in rows[0]]
    if len(header) < 2 or any(_is_number(c) or ":" in c for c in header if c):
        return False  # "epoch 3: loss 0.5, acc 0.9" is a console line, not a header
    data = [c.strip() for c in rows[1]]
    numeric = sum(1 for c in data if not c or c == FASTAI_NA or _is_number(c))
    # fastai v1's CSVLogger writes a shorter row, ending in #na#, for an epoch without
    # validation (each learn.lr_find() call leaves one).
    short_fastai = len(data) < len(header) and FASTAI_NA in data
    return (len(data) == len(header) or short_fastai) and numeric * 2 >= len(data)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- run directory ---------------------------------------------------------------------------


def read_run_dir(path: Path, *, patterns: Sequence[str] | None = None, include_tensorboard: bool = True) -> RunData:
    """All sources of one of our run directories; files not written yet are simply absent."""
    run = RunData()
    files = RunPaths(path)
    if files.config.is_file():
        run.num_classes, run.batch_size = read_config_task(files.config)
    if files.history.is_file():
        run.sources.append(read_history_json(files.history))
        run.sources[-1].format = "teacher_history"
    if files.steps.is_file():
        run.sources.append(read_steps_jsonl(files.steps))
        run.sources[-1].format = "teacher_steps_jsonl"
    if files.log.is_file():
        source = read_console_log(files.log, patterns, require_metrics=False)
        if source.series:
            source.format = "teacher_log"
            run.sources.append(source)
    tb = files.tensorboard
    if include_tensorboard and tb.is_dir():
        from common.analysis.tb_reader import find_event_files, read_tensorboard

        if find_event_files(tb):
            source = read_tensorboard(tb, accuracy_unit="percent")  # docs/run-directory.md
            source.name = "tb"
            source.format = "teacher_tb"
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
    """One row per epoch (Keras CSVLogger, fastai history.csv, ultralytics results.csv, timm
    summary.csv) or Lightning's sparse metrics.csv (step rows, val rows, empty cells)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            table = list(csv.reader(handle))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise AnalysisInputError(f"{path}: not a readable CSV ({exc})") from None
    if len(table) < 2 or not table[0]:
        raise AnalysisInputError(f"{path}: empty CSV")
    header = [h.strip() for h in table[0]]  # ultralytics pads its column names
    source = Source(name=path.name, kind="csv", path=str(path), format=csv_format(header))
    rows = csv_sessions(source, header, table[1:])
    epoch_col = next((h for h in header if h.lower() == "epoch"), None)
    step_col = next((h for h in header if h.lower() in ("step", "global_step")), None)
    if epoch_col is not None:
        blank = [r for r in rows if not r.get(epoch_col)]
        if blank:
            source.notes.append(f"{len(blank)} row(s) without an epoch (e.g. learning-rate monitor rows): ignored")
            rows = [r for r in rows if r.get(epoch_col)]
    epochs = [csv_epoch(row, epoch_col, i, path) for i, row in enumerate(rows)]
    epochs = renumber_sessions(source, epochs, rows, header, epoch_col)
    default_split = "val" if source.format == "fastai_csv" else None
    for col in sorted(header, key=_column_order):
        if col in (epoch_col, step_col) or not col:
            continue
        add_csv_column(source, col, rows, epochs, step_col, path, default_split)
    if not source.series and not source.steps:
        raise AnalysisInputError(f"{path}: no metric column recognised (columns: {', '.join(map(str, header))})")
    normalise_accuracy_units(source)
    shift_zero_based_epochs(source)
    return source


def csv_sessions(source: Source, header: list[str], lines: list[list[str]]) -> list[dict]:
    """The data rows, each tagged with its session (``"_session"``: 0, 1, ... at each repeated
    header). Keras CSVLogger(append=True) before keras PR #4426, and fastai's CSVLogger(append=True),
    write the header again for every fit() appended to the file: a session boundary, not data."""
    rows: list[dict] = []
    session, repeated = 0, 0
    for number, line in enumerate(lines, start=2):  # the file's line numbers, for the report
        cells = [c.strip() for c in line]
        if not any(cells):
            continue
        if cells == header:
            session, repeated = session + 1, repeated + 1
            continue
        row = {key: ("" if cell == FASTAI_NA else cell) for key, cell in zip(header, cells)}
        row["_session"], row["_line"] = session, number
        rows.append(row)
    if repeated:
        source.notes.append(f"the header is repeated {repeated} time(s) inside the file (sessions appended "
                            "to one log): those lines are skipped")
    if source.format == "fastai_csv":
        rows = drop_unvalidated_sessions(source, header, rows)
    return rows


def drop_unvalidated_sessions(source: Source, header: list[str], rows: list[dict]) -> list[dict]:
    """A fastai session none of whose rows has a valid_loss is not training to judge: each
    ``learn.lr_find()`` leaves one such row (the loss at the learning rate where it stopped, often
    diverging). Dropped, with a note, unless no session has validation at all."""
    valid_col = next((h for h in header if h.lower() == "valid_loss"), None)
    if valid_col is None:
        return rows
    validated = {r["_session"] for r in rows if r.get(valid_col)}
    if not validated:
        return rows
    dropped = sorted({r["_session"] for r in rows} - validated)
    if dropped:
        count = sum(1 for r in rows if r["_session"] in dropped)
        source.notes.append(f"{len(dropped)} session(s) without validation ({count} row(s) with valid_loss #na#, "
                            "as learn.lr_find() leaves in fastai's CSVLogger file): ignored")
    return [r for r in rows if r["_session"] in validated]


def csv_epoch(row: dict, epoch_col: str | None, index: int, path: Path) -> int:
    if epoch_col is None:
        return index + 1
    try:
        return int(float(row[epoch_col]))
    except (TypeError, ValueError):
        raise AnalysisInputError(f"{path}: row {index + 2}: epoch {row[epoch_col]!r} is not a number") from None


def csv_format(header: list[str]) -> str:
    lower = {h.lower() for h in header}
    if any(h.startswith(("metrics/", "train/", "val/")) for h in lower):
        return "ultralytics_csv"
    if "valid_loss" in lower and ("time" in lower or "train_loss" in lower):
        return "fastai_csv"  # fastai v1's CSVLogger wrote no time column
    if "step" in lower and "epoch" in lower:
        return "lightning_csv"
    if "eval_loss" in lower or "eval_top1" in lower:
        return "timm_summary_csv"
    return "keras_csv" if "epoch" in lower else "csv"


def _column_order(col: str) -> tuple[int, str]:
    """Validation columns claim ``val.*`` before test columns do (Lightning logs both)."""
    tokens = set(col.lower().replace("/", "_").split("_"))
    return (1 if "test" in tokens else 0, "")


def renumber_sessions(source: Source, epochs: list[int], rows: list[dict], header: list[str],
                      epoch_col: str | None) -> list[int]:
    """Keras ``CSVLogger(append=True)`` appends each ``fit()`` with its epoch counter restarted.
    A restart with different values is a new session: its epochs continue the previous ones
    (``source.restarts`` says where, for the report). Rows that repeat earlier rows exactly keep
    their numbers, so that an epoch written twice stays visible."""
    if epoch_col is None or len(epochs) < 2:
        return epochs
    out = list(epochs)
    offset = 0
    seen: dict[int, dict] = {}
    previous = None
    for i, epoch in enumerate(epochs):
        if previous is not None and (epoch + offset < previous or _counter_restarted(source, rows, epochs, i, offset, previous)):
            same = seen.get(epoch + offset)
            if same is not None and _cells(same) == _cells(rows[i]):
                out[i] = epoch + offset  # written twice: left for epochs_duplicated
                previous = out[i]
                continue
            offset = previous + 1 - epoch
            source.restarts.append({"row": rows[i].get("_line", i + 2), "epoch": epoch, "continues_as": epoch + offset})
        out[i] = epoch + offset
        seen[out[i]] = rows[i]
        previous = out[i]
    if source.restarts:
        source.notes.append(f"the epoch counter restarts {len(source.restarts)} time(s) (appended fit() sessions): "
                            "later sessions are numbered on from the earlier ones")
    return out


def _counter_restarted(source: Source, rows: list[dict], epochs: list[int], i: int, offset: int,
                       previous: int) -> bool:
    """The counter back at the file's first epoch number is a new fit() (Keras and fastai count
    every fit() from 0) even where that equals the last epoch seen: one-epoch fit() calls
    appended one after the other (``0, 0, 0``). Only where a row is an epoch (Keras, fastai) or
    a repeated header says a new fit() began: Lightning writes many rows per epoch. A row that
    repeats an earlier one exactly is still a duplicate (the caller checks that first)."""
    new_session = rows[i].get("_session") != rows[i - 1].get("_session")
    one_row_per_epoch = source.format in ("keras_csv", "fastai_csv")
    return (new_session or one_row_per_epoch) and epochs[i] == epochs[0] and epochs[i] + offset == previous


def _cells(row: dict) -> dict:
    """A row's values without its bookkeeping tags: an epoch written twice is the same cells."""
    return {k: v for k, v in row.items() if k not in ("_session", "_line")}


def add_csv_column(source: Source, col: str, rows: list[dict], epochs: list[int], step_col: str | None,
                   path: Path, default_split: str | None = None) -> None:
    name = canonical_key(source, col)
    if name is None:
        return
    mapped = map_metric_name(col)
    if mapped is not None and not mapped[1] and default_split and not name.startswith(("lr", "step")):
        name = map_metric_name(f"{default_split}_{col}")[0]  # fastai computes its metrics on validation
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
