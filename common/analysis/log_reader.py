"""Console-log reader: regex patterns that find epoch summary lines, then ``key=value`` pairs.

A pattern is a regex with optional named groups:

- ``epoch``: the epoch number (lines without it inherit the last epoch seen, e.g. timm's
  ``Test:`` lines that follow ``Train: 3 [...]`` lines);
- ``split``: Train/Val/... (otherwise the split comes from the pattern or from the key names);
- ``rest``: text holding ``key=value`` / ``key: value`` / ``key value`` pairs;
- any other group is a metric named like the group (``(?P<val_loss>\\S+)``).

Lines are split on ``\\r`` too, so progress bars (tqdm, Lightning) yield their last state.
When a (epoch, metric) appears more than once the last line wins: progress bars print running
values, and a resumed run re-prints the epochs it repeats.

A log file is read one line at a time (:func:`read_console_lines`), never whole: a run's console
log can be far larger than what it says, and what the reader keeps per printed line is a few
numbers in arrays (the per-iteration loss, the values printed inside an epoch), not the text.
"""
from __future__ import annotations

import codecs
import math
import re
from array import array
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from common.analysis.series import (
    AnalysisInputError,
    PrintedValues,
    Source,
    StepSeries,
    decimals_resolution,
    map_metric_name,
    normalise_accuracy_units,
    series_from_pairs,
    shift_zero_based_epochs,
)

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)|null|none"
# key, separator, value, optional '%', optional "(running average)" as timm prints it.
_KV = re.compile(
    rf"(?P<kpre>(?:(?:best|train|training|val|valid|validation|test|eval|dev)\s+)*)(?P<key>[A-Za-z][\w@/.\-]*?)\s*(?:=|:|\s)\s*(?P<val>{_NUM})(?P<pct>\s*%)?"
    rf"(?:\s*\(\s*(?P<avg>{_NUM})\s*(?P<avgpct>%)?\s*\))?",
    re.IGNORECASE,
)
_THROUGHPUT = re.compile(r"(?P<val>\d+(?:\.\d+)?)\s*(?:img|images|samples)/s\b", re.IGNORECASE)
_SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                "validation": "val", "eval": "val", "test": "val"}
_RESERVED_GROUPS = {"epoch", "split", "rest"}
# What logging frameworks put before the message: "2026-11-26 01:02:03 INFO ", "[2026-...] ",
# "INFO:root:". Patterns are tried on the line as is, then without this prefix.
_PREFIX = re.compile(
    r"^\s*(?:\[?\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?\]?\s*)?"
    r"(?:\[?(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\]?(?::[\w.]*:)?\s*[:|-]?\s*)?")


@dataclass(frozen=True)
class LogPattern:
    name: str
    regex: re.Pattern[str]
    split: str | None = None
    approximate: bool = False  # values are running averages, not epoch summaries
    prefer_average: bool = False  # take "(avg)" over the instant value (timm)
    zero_based: bool = False  # the tool counts epochs from 0 (timm, Lightning)
    priority: int = 2  # on the same (epoch, metric) a lower priority never replaces a higher one (EMA, test)
    search: bool = False  # the pattern may start anywhere in the line (mmcls after a progress bar)
    summary: bool = False  # an end-of-evaluation line without an epoch: it belongs to the current one (0 if none)
    records: bool = False  # key=value lines without epochs: each record (a repeated key starts one) is a point
    fmt: str = ""  # the format name reports show (docs/analysis.md "Formats")


