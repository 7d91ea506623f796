"""Formatting for the pages (Jinja's ``fmt``): numbers with sensible precision, durations,
and where in the submitted YAML a field error points. Pure functions of their arguments."""
from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import yaml

from api.schemas import STATUSES, TAG

BADGES = {"pass": "pass", "warn": "warn", "fail": "fail"}


def split_tags(text: str, separators: str = r"[,\s]+") -> list[str]:
    """Tags as typed in a form field (by default separated by commas or spaces), duplicates
    dropped, order kept."""
    return list(dict.fromkeys(t.strip() for t in re.split(separators, text) if t.strip()))


def valid_tag(tag: str) -> bool:
    return TAG.regex.match(tag) is not None  # the API's rule (api.schemas.TAG)


def num(value: Any, digits: int = 3) -> str:
    """A float with ``digits`` significant digits (no exponent for ordinary values); '–' when absent."""
    if isinstance(value, str):
        return value  # nan/inf as the API spells them
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "–"  # None, or absent (Jinja's Undefined)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(value)))))
    text = _fixed(value, decimals)
    return text.rstrip("0").rstrip(".") if "." in text else text  # 1.00 -> 1, as the live view writes it


def _fixed(value: float, decimals: int) -> str:
    """Rounded half up on the exact binary value, as JavaScript's toFixed does: the server's
    render and the live updates never disagree in the last digit (81.25 -> 81.3 in both)."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))


def pct(value: Any) -> str:
    return f"{_fixed(value, 1)}%" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def duration(seconds: Any) -> str:
    """1h 02m, 3m 05s, 42s; '–' when unknown."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return "–"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def size(n: Any) -> str:
    if not isinstance(n, int):
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def val_top1(job: dict[str, Any]) -> Any:
    """The latest val top-1: the final result of a finished job, else the live progress."""
    final = ((job.get("result") or {}).get("final") or {}).get("val") or {}
    if isinstance(final.get("top1"), (int, float)):
        return final["top1"]
    latest = (job.get("progress") or {}).get("latest") or {}
    return latest.get("val.top1")


def resume_point(point: Any) -> str:
    """'epoch 2 done, step 40, 3 batches in, from step_00000040.pt'; '–' for a start from scratch."""
    if not isinstance(point, dict):
        return "–"
    parts = [f"epoch {point.get('epoch')} done", f"step {point.get('step')}"]
    if point.get("batch"):
        parts.append(f"{point['batch']} batches in")
    return ", ".join(parts) + (f", from {point['checkpoint']}" if point.get("checkpoint") else "")


# The metrics the job page's epoch charts draw (job.js: the loss and top-1/top-5 charts' series);
# a flagged metric outside them is listed, not marked.
CHARTED = ("train.loss", "val.loss", "train.top1", "val.top1", "val.top5")


def flagged_points(report: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The checks that failed or warned about a metric at given epochs: the points the job
    page marks on its curves ({"id", "status", "metric", "epochs"}). One check run against
    several sources (cross_source: steps, log, TensorBoard) flags a metric once per source:
    those are one mark, their epochs merged, so a curve gets one series per check and metric."""
    merged: dict[tuple[str, str, str], set[int]] = {}
    for check in (report or {}).get("checks") or []:
        if check.get("status") in ("fail", "warn") and check.get("metric") and check.get("epochs"):
            key = (check["id"], check["status"], check["metric"])
            merged.setdefault(key, set()).update(e for e in check["epochs"] if isinstance(e, int))
    return [{"id": i, "status": s, "metric": m, "epochs": sorted(epochs)} for (i, s, m), epochs in merged.items() if epochs]


def as_yaml(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False, allow_unicode=True)


def errors_with_lines(text: str, errors: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """{field: {"messages": [...], "line": N or None}}: the line of the YAML where the field's
    key is (1-based), so the page can show the error next to it."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return {k: {"messages": v, "line": (mark.line + 1) if mark is not None else None} for k, v in errors.items()}
    return {k: {"messages": v, "line": _line_of(root, k)} for k, v in errors.items()}


def _line_of(node: Any, dotted: str) -> int | None:
    line = None
    for part in dotted.split("."):
        if not isinstance(node, yaml.MappingNode):
            break
        for key, value in node.value:
            if getattr(key, "value", None) == part:
                line, node = key.start_mark.line + 1, value
                break
        else:
            break
    return line


def best_epoch(epochs: list[dict[str, Any]], metric: str = "val.top1") -> dict[str, Any] | None:
    """The epoch with the highest ``metric`` (split.key), or None."""
    split, _, key = metric.partition(".")
    scored = [e for e in epochs if isinstance((e.get(split) or {}).get(key), (int, float))]
    return max(scored, key=lambda e: e[split][key]) if scored else None


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix: config}
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(_flat(value, name) if isinstance(value, dict) and value else {name: value})
    return out


MISSING = "(not set)"


def config_differences(configs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The dotted keys whose values are not the same in every config, with each config's value
    as shown (``(not set)`` where a config lacks the key); keys in order of first appearance."""
    flat = [_flat(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    rows = []
    for key in keys:
        values = [f.get(key, MISSING) for f in flat]
        if any(v != values[0] for v in values[1:]):
            rows.append((key, [v if v is MISSING else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()
                               for v in values]))
    return rows


__all__ = ["STATUSES", "BADGES", "num", "pct", "duration", "size", "val_top1", "as_yaml", "errors_with_lines", "resume_point", "flagged_points", "CHARTED",
           "best_epoch", "config_differences"]
