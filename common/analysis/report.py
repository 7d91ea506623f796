"""Result types of the integrity report: strict-JSON-serialisable dataclasses."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("pass", "warn", "fail", "skipped")


@dataclass
class CheckResult:
    """One finding. Several results may share an ``id`` (one per metric/source it concerns)."""

    id: str
    status: str  # pass | warn | fail | skipped
    message: str
    metric: str | None = None
    source: str | None = None
    epochs: list[int] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    reason: str | None = None  # why a check was skipped
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        return json_safe({
            "id": self.id, "status": self.status, "message": self.message, "metric": self.metric,
            "source": self.source, "epochs": [int(e) for e in self.epochs], "values": self.values,
            "reason": self.reason, "details": self.details,
        })

    def summary_line(self) -> str:
        where = " ".join(x for x in (self.metric or "", f"[{self.source}]" if self.source else "") if x)
        text = self.reason if self.status == "skipped" and self.reason else self.message
        return f"{self.status.upper():7} {self.id:<26} {where + ': ' if where else ''}{text}"


@dataclass
class Report:
    """The integrity report. ``verdict`` is fail if any check fails, else warn if any warns."""

    checks: list[CheckResult]
    num_classes: int | None = None
    dataset_sizes: dict[str, int] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)
    last_epoch: int | None = None
    hints: dict[str, Any] = field(default_factory=dict)

    @property
    def strength(self) -> dict[str, Any]:
        """How much the verdict rests on: checks that ran, checks skipped and why. A pass with
        more checks skipped than run is ``weak``: the report could not look at most things."""
        ran = sorted({c.id for c in self.checks if c.status != "skipped"})
        skipped = {c.id: c.reason or c.message for c in self.checks if c.status == "skipped" and c.id not in ran}
        return {"ran": ran, "skipped": skipped,
                "weak": self.verdict == "pass" and len(skipped) > len(ran)}

    @property
    def verdict(self) -> str:
        statuses = {c.status for c in self.checks}
        return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"

    @property
    def ok(self) -> bool:
        return self.verdict != "fail"

    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "fail"]

    def warnings(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "warn"]

    def problems(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status in ("fail", "warn")]

    def by_id(self, check_id: str) -> list[CheckResult]:
        return [c for c in self.checks if c.id == check_id]

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(1 for c in self.checks if c.status == s) for s in STATUSES}
        return json_safe({
            "format": "teacher-integrity/1",
            "verdict": self.verdict,
            "counts": counts,
            "num_classes": self.num_classes,
            "chance_loss": math.log(self.num_classes) if self.num_classes else None,
            "dataset_sizes": self.dataset_sizes,
            "last_epoch": self.last_epoch,
            "strength": self.strength,
            "hints": self.hints,
            "checks": [c.to_dict() for c in self.checks],
            "sources": self.sources,
        })

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def summary(self) -> str:
        lines = [c.summary_line() for c in self.checks]
        strength = self.strength
        used = (self.hints or {}).get("used") or {}
        if used:
            lines.append("hints used: " + ", ".join(f"{k}={v}" for k, v in used.items()))
        for note in (self.hints or {}).get("notes") or []:
            lines.append(f"hint note: {note}")
        weak = (f"; weak: {len(strength['skipped'])} of {len(strength['skipped']) + len(strength['ran'])} checks "
                "skipped" if strength["weak"] else "")
        lines.append(f"verdict: {self.verdict.upper()}"
                     f" ({len(self.failures())} failed, {len(self.warnings())} warnings{weak})")
        return "\n".join(lines)


def json_safe(value: Any) -> Any:
    """Strict JSON: non-finite floats become "nan"/"inf"/"-inf", numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalar
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)