DEFAULT_PATTERNS: tuple[LogPattern, ...] = (
    # ours and the incident's: "Epoch 3/10 [Train]: loss=1.2345, top1=55.21%, ..."
    LogPattern("teacher", re.compile(
        r"^\s*Epoch\s+(?P<epoch>\d+)(?:\s*/\s*\d+)?\s*\[(?P<split>[A-Za-z]+)\]\s*:?\s*(?P<rest>.*)$"), fmt="teacher_log"),
    # timm: "Train: 3 [ 100/1251 (  8%)]  Loss: 6.123 (6.456)  ...  LR: 1.000e-03"
    LogPattern("timm-train", re.compile(r"^\s*Train:\s*(?P<epoch>\d+)\s*\[\s*(?P<it>\d+)/(?P<iters>\d+)[^\]]*\]\s*(?P<rest>.*)$"),
               split="train", approximate=True, prefer_average=True, zero_based=True, fmt="timm_console"),
    # Swin/ConvNeXt main.py: "Train: [30/300][0/2859]  eta ... lr 0.000872  loss 2.3442 (2.3442)"
    LogPattern("swin-train", re.compile(
        r"^\s*Train:\s*\[(?P<epoch>\d+)/\d+\]\s*\[\s*(?P<it>\d+)/(?P<iters>\d+)\]\s*(?P<rest>.*)$"),
               split="train", approximate=True, prefer_average=True, zero_based=True, fmt="swin_console"),
    # timm: "Test (EMA): [  48/48]  ..." evaluates the EMA weights: never replaces the live model's values
    LogPattern("timm-test-ema", re.compile(r"^\s*Test\s*\(EMA\):\s*\[[^\]]*\]\s*(?P<rest>.*)$"),
               split="val", approximate=True, prefer_average=True, zero_based=True, priority=1, summary=True,
               fmt="timm_console"),
    # timm: "Test: [  48/48]  Time: ...  Loss:  0.8398 (1.1125)  Acc@1: 83.4906 (76.3120) ..."
    LogPattern("timm-test", re.compile(r"^\s*Test:\s*\[[^\]]*\]\s*(?P<rest>.*)$"),
               split="val", approximate=True, prefer_average=True, zero_based=True, summary=True, fmt="timm_console"),
    # pytorch/examples imagenet: "Epoch: [0][ 10/5005]  Time ...  Loss 2.99e+00 (6.24e+00)  Acc@1 100.00 ( 81.82)"
    LogPattern("pt-examples-train", re.compile(
        r"^\s*Epoch:\s*\[(?P<epoch>\d+)\]\s*\[\s*(?P<it>\d+)/(?P<iters>\d+)\]\s*(?P<rest>.*)$"),
               split="train", approximate=True, prefer_average=True, zero_based=True, fmt="pt_examples_console"),
    # pytorch/examples, Swin, DeiT: " * Acc@1 76.130 Acc@5 92.862" closes an evaluation
    LogPattern("pt-examples-summary", re.compile(r"^\s*\*\s*(?P<rest>Acc@1\s.*)$"), split="val", summary=True,
               zero_based=True, fmt="pt_examples_console"),
    # mmcls / mmpretrain 0.x: "Epoch(val) [3][12]  accuracy_top-1: 77.6042, accuracy_top-5: 100.0000"
    LogPattern("mmcls-val", re.compile(r"Epoch\((?P<split>val|train|test)\)\s*\[(?P<epoch>\d+)\]\[[^\]]*\]\s*(?P<rest>.*)$"),
               search=True, fmt="mmcls_text"),
    # mmcls: "Epoch [4][100/239]  lr: 1.000e-03, eta: 0:30:58, ..., loss: 0.0885" (interval means)
    LogPattern("mmcls-train", re.compile(r"^\s*Epoch\s*\[(?P<epoch>\d+)\]\s*\[\s*(?P<it>\d+)/(?P<iters>\d+)\]\s*(?P<rest>.*)$"),
               split="train", approximate=True, fmt="mmcls_text"),
    # JiGen/RSC: "30/42 of epoch 28/30 class : 0.014 - acc class : 100.00 [bs:128]"
    LogPattern("jigen-train", re.compile(
        r"^\s*\d+/\d+ of epoch (?P<epoch>\d+)/\d+\s+class\s*:\s*(?P<train_loss>\S+)\s*-\s*acc class\s*:\s*(?P<train_acc>\S+)"),
               approximate=True, fmt="jigen_console"),
    # JiGen/RSC: "Accuracies on val: class : 96.75" ("test" is an unseen domain: below val)
    LogPattern("jigen-eval", re.compile(r"^\s*Accuracies on (?P<split>val):\s*class\s*:\s*(?P<acc>\S+)"), fmt="jigen_console"),
    LogPattern("jigen-test", re.compile(r"^\s*Accuracies on (?P<split>test):\s*class\s*:\s*(?P<acc>\S+)"), priority=1,
               fmt="jigen_console"),
    # Lightning tqdm bar: "Epoch 3: 100%|███| 50/50 [00:02<00:00, 20.1it/s, v_num=0, train_loss=0.523]"
    LogPattern("lightning", re.compile(r"^\s*Epoch\s+(?P<epoch>\d+)\s*:\s*[^|]*\|[^|]*\|(?P<rest>.*)$"),
               approximate=True, zero_based=True, fmt="tqdm"),
    # tqdm without bar characters (a non-terminal): "Epoch 0: 100% 2/2 [00:00<00:00, 12.1it/s, loss=2.29, val_acc=0.166]"
    LogPattern("tqdm-plain", re.compile(
        r"^\s*Epoch\s+(?P<epoch>\d+)\s*:\s*\d+%\s+[1-9]\d*/\d+\s*\[[^\]]*?,(?P<rest>[^\]]*)\]"),
               approximate=True, zero_based=True, fmt="tqdm"),
    # Keras: "30/30 [======] - 1s 3ms/step - loss: 0.52 - accuracy: 0.83 - val_loss: ..."
    # Keras 3 draws its bar with box characters: "104/104 ━━━━━━━━━━━━ 73s 709ms/step - loss: 8.70 - ..."
    LogPattern("keras", re.compile(r"^\s*\d+/\d+\s*(?:\[[=>.]*\]|[━╸╺─]+).*?\s-\s(?P<rest>[A-Za-z_]+:.*)$"),
               approximate=True, fmt="keras_console"),
    # plain prints: "epoch 3 train_loss 0.52 val_loss 0.61 val_acc 0.83", "Epoch 3/10" (Keras header)
    LogPattern("plain", re.compile(
        r"^\s*epoch\s*[:=#]?\s*(?P<epoch>\d+)(?:\s*/\s*\d+)?\b(?!\s*:\s*\d+%)\s*[:,;|-]?\s*(?P<rest>.*)$",
        re.IGNORECASE),
               fmt="epoch_lines"),
    # a phase word first: "train Loss: 0.0138 Acc: 0.0000" (the epoch comes from an "Epoch 19/59" line)
    LogPattern("split-first", re.compile(
        r"^\s*(?P<split>train|training|val|valid|validation|test)\b\s*[:|-]?\s*(?P<rest>[A-Za-z].*)$", re.IGNORECASE),
               fmt="epoch_lines"),
    # key=value lines: "loss: 0.94, acc: 0.65, test_acc: 0.65" or TF's "cross_entropy = 2.30, train_accuracy = 0"
    LogPattern("key-value", re.compile(r"^\s*(?P<rest>[A-Za-z][\w@\-]*\s*[:=]\s*[-+]?[\d.na].*)$"), records=True,
               fmt="key_value_lines"),
)
FORMAT_NAMES = ("teacher_log", "timm_console", "swin_console", "pt_examples_console", "mmcls_text", "tqdm",
                "keras_console", "jigen_console", "fastai_table", "markdown_table", "epoch_lines", "key_value_lines",
                "names_then_values")
