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
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from common.analysis.series import (
    AnalysisInputError,
    Source,
    decimals_resolution,
    map_metric_name,
    normalise_accuracy_units,
    series_from_pairs,
    shift_zero_based_epochs,
)

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)|null|none"
# key, separator, value, optional '%', optional "(running average)" as timm prints it.
_KV = re.compile(
    rf"(?P<key>[A-Za-z][\w@/.]*?)\s*(?:=|:|\s)\s*(?P<val>{_NUM})(?P<pct>\s*%)?"
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


DEFAULT_PATTERNS: tuple[LogPattern, ...] = (
    # ours and the incident's: "Epoch 3/10 [Train]: loss=1.2345, top1=55.21%, ..."
    LogPattern("teacher", re.compile(
        r"^\s*Epoch\s+(?P<epoch>\d+)(?:\s*/\s*\d+)?\s*\[(?P<split>[A-Za-z]+)\]\s*:?\s*(?P<rest>.*)$")),
    # timm: "Train: 3 [ 100/1251 (  8%)]  Loss: 6.123 (6.456)  ...  LR: 1.000e-03"
    LogPattern("timm-train", re.compile(r"^\s*Train:\s*(?P<epoch>\d+)\s*\[[^\]]*\]\s*(?P<rest>.*)$"),
               split="train", approximate=True, prefer_average=True, zero_based=True),
    # timm: "Test: [  48/48]  Time: ...  Loss:  0.8398 (1.1125)  Acc@1: 83.4906 (76.3120) ..."
    LogPattern("timm-test", re.compile(r"^\s*Test(?:\s*\(EMA\))?:\s*\[[^\]]*\]\s*(?P<rest>.*)$"),
               split="val", approximate=True, prefer_average=True, zero_based=True),
    # Lightning tqdm bar: "Epoch 3: 100%|███| 50/50 [00:02<00:00, 20.1it/s, v_num=0, train_loss=0.523]"
    LogPattern("lightning", re.compile(r"^\s*Epoch\s+(?P<epoch>\d+)\s*:\s*[^|]*\|[^|]*\|(?P<rest>.*)$"),
               approximate=True, zero_based=True),
    # Keras: "30/30 [======] - 1s 3ms/step - loss: 0.52 - accuracy: 0.83 - val_loss: ..."
    LogPattern("keras", re.compile(r"^\s*\d+/\d+\s*\[[=>.]*\].*?\s-\s(?P<rest>[A-Za-z_]+:.*)$"),
               approximate=True),
    # plain prints: "epoch 3 train_loss 0.52 val_loss 0.61 val_acc 0.83", "Epoch 3/10" (Keras header)
    LogPattern("plain", re.compile(
        r"^\s*epoch\s*[:=#]?\s*(?P<epoch>\d+)(?:\s*/\s*\d+)?\b\s*[:,;|-]?\s*(?P<rest>.*)$", re.IGNORECASE)),
)


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
class _Collected:
    values: dict[tuple[int, str], tuple[float, float, str]]  # (epoch, name) -> (value, resolution, raw key)
    percent: set[str]
    patterns_used: set[str]
    approximate: bool = False
    zero_based: bool = False


def read_console_log(path: Path, patterns: list[str] | tuple[str, ...] | None = None,
                     *, require_metrics: bool = True) -> Source:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise AnalysisInputError(f"{path}: cannot read ({exc.strerror})") from None
    source = parse_console_text(text, path.name, str(path), compile_user_patterns(patterns) + list(DEFAULT_PATTERNS))
    if require_metrics and not source.series:
        raise AnalysisInputError(
            f"{path}: no metric lines recognised; pass --pattern REGEX with named groups (see docs/analysis.md)")
    return source


def parse_console_text(text: str, name: str, path: str, patterns: list[LogPattern]) -> Source:
    lines = re.split(r"[\r\n]+", text)
    if text and not text.endswith(("\n", "\r")):
        lines = lines[:-1]  # the writer may be mid-line; a partial number would be wrong
    got = _Collected(values={}, percent=set(), patterns_used=set())
    epoch: int | None = None
    for line in lines:
        bare = _PREFIX.sub("", line, count=1)
        for pattern in patterns:
            match = pattern.regex.match(line) or (pattern.regex.match(bare) if bare != line else None)
            if not match:
                continue
            groups = match.groupdict()
            if groups.get("epoch") is not None:
                epoch = int(groups["epoch"])
            if epoch is not None and collect_line(match, pattern, epoch, got):
                got.patterns_used.add(pattern.name)
                got.approximate = got.approximate or pattern.approximate
                got.zero_based = got.zero_based or pattern.zero_based
            break
    return build_source(got, name, path)


def collect_line(match: re.Match[str], pattern: LogPattern, epoch: int, got: _Collected) -> bool:
    groups = match.groupdict()
    split = pattern.split
    if groups.get("split"):
        split = _SPLIT_WORDS.get(groups["split"].lower(), split)
    pairs: list[tuple[str, str, bool]] = []  # raw key, value text, printed with '%'
    for key, value in groups.items():
        if key not in _RESERVED_GROUPS and value is not None:
            pairs.append((key, value.strip().rstrip("%"), value.strip().endswith("%")))
    rest = groups.get("rest") or ""
    for kv in _KV.finditer(rest):
        use_avg = pattern.prefer_average and kv.group("avg") is not None
        value = kv.group("avg") if use_avg else kv.group("val")
        pct = bool(kv.group("avgpct") if use_avg else kv.group("pct"))
        pairs.append((kv.group("key"), value, pct))
    found = False
    for key, value, pct in pairs:
        canonical = canonical_for_line(key, split)
        if canonical is None:
            continue
        store(got, epoch, canonical, key, value, pct)
        found = True
    tp = _THROUGHPUT.search(rest)
    if tp and split in (None, "train"):
        store(got, epoch, "train.throughput", "img/s", tp.group("val"), False)
        found = True
    return found


def canonical_for_line(key: str, split: str | None) -> str | None:
    mapped = map_metric_name(key)
    if split is not None and (mapped is None or not mapped[1]):
        with_split = map_metric_name(f"{split}_{key}")
        if with_split is not None:
            return with_split[0]
    if mapped is None or mapped[0].startswith("step."):
        return None
    return mapped[0]


def store(got: _Collected, epoch: int, canonical: str, key: str, value: str, pct: bool) -> None:
    # "null"/"None" is how our log (and Python's str()) prints a non-finite or missing value.
    number = math.nan if value.lower() in ("null", "none") else float(value)
    got.values[(epoch, canonical)] = (number, decimals_resolution(value), key)
    if pct:
        got.percent.add(canonical)


def build_source(got: _Collected, name: str, path: str) -> Source:
    source = Source(name=name, kind="log", path=path, approximate=got.approximate)
    by_name: dict[str, list[tuple[int, float]]] = {}
    resolution: dict[str, float] = {}
    raw: dict[str, str] = {}
    for (epoch, canonical), (value, res, key) in sorted(got.values.items()):
        by_name.setdefault(canonical, []).append((epoch, value))
        resolution[canonical] = max(resolution.get(canonical, 0.0), res)
        raw[canonical] = key
    for canonical, pairs in by_name.items():
        source.add(series_from_pairs(canonical, pairs, name, raw[canonical], resolution[canonical]))
    if got.patterns_used:
        source.notes.append("log patterns matched: " + ", ".join(sorted(got.patterns_used)))
    if got.approximate:
        source.notes.append("running averages from progress lines: not used to accuse other sources")
    declared = {n: "percent" for n in got.percent}
    normalise_accuracy_units(source, declared)
    if got.zero_based:
        for series in source.series.values():
            series.epochs = series.epochs + 1
        source.notes.append("the logging tool counts epochs from 0; shifted by +1 to count from 1")
    else:
        shift_zero_based_epochs(source)
    return source
