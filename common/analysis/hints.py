"""What is known about a run besides its numbers: class count, label smoothing, mixup/CutMix,
EMA, pretrained weights, the accuracy unit. Hints turn a bare warning into one that names its
innocent explanation, and give the checks that need C (chance loss ln C) their C.

They come from the user (``teacher analyze --num-classes/--label-smoothing/...``, the same form
fields of ``POST /analyses``) and from sidecar files next to a log: Lightning's
``hparams.yaml``, timm/ultralytics ``args.yaml``, Hugging Face ``config.json``, our own
``config.yaml``. Sidecars are YAML *safe*-loaded (or JSON): never unpickled. Real Lightning
``hparams.yaml`` files hold ``!!python/object`` tags for pickled tensors; such a file is skipped
with a note, not an error. A user's hint always wins over a sidecar's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

SIDECARS = ("hparams.yaml", "args.yaml", "config.json", "config.yaml", "opt.yaml")
MAX_SIDECAR_BYTES = 1 << 20
ACCURACY_UNITS = ("percent", "fraction")

# Key names (lower case, as found anywhere in the sidecar's nesting) and what they say.
_CLASS_KEYS = ("num_classes", "nb_classes", "n_classes", "num_labels", "nc", "classes_num", "class_num")
_SMOOTHING_KEYS = ("label_smoothing", "smoothing", "smooth", "label_smooth")
_MIXUP_KEYS = ("mixup", "mixup_alpha", "cutmix", "cutmix_alpha", "mix_up", "cut_mix")
_EMA_KEYS = ("model_ema", "ema", "use_ema", "ema_decay", "model_ema_decay")
_PRETRAINED_KEYS = ("pretrained", "pretrain", "init_from", "initial_checkpoint", "finetune", "pretrained_weights",
                    "_name_or_path", "model_name_or_path", "weights")


@dataclass
class Hints:
    """Every field None = unknown. ``origin`` says where each known one came from."""

    num_classes: int | None = None
    label_smoothing: float | None = None
    mixup: bool | None = None
    ema: bool | None = None
    pretrained: bool | None = None
    accuracy_unit: str | None = None
    origin: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def known(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("origin", "notes") and getattr(self, f.name) is not None}

    def fill_from(self, other: "Hints") -> None:
        """Take what ``other`` knows and this does not (the user's hints are applied first)."""
        for name, value in other.known().items():
            if getattr(self, name) is None:
                setattr(self, name, value)
                self.origin[name] = other.origin.get(name, "")
        self.notes.extend(n for n in other.notes if n not in self.notes)

    def to_dict(self) -> dict[str, Any]:
        return {"used": self.known(), "from": {k: v for k, v in self.origin.items() if k in self.known()},
                "notes": list(self.notes)}


def user_hints(*, num_classes: int | None = None, label_smoothing: float | None = None, mixup: bool | None = None,
               ema: bool | None = None, pretrained: bool | None = None, accuracy_unit: str | None = None,
               origin: str = "given") -> Hints:
    hints = Hints(num_classes=num_classes, label_smoothing=label_smoothing, mixup=mixup, ema=ema,
                  pretrained=pretrained, accuracy_unit=accuracy_unit)
    hints.origin = {k: origin for k in hints.known()}
    return hints


def sidecar_hints(folder: Path) -> Hints:
    """Hints from the known sidecar files in ``folder`` (first file that says a thing wins)."""
    hints = Hints()
    for name in SIDECARS:
        path = folder / name
        if path.is_file():
            hints.fill_from(read_sidecar(path))
    return hints


def read_sidecar(path: Path, shown: str | None = None) -> Hints:
    """One sidecar file's hints; an unreadable or unsafe file gives a note, never an error."""
    label = shown or path.name
    hints = Hints()
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            hints.notes.append(f"{label}: larger than 1 MiB, not read for hints")
            return hints
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        hints.notes.append(f"{label}: not readable for hints ({type(exc).__name__})")
        return hints
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except yaml.constructor.ConstructorError:
        hints.notes.append(f"{label}: holds Python/pickle tags (e.g. !!python/object); skipped, never unpickled")
        return hints
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        hints.notes.append(f"{label}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({type(exc).__name__}); "
                           "skipped")
        return hints
    if isinstance(data, dict):
        hints_from_mapping(data, hints, label)
    return hints


def hints_from_mapping(data: dict, hints: Hints, label: str) -> None:
    flat = _flatten(data)
    if "id2label" in flat and isinstance(flat["id2label"], dict) and len(flat["id2label"]) >= 2:
        _set(hints, "num_classes", len(flat["id2label"]), f"{label}: id2label")
    for key in _CLASS_KEYS:
        value = flat.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 2:
            _set(hints, "num_classes", value, f"{label}: {key}")
    for key in _SMOOTHING_KEYS:
        value = flat.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1:
            _set(hints, "label_smoothing", float(value), f"{label}: {key}")
    for attr, keys in (("mixup", _MIXUP_KEYS), ("ema", _EMA_KEYS), ("pretrained", _PRETRAINED_KEYS)):
        for key in keys:
            if key in flat and flat[key] is not None:
                _set(hints, attr, _truthy(flat[key]), f"{label}: {key}")


def _set(hints: Hints, name: str, value: Any, origin: str) -> None:
    if getattr(hints, name) is None or (isinstance(value, bool) and value and getattr(hints, name) is False):
        setattr(hints, name, value)
        hints.origin[name] = origin


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value > 0
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "none", "null", "off")
    return bool(value)


def _flatten(data: Any) -> dict[str, Any]:
    """Every key of nested mappings (at most 6 levels down), lower-cased; the shallowest
    occurrence wins. Breadth-first, each mapping once: YAML aliases make one mapping appear
    under many keys, and walking it again for each would grow as k**depth (a 1 KB upload could
    pin an API worker for hours)."""
    out: dict[str, Any] = {}
    seen: set[int] = set()
    level = [data] if isinstance(data, dict) else []
    for _depth in range(7):
        nested = []
        for mapping in level:
            if id(mapping) in seen:
                continue
            seen.add(id(mapping))
            for key, value in mapping.items():
                out.setdefault(str(key).lower(), value)
                if isinstance(value, dict):
                    nested.append(value)
        level = nested
    return out