# Keys that name a cross-entropy explicitly win over a plain "loss" for the same metric (TF logs
# both; "loss" there includes weight decay).
_EXPLICIT_CE = {"cross_entropy", "ce", "xent", "nll", "ce_loss"}
# What loggers put before the message; stripped (repeatedly) before patterns are tried again.
# Each with a substring it cannot match without ("": none), tested first: the mmcv prefix scans
# the whole line for its date, the costliest regex per line of a big log without that prefix.
_PREFIXES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^\[\d+,mpirank:\d+,[^\]]*\]<std(?:out|err)>:"), ""),  # mpirun --tag-output (SageMaker)
    (re.compile(r"^[IWEF]\d{4}\s+\d\d:\d\d:\d\d\.\d+\s+\d+\s+[\w.]+:\d+\]\s*"), ""),  # absl/glog
    (re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[^\]]*\]\s*(?:\([\w.]+ \d+\)\s*:)?\s*(?:INFO|WARNING|DEBUG)?\s*"),
     ""),
    (re.compile(r"^.*?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ - [\w.]+ - (?:INFO|WARNING|DEBUG) - "), " - "),  # mmcv
    (re.compile(r"^\s*\d\d:\d\d:\d\d(?=[A-Za-z])"), ""),  # a time glued to the message ("00:43:58train Loss")
)
_ESCAPES = re.compile(r"(?:#033|\x1b)\[[0-9;?]*[A-Za-z]")


