"""Readers for other trainers' record files: Hugging Face ``trainer_state.json`` (and a printed
``log_history``), JSON lines (DeiT/ConvNeXt/Swin ``log.txt``, mmcls ``*.log.json``).

Each returns a :class:`Source` like the other readers; nothing here judges the numbers.
"""
from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from common.analysis.series import (
    AnalysisInputError,
    Source,
    StepSeries,
    map_metric_name,
    normalise_accuracy_units,
    series_from_pairs,
    shift_zero_based_epochs,
)

# Hugging Face summary entries (end of training) and bookkeeping keys that are not metrics.
_HF_SKIP = {"epoch", "step", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second",
            "eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "grad_norm"}
_HF_ROUNDING = 5e-5  # the Trainer rounds logged train losses to 4 decimals


def is_hf_state(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("log_history"), list)


def read_hf_log_history(records: list[Any], name: str, path: str, fmt: str) -> Source:
    """``log_history``: train entries (``loss``, ``learning_rate`` every logging step) and eval
    entries (``eval_*`` at evaluation steps) at different steps. Each evaluation is one point
    (its epoch when evaluations fall on whole epochs); the training loss of a point is the mean
    of the train entries logged since the previous evaluation. The train entries are also the
    ``step.train_loss`` stream."""
    source = Source(name=name, kind="history", path=path, format=fmt)
    entries = [r for r in records if isinstance(r, dict) and "train_runtime" not in r]
    train = [r for r in entries if "loss" in r and "step" in r]
    evals = [r for r in entries if any(str(k).startswith("eval_") for k in r) and "step" in r]
    if not train and not evals:
        raise AnalysisInputError(f"{path}: log_history has no train or eval entries")
    points = _points(evals, train)
    columns: dict[str, list[tuple[int, float]]] = {}
    previous = -math.inf
    for number, (step, entry) in enumerate(points, start=1):
        epoch = _point_epoch(entry, number, points)
        losses = [float(r["loss"]) for r in train if previous < r["step"] <= step and _finite_number(r["loss"])]
        previous = step
        if losses:
            columns.setdefault("train.loss", []).append((epoch, float(np.mean(losses))))
        for key, value in (entry or {}).items():
            if key in _HF_SKIP or not _finite_number(value) and value is not None:
                continue
            mapped = map_metric_name(key)
            if mapped is None:
                if key not in source.ignored:
                    source.ignored.append(key)
                continue
            if mapped[0].startswith("step.") or mapped[0] == "lr":
                continue
            columns.setdefault(mapped[0], []).append((epoch, math.nan if value is None else float(value)))
            source.mapping[key] = mapped[0]
    for canonical, pairs in columns.items():
        source.add(series_from_pairs(canonical, pairs, name, source.mapping.get(canonical, canonical), _HF_ROUNDING
                                     if canonical == "train.loss" else 0.0))
    if train:
        steps = np.asarray([float(r["step"]) for r in train])
        values = np.asarray([float(r["loss"]) if _finite_number(r["loss"]) else math.nan for r in train])
        source.steps["step.train_loss"] = StepSeries("step.train_loss", steps, values, name)
        lrs = [r.get("learning_rate") for r in train]
        if all(_finite_number(v) for v in lrs):
            source.steps["step.lr"] = StepSeries("step.lr", steps, np.asarray(lrs, dtype=float), name)
    source.notes.append(f"Hugging Face log_history: {len(train)} train and {len(evals)} eval entries; each "
                        "evaluation is one point, its train loss the mean of the entries logged since the previous one")
    normalise_accuracy_units(source)
    return source


def _points(evals: list[dict], train: list[dict]) -> list[tuple[float, dict | None]]:
    if evals:
        return [(float(e["step"]), e) for e in evals]
    # No evaluation: one point per whole epoch of training entries.
    by_epoch: dict[int, float] = {}
    for r in train:
        by_epoch[max(1, math.ceil(float(r.get("epoch") or 0)))] = float(r["step"])
    return [(step, {"epoch": epoch}) for epoch, step in sorted(by_epoch.items())]


def _point_epoch(entry: dict | None, number: int, points: list[tuple[float, dict | None]]) -> int:
    """The epoch when every evaluation falls on a whole epoch (1.0, 2.0, ...), else its number."""
    epochs = [float((e or {}).get("epoch", math.nan)) for _, e in points]
    if all(math.isfinite(x) and abs(x - round(x)) < 0.02 and round(x) >= 1 for x in epochs) and \
            len({round(x) for x in epochs}) == len(epochs):
        return int(round(float((entry or {})["epoch"])))
    return number


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- a printed log_history (Python repr, not JSON) ------------------------------------------

_REPR_DICT = re.compile(r"\{'[^{}]*\}")


def looks_like_python_repr(text: str) -> bool:
    return bool(re.search(r"\{'(?:eval_|loss'|epoch'|train_)", text))


def read_python_repr(text: str, name: str, path: str) -> Source:
    """``print(trainer.state.log_history)``: dicts in Python syntax, parsed with
    :func:`ast.literal_eval` (literals only: nothing is executed)."""
    records = []
    for match in _REPR_DICT.finditer(text):
        try:
            value = ast.literal_eval(re.sub(r"\b(?:nan|inf)\b", "None", match.group(0)))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict):
            records.append(value)
    if not records:
        raise AnalysisInputError(f"{path}: no Python dict records found")
    return read_hf_log_history(records, name, path, "hf_log_history_repr")


