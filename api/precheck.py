"""What ``POST /jobs`` can check about a job's dataset without torch, so that a job that would
fail at its first step fails at submit instead (400 naming the field), not minutes later on a
worker.

It mirrors worker/training/data.py (the loader that has the last word) at the cost of a few
directory listings: class folders are counted, each is probed for one image, and a csv
manifest's label/split columns are read; images are never listed or opened one by one.
Messages name paths relative to the data root only; the server's own paths never appear.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Iterator

from common.config import PathEscapeError, confine

# The loader's list (worker/training/data.py imports torch, so it is not imported here).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
MAX_LISTED = 10

Errors = dict[str, list[str]]


class DataProblem(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def check_data(config: dict[str, Any], data_root: Path) -> Errors:
    """Problems with the dataset a validated config names, as ``{field: [message]}``."""
    data = config["data"]
    try:
        classes = _classes(data, data_root)
    except DataProblem as exc:
        return {exc.field: [exc.message]}
    expected = config["model"].get("num_classes")
    if expected is not None and expected != len(classes):
        return {"model.num_classes": [f"{expected} classes, but dataset '{data['root']}' has {len(classes)} "
                                      f"(in its '{data['train_split']}' split); set it to {len(classes)} or null"]}
    return {}


def _confined(root: Path, relative: str, field: str, shown: str) -> Path:
    try:
        return confine(root, relative, what=field)
    except PathEscapeError:
        raise DataProblem(field, f"'{shown}' leaves the data root (through a symlink)") from None


def _classes(data: dict[str, Any], data_root: Path) -> list[str]:
    name = data["root"]
    root = _confined(data_root, name, "data.root", name)
    if not root.is_dir():
        raise DataProblem("data.root", f"no dataset '{name}' under the data root")
    if data["format"] == "imagefolder":
        return _imagefolder_classes(root, data)
    return _manifest_classes(root, data)


def _class_dirs(root: Path, data: dict[str, Any], key: str) -> dict[str, str]:
    """Class name -> folder of one split (dot-folders skipped, as the loader does)."""
    split = data[key]
    split_dir = _confined(root, split, f"data.{key}", f"{data['root']}/{split}")
    if not split_dir.is_dir():
        raise DataProblem(f"data.{key}", f"no split folder '{split}' in dataset '{data['root']}'")
    try:
        with os.scandir(split_dir) as it:
            return {e.name: e.path for e in it if e.is_dir() and not e.name.startswith(".")}
    except OSError as exc:
        raise DataProblem(f"data.{key}", f"split folder '{split}' cannot be read ({exc.strerror})") from None


def _has_image(folder: str) -> bool:
    """Stops at the first image: never lists a large class folder in full."""
    try:
        with os.scandir(folder) as it:
            return any(e.name.lower().endswith(IMAGE_EXTENSIONS) and not e.name.startswith(".") for e in it)
    except OSError:
        return False


def _listed(names: Iterator[str] | list[str]) -> str:
    names = sorted(names)
    return ", ".join(names[:MAX_LISTED]) + (f" (and {len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else "")


def _imagefolder_classes(root: Path, data: dict[str, Any]) -> list[str]:
    train = _class_dirs(root, data, "train_split")
    val = _class_dirs(root, data, "val_split")
    if not train:
        raise DataProblem("data.root", f"no class folders in '{data['root']}/{data['train_split']}'")
    if set(train) != set(val):
        only_train, only_val = set(train) - set(val), set(val) - set(train)
        raise DataProblem("data.root", f"class folders differ between '{data['train_split']}' and "
                                       f"'{data['val_split']}': only in {data['train_split']}: "
                                       f"{_listed(only_train) or 'none'}; only in {data['val_split']}: {_listed(only_val) or 'none'}")
    empty = [f"{split}/{c}" for split, dirs in ((data["train_split"], train), (data["val_split"], val))
             for c, folder in dirs.items() if not _has_image(folder)]
    if empty:
        raise DataProblem("data.root", f"class folder(s) without images: {_listed(empty)}")
    return sorted(train)


def _manifest_classes(root: Path, data: dict[str, Any]) -> list[str]:
    manifest = _confined(root, data["manifest"], "data.manifest", f"{data['root']}/{data['manifest']}")
    if not manifest.is_file():
        raise DataProblem("data.manifest", f"no manifest '{data['manifest']}' in dataset '{data['root']}'")
    row_filter = data.get("filter")
    allowed = set(row_filter["values"]) if row_filter else None
    labels: dict[str, set[str]] = {data["train_split"]: set(), data["val_split"]: set()}
    try:
        with open(manifest, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            missing = {"path", "label", "split"} - set(columns)
            if missing:
                raise DataProblem("data.manifest", f"manifest '{data['manifest']}' lacks column(s) {sorted(missing)}")
            if row_filter and row_filter["column"] not in columns:
                raise DataProblem("data.filter.column", f"manifest '{data['manifest']}' has no column '{row_filter['column']}'")
            for line_no, row in enumerate(reader, start=2):
                split = labels.get(row["split"] or "")
                if split is None or (allowed is not None and row[row_filter["column"]] not in allowed):
                    continue
                if not row["label"]:
                    raise DataProblem("data.manifest", f"manifest '{data['manifest']}' line {line_no}: empty label")
                split.add(row["label"])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataProblem("data.manifest", f"manifest '{data['manifest']}' cannot be read ({type(exc).__name__})") from None
    suffix = " after the filter" if row_filter else ""
    train, val = labels[data["train_split"]], labels[data["val_split"]]
    for split, found in ((data["train_split"], train), (data["val_split"], val)):
        if not found:
            raise DataProblem("data.manifest", f"manifest '{data['manifest']}' has no '{split}' rows{suffix}")
    if val - train:
        raise DataProblem("data.manifest", f"label(s) in '{data['val_split']}' missing from '{data['train_split']}': "
                                           f"{_listed(val - train)}")
    return sorted(train)