def compile_user_patterns(patterns: list[str] | tuple[str, ...] | None) -> list[LogPattern]:
    """User ``--pattern`` regexes, tried before the defaults."""
    out = []
    for i, text in enumerate(patterns or ()):
        try:
            regex = re.compile(text)
        except re.error as exc:
            raise AnalysisInputError(f"--pattern {text!r} is not a valid regex: {exc}") from None
        if not regex.groupindex:
            raise AnalysisInputError(
                f"--pattern {text!r} needs named groups: (?P<epoch>...), (?P<rest>...) or metric names like (?P<val_loss>...)")
        out.append(LogPattern(f"user-{i + 1}", regex))
    return out


@dataclass
class _StepLosses:
    """Per-iteration losses of progress lines: (epoch, iteration, value) in parallel arrays, and
    which of them were printed as an exact zero in scientific notation (``0.0000e+00``)."""

    epochs: array = field(default_factory=lambda: array("q"))
    iters: array = field(default_factory=lambda: array("d"))  # float64: the global steps are computed in it
    values: array = field(default_factory=lambda: array("d"))
    exact_zero: list[int] = field(default_factory=list)  # indices into the arrays

    def append(self, epoch: int, it: int, text: str) -> None:
        value = _number(text)
        if value == 0.0 and "e" in text.lower():
            self.exact_zero.append(len(self.values))
        self.epochs.append(epoch)
        self.iters.append(it)
        self.values.append(value)

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class _Collected:
    # (epoch, name) -> (value, resolution, raw key, priority)
    values: dict[tuple[int, str], tuple[float, float, str, int]] = field(default_factory=dict)
    percent: set[str] = field(default_factory=set)
    patterns_used: set[str] = field(default_factory=set)
    formats: set[str] = field(default_factory=set)
    approximate: bool = False
    zero_based: bool = False
    key_rank: dict[str, int] = field(default_factory=dict)  # canonical -> best key rank seen
    # The instant loss of each progress line, in arrays: a big log has millions of them.
    steps: _StepLosses = field(default_factory=_StepLosses)
    record: int = 0  # pseudo-epoch of key=value records without epoch numbers
    record_keys: set[str] = field(default_factory=set)
    used_records: bool = False
    unprefixed_split: str | None = None
    # (epoch, name) -> every value stored there, in write order (Source.within_epoch); arrays, as
    # a progress line stores its running averages at every iteration
    repeats: dict[tuple[int, str], array] = field(default_factory=dict)
    restarts: list[dict] = field(default_factory=list)  # epoch counters that restarted in a table


def read_console_log(path: Path, patterns: list[str] | tuple[str, ...] | None = None,
                     *, require_metrics: bool = True) -> Source:
    compiled = compile_user_patterns(patterns) + list(DEFAULT_PATTERNS)
    try:
        with path.open("rb") as handle:
            source = parse_console_lines(read_console_lines(handle), path.name, str(path), compiled)
    except OSError as exc:
        raise AnalysisInputError(f"{path}: cannot read ({exc.strerror})") from None
    if require_metrics and not source.series:
        raise AnalysisInputError(f"{path}: {NOT_RECOGNISED}")
    return source


NOT_RECOGNISED = (
    "no known format recognised. Tried: TensorBoard event files; JSON (our history.json, Keras history, "
    "Hugging Face trainer_state.json / log_history); JSON lines (DeiT/ConvNeXt log.txt, mmcls *.log.json, our "
    "steps.jsonl); CSV (Lightning metrics.csv, Keras CSVLogger, ultralytics results.csv, fastai history.csv, timm "
    "summary.csv); markdown epoch tables; console logs (ours, timm, pytorch/examples, Swin/DeiT, mmcls, Keras, "
    "tqdm/Lightning bars, fastai tables, 'epoch N ...' lines, key=value lines). For another console format pass "
    "--pattern REGEX with named groups, e.g. --pattern 'ep=(?P<epoch>\\d+) tl (?P<train_loss>\\S+)' "
    "(see docs/analysis.md)")


def clean_text(text: str) -> list[str]:
    """Lines, with carriage returns (real, or syslog's '#015') splitting progress-bar redraws and
    terminal escapes removed."""
    text = _ESCAPES.sub("", text.replace("#015", "\r"))
    lines = _LINE_BREAKS.split(text)
    if text and not text.endswith(("\n", "\r")):
        lines = lines[:-1]  # the writer may be mid-line; a partial number would be wrong
    return lines


_LINE_BREAKS = re.compile(r"[\r\n]+")