# --- JSON lines ------------------------------------------------------------------------------

_MODE_SPLIT = {"train": "train", "val": "val", "valid": "val", "test": "val", "eval": "val"}


def read_json_lines(records: list[dict], name: str, path: str) -> Source:
    """One JSON object per line, each with an ``epoch``: DeiT/ConvNeXt/Swin ``log.txt``
    (``train_loss``, ``test_acc1``, ``test_acc5``; evaluation may be in every line or every k-th),
    mmcls ``*.log.json`` (``mode`` train/val, per-iteration train lines: their mean per epoch)."""
    source = Source(name=name, kind="history", path=path)
    fmt = "mmcls_log_json" if any("mode" in r for r in records) else "deit_log_jsonl"
    source.format = fmt
    sums: dict[tuple[int, str], list[float]] = {}
    raw: dict[str, str] = {}
    for record in records:
        epoch = record.get("epoch")
        if not isinstance(epoch, (int, float)) or isinstance(epoch, bool):
            continue  # mmcls's first line is the environment and config
        split = _MODE_SPLIT.get(str(record.get("mode", "")).lower())
        for key, value in record.items():
            if key in ("epoch", "mode", "iter", "n_parameters", "time", "data_time", "memory", "step"):
                continue
            mapped = map_metric_name(key)
            if mapped is not None and split is not None and not mapped[1]:
                mapped = map_metric_name(f"{split}_{key}")
            if mapped is None or mapped[0].startswith("step."):
                if key not in source.ignored:
                    source.ignored.append(key)
                continue
            if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
                sums.setdefault((int(epoch), mapped[0]), []).append(math.nan if value is None else float(value))
                raw[mapped[0]] = key
    if not sums:
        raise AnalysisInputError(f"{path}: JSON lines with no epoch metric (keys like train_loss, test_acc1 expected)")
    several = any(len(v) > 1 for v in sums.values())
    columns: dict[str, list[tuple[int, float]]] = {}
    for (epoch, canonical), values in sorted(sums.items()):
        columns.setdefault(canonical, []).append((epoch, float(np.mean(values))))
    for canonical, pairs in columns.items():
        source.add(series_from_pairs(canonical, pairs, name, raw[canonical]))
    if several:
        source.approximate = True
        source.notes.append("several records per epoch (per-iteration lines): the epoch value is their mean")
    normalise_accuracy_units(source)
    shift_zero_based_epochs(source)
    return source


def parse_json_lines(text: str, path: str) -> list[dict] | None:
    """The records when every non-empty line is a JSON object, else None."""
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            return None
        if not isinstance(value, dict):
            return None
        records.append(value)
    return records or None


def read_path_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AnalysisInputError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise AnalysisInputError(f"{path}: not UTF-8 text") from None