def read_console_lines(handle: BinaryIO) -> Iterator[str]:
    """The lines :func:`clean_text` gives for the file's whole text (UTF-8, errors replaced),
    read one ``\\n``-ended line at a time: only the longest line is ever held."""
    return clean_lines(_decoded(handle))


def _decoded(handle: BinaryIO) -> Iterator[str]:
    # Incremental decoding gives what decoding the whole file gives; a b"\n" is never part of a
    # UTF-8 sequence, so no character is cut between lines.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for raw in handle:
        yield decoder.decode(raw)
    yield decoder.decode(b"", final=True)  # an incomplete sequence at the very end: U+FFFD


def clean_lines(segments: Iterable[str]) -> Iterator[str]:
    """:func:`clean_text` of the segments joined, cleaning one segment at a time. Every segment
    but the last must end with ``\\n``: neither the ``#015`` replacement nor an escape sequence
    spans a newline, so cleaning each segment is cleaning the whole; what differs is only where
    line breaks merge (``re.split`` on ``[\\r\\n]+`` yields an empty line only at the very start
    and the very end of the text), which ``carry`` and ``fresh`` account for."""
    carry = ""  # the text after the last line break: a line not ended yet
    fresh = True  # no line yielded: an empty first line is still the text's own
    for segment in segments:
        text = _ESCAPES.sub("", segment.replace("#015", "\r"))
        if not text:
            continue
        pieces = _LINE_BREAKS.split(carry + text if carry else text)
        for piece in pieces[:-1]:
            if piece or fresh:
                yield piece
            fresh = False
        carry = pieces[-1]
    if not carry:
        yield ""  # text ending in a line break (or none at all), as clean_text's split gives
    # else: the writer may be mid-line; a partial number would be wrong (dropped, as clean_text does)


def strip_prefixes(line: str) -> str:
    """The message without logger prefixes (timestamps, levels, MPI tags), several stacked included."""
    for _ in range(4):
        bare = line
        for prefix, needs in _PREFIXES:
            if needs in bare:  # a substring the prefix cannot match without: the regex is skipped cheaply
                bare = prefix.sub("", bare, count=1)
        bare = _PREFIX.sub("", bare, count=1)
        if bare == line:
            return line
        line = bare
    return line


def parse_console_text(text: str, name: str, path: str, patterns: list[LogPattern]) -> Source:
    """A console log held as text (what :func:`read_console_log` reads from a file)."""
    return parse_console_lines(clean_text(text), name, path, patterns)


def parse_console_lines(lines: Iterable[str], name: str, path: str, patterns: list[LogPattern]) -> Source:
    got = _Collected()
    epoch: int | None = None
    table: _Table | None = None
    names: list[str] | None = None  # a "train_loss,train_acc,..." line whose values follow on the next line
    for line in lines:
        bare = strip_prefixes(line)
        if table is not None:
            row = table.row(bare)
            if row is not None:
                store_row(got, table, row)
                continue
            table = None if bare.strip() else table
        if names is not None:
            values = _value_row(bare, len(names))
            if values is not None and epoch is not None:
                for name, value in zip(names, values):
                    canonical = canonical_for_line(name, None)
                    if canonical is not None:
                        store(got, epoch, canonical, name, value, False)
                        got.formats.add("names_then_values")
                names = None
                continue
            names = None if bare.strip() else names
        names = names or _names_line(bare)
        if names is not None:
            continue
        header = _Table.header(bare)
        if header is not None:
            table = header
            got.formats.add(table.fmt)
            got.zero_based = got.zero_based or table.zero_based
            continue
        for pattern in patterns:
            match = _match(pattern, line, bare)
            if not match:
                continue
            groups = match.groupdict()
            if groups.get("epoch") is not None:
                epoch = int(groups["epoch"])
            at = epoch
            if at is None and pattern.summary:
                at = PRE_EPOCH
            if at is None and pattern.records:
                at = -1  # decided per key by the record counter
            if at is not None and collect_line(match, pattern, at, got):
                got.patterns_used.add(pattern.name)
                got.formats.add(pattern.fmt)
                got.approximate = got.approximate or pattern.approximate
                got.zero_based = got.zero_based or pattern.zero_based
            break
    return build_source(got, name, path)


# An evaluation printed before any epoch line evaluates the weights training resumes from: it
# belongs to the epoch before the first one seen (epoch 0, i.e. 1 after the shift, if none is).
PRE_EPOCH = -2


def resolve_pre_epoch(got: _Collected) -> None:
    pre = {k: v for k, v in got.values.items() if k[0] == PRE_EPOCH}
    if not pre:
        return
    seen = [k[0] for k in got.values if k[0] >= 0]
    target = max(min(seen) - 1, 0) if seen else 0
    if not seen:
        got.zero_based = True
    for (_, name), value in pre.items():
        del got.values[(PRE_EPOCH, name)]
        if (target, name) not in got.values or got.values[(target, name)][3] < value[3]:
            got.values[(target, name)] = value


def _match(pattern: LogPattern, line: str, bare: str) -> re.Match[str] | None:
    find = pattern.regex.search if pattern.search else pattern.regex.match
    return find(line) or (find(bare) if bare != line else None)


def collect_line(match: re.Match[str], pattern: LogPattern, epoch: int, got: _Collected) -> bool:
    groups = match.groupdict()
    split = pattern.split
    if groups.get("split"):
        split = _SPLIT_WORDS.get(groups["split"].lower(), split)
    pairs: list[tuple[str, str, bool, str | None]] = []  # raw key, value text, printed with '%', instant value
    for key, value in groups.items():
        if key not in _RESERVED_GROUPS and value is not None:
            pairs.append((key, value.strip().rstrip("%"), value.strip().endswith("%"), None))
    rest = groups.get("rest") or ""
    for kv in _KV.finditer(rest):
        kpre, raw_key, instant, instant_pct, avg, avg_pct = kv.group("kpre", "key", "val", "pct", "avg", "avgpct")
        use_avg = pattern.prefer_average and avg is not None
        value = avg if use_avg else instant
        pct = bool(avg_pct if use_avg else instant_pct)
        key = "_".join(kpre.split() + [raw_key]) if kpre else raw_key  # "val acc: 0.5" is val_acc
        pairs.append((key, value, pct, instant if use_avg else None))
    found = False
    for key, value, pct, instant in pairs:
        canonical = canonical_for_line(key, split)
        if canonical is None:
            continue
        rank = 2 if key.lower() in _EXPLICIT_CE else 1
        if rank < got.key_rank.get(canonical, 0):
            continue  # "loss" next to an explicit cross-entropy: the cross-entropy is the metric
        got.key_rank[canonical] = rank
        at = record_epoch(got, canonical) if epoch == -1 else epoch
        store(got, at, canonical, key, value, pct, pattern.priority)
        if instant is not None and canonical == "train.loss" and groups.get("it") is not None:
            got.steps.append(at, int(groups["it"]), instant)
        found = True
    # "/s" first: a cheap test that skips the regex on the lines that cannot match it
    tp = _THROUGHPUT.search(rest) if "/s" in rest or "/S" in rest else None
    if tp and split in (None, "train") and epoch != -1:
        store(got, epoch, "train.throughput", "img/s", tp.group("val"), False, pattern.priority)
        found = True
    return found


def record_epoch(got: _Collected, canonical: str) -> int:
    """Records without epoch numbers: a metric seen again in the current record starts the next."""
    got.used_records = True
    if got.record == 0 or canonical in got.record_keys:
        got.record += 1
        got.record_keys = set()
    got.record_keys.add(canonical)
    return got.record


@lru_cache(maxsize=4096)
def canonical_for_line(key: str, split: str | None) -> str | None:
    # Cached: a log repeats the same few keys on every line, and the mapping is a pure function
    # of them (it was most of the reader's time on a big log).
    mapped = map_metric_name(key)
    if split is not None and (mapped is None or not mapped[1]):
        with_split = map_metric_name(f"{split}_{key}")
        if with_split is not None:
            return with_split[0]
    if mapped is None or mapped[0].startswith("step."):
        return None
    return mapped[0]


def _number(value: str) -> float:
    # "null"/"None" is how our log (and Python's str()) prints a non-finite or missing value.
    return math.nan if value.lower() in ("null", "none") else float(value)


def store(got: _Collected, epoch: int, canonical: str, key: str, value: str, pct: bool, priority: int = 2) -> None:
    held = got.values.get((epoch, canonical))
    if held is not None and held[3] > priority:
        return
    number = _number(value)
    got.values[(epoch, canonical)] = (number, decimals_resolution(value), key, priority)
    if held is not None and held[3] < priority:
        got.repeats.pop((epoch, canonical), None)  # a better line replaces the lesser ones
    repeats = got.repeats.get((epoch, canonical))
    if repeats is None:
        repeats = got.repeats[(epoch, canonical)] = array("d")
    repeats.append(number)
    if pct:
        got.percent.add(canonical)


_NAMES_LINE = re.compile(r"^[\W_]*?([A-Za-z][\w@\-]*(?:\s*,\s*[A-Za-z][\w@\-]*)+)[\W_]*$")


def _names_line(line: str) -> list[str] | None:
    """``*****train_loss,train_acc,valid_loss,valid_acc*****``: metric names, values on the next line."""
    match = _NAMES_LINE.match(line.strip())
    if not match:
        return None
    names = [n.strip() for n in match.group(1).split(",")]
    return names if sum(1 for n in names if map_metric_name(n) is not None) >= 2 else None


def _value_row(line: str, count: int) -> list[str] | None:
    cells = [c for c in re.split(r"[\s,]+", line.strip()) if c]
    if len(cells) != count or not all(re.fullmatch(rf"(?:{_NUM})", c, re.IGNORECASE) for c in cells):
        return None
    return cells


# --- tables printed in a console (fastai's progress table, markdown epoch tables) --------------


@dataclass
class _Table:
    columns: list[str]
    markdown: bool
    fmt: str
    zero_based: bool
    default_split: str | None
    epoch_col: int | None
    index: int = 0
    # Appended sessions: a restarted epoch counter is numbered on from the last epoch seen.
    offset: int = 0
    last_epoch: int | None = None

    @staticmethod
    def cells(line: str, markdown: bool) -> list[str]:
        if markdown:
            return [c.strip() for c in line.strip().strip("|").split("|")]
        return line.split()

    @classmethod
    def header(cls, line: str) -> "_Table | None":
        text = line.strip()
        markdown = text.startswith("|") and text.endswith("|") and text.count("|") >= 3
        cells = [c.lower() for c in cls.cells(text, markdown)]
        if len(cells) < 3 or "epoch" not in cells:
            return None
        if not markdown and not all(re.fullmatch(r"[a-z][\w@\-]*", c) for c in cells):
            return None
        known = [c for c in cells if map_metric_name(c) is not None]
        if not known:
            return None
        fastai = not markdown and "valid_loss" in cells
        # fastai and Hugging Face model cards compute unprefixed metrics (accuracy, f1) on validation.
        return cls(cells, markdown, "markdown_table" if markdown else "fastai_table" if fastai else "epoch_table",
                   zero_based=fastai, default_split="val" if (fastai or markdown) else None,
                   epoch_col=cells.index("epoch"))

    def row(self, line: str) -> list[str] | None:
        text = line.strip()
        if self.markdown and re.fullmatch(r"\|[\s:|\-]+\|", text):
            return []  # the separator row
        cells = self.cells(text, self.markdown)
        if not self.markdown and len(cells) == len(self.columns) + 1 and cells[0].isdigit():
            cells = cells[1:]  # a pandas-printed table (print(pd.read_csv(...))): its row index first
        if [c.lower() for c in cells] == self.columns:
            return []  # the header again: a session appended to the same file (fastai/Keras append mode)
        if len(cells) != len(self.columns):
            return None
        if self.epoch_col is not None and not re.fullmatch(r"\d+(?:\.\d+)?", cells[self.epoch_col]):
            return None
        return cells


def store_row(got: _Collected, table: _Table, cells: list[str]) -> None:
    if not cells:
        return
    table.index += 1
    raw_epoch = cells[table.epoch_col] if table.epoch_col is not None else str(table.index)
    # Fractional epochs (evaluation every N steps, as model cards print them): one row is one point.
    epoch = int(raw_epoch) if raw_epoch.isdigit() else table.index
    if table.last_epoch is not None and epoch + table.offset <= table.last_epoch:
        # The counter restarted (an appended fit()): number this session on, as for appended CSVs.
        table.offset = table.last_epoch + 1 - epoch
        got.restarts.append({"row": table.index, "epoch": epoch, "continues_as": epoch + table.offset})
    epoch += table.offset
    table.last_epoch = epoch
    for column, cell in zip(table.columns, cells):
        if column == "epoch" or not re.fullmatch(rf"(?:{_NUM})%?", cell, re.IGNORECASE):
            continue
        canonical = canonical_for_line(column.replace(" ", "_"), None)
        mapped = map_metric_name(column.replace(" ", "_"))
        if mapped is not None and not mapped[1] and table.default_split:
            canonical = canonical_for_line(column.replace(" ", "_"), table.default_split)
        if canonical is None:
            continue
        store(got, epoch, canonical, column, cell.rstrip("%"), cell.endswith("%"))
        got.approximate = got.approximate  # tables hold epoch summaries: exact
    got.patterns_used.add(table.fmt)


def build_source(got: _Collected, name: str, path: str) -> Source:
    resolve_pre_epoch(got)
    source = Source(name=name, kind="log", path=path, approximate=got.approximate)
    by_name: dict[str, list[tuple[int, float]]] = {}
    resolution: dict[str, float] = {}
    raw: dict[str, str] = {}
    for (epoch, canonical), (value, res, key, _) in sorted(got.values.items()):
        by_name.setdefault(canonical, []).append((epoch, value))
        resolution[canonical] = max(resolution.get(canonical, 0.0), res)
        raw[canonical] = key
    for canonical, pairs in by_name.items():
        source.add(series_from_pairs(canonical, pairs, name, raw[canonical], resolution[canonical]))
    if len(got.steps):
        add_step_losses(source, got.steps)
    first = {n: int(s.epochs.min()) for n, s in source.series.items() if len(s)}
    source.restarts = list(got.restarts)
    source.format = "+".join(sorted(f for f in got.formats if f)) or "console"
    if got.patterns_used:
        source.notes.append("log patterns matched: " + ", ".join(sorted(got.patterns_used)))
    if got.used_records:
        source.notes.append("no epoch numbers: each key=value record is one point (a repeated key starts the next)")
    if got.approximate:
        source.notes.append("running averages from progress lines: not used to accuse other sources")
    declared: dict[str, str] = {n: "percent" for n in got.percent}
    keras = "keras_console" in got.formats and not got.percent
    if keras:  # Keras metrics are fractions: an accuracy of 4.96 there is out of range, not percent
        declared = {n: "fraction" for n in source.series}
    normalise_accuracy_units(source, declared)
    if keras:
        source.accuracy_unit = "fraction"
        source.detected_unit_metrics = [n for n in source.series if n.endswith(("top1", "top5"))]
        source.notes.append("Keras prints accuracies as fractions (override with --accuracy-unit)")
    if got.zero_based:
        for series in source.series.values():
            series.epochs = series.epochs + 1
        for stream in source.steps.values():
            if stream.epochs is not None:
                stream.epochs = stream.epochs + 1
        for restart in source.restarts:  # "continues_as" is the series' epoch, as in readers.py
            restart["continues_as"] += 1
        source.notes.append("the logging tool counts epochs from 0; shifted by +1 to count from 1")
    else:
        shift_zero_based_epochs(source)
    keep_within_epoch(source, got, first)
    return source


def keep_within_epoch(source: Source, got: _Collected, first: dict[str, int]) -> None:
    """Metrics printed more than once inside an epoch, under the epoch numbers the series ended
    with (after any shift from 0-based counting)."""
    for (epoch, canonical), values in sorted(got.repeats.items()):
        series = source.series.get(canonical)
        if len(values) > 1 and epoch >= 0 and series is not None and len(series):
            shifted = epoch + int(series.epochs.min()) - first[canonical]
            source.within_epoch.setdefault(canonical, PrintedValues())[shifted] = values


def add_step_losses(source: Source, steps: _StepLosses) -> None:
    """The instant (per-iteration) training loss of progress lines, as a step stream;
    ``source.exact_zero_steps`` the steps whose value was printed as an exact 0 (scientific
    notation: not a rounding)."""
    import numpy as np

    # Views of the arrays' buffers, not copies: a big log's per-line numbers are held once.
    epochs = np.frombuffer(steps.epochs, dtype=np.int64)
    iters = np.frombuffer(steps.iters, dtype=np.float64)
    per_epoch = max(int(iters.max()) + 1, 1)
    global_steps = epochs * per_epoch + iters
    values = np.frombuffer(steps.values, dtype=np.float64)
    source.steps["step.train_loss"] = StepSeries("step.train_loss", global_steps, values, source.name, epochs)
    source.exact_zero_steps = [int(global_steps[i]) for i in steps.exact_zero]
