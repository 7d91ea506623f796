"""Analyses of uploaded files (``POST /api/v1/analyses``): storing the uploads under names of
our own, analysing them, and the record that marks an analysis complete.

Nothing a client sends becomes a path: uploads are stored as ``upload_<n>.<ext>`` with the
extension of their sniffed kind (:mod:`.formats`); the client's file name is kept for display
only. An analysis lives in one folder (``inputs/``, ``out/``, ``analysis.json``); the caller
chooses where (the API: ``<analyses root>/<user id>/<analysis id>/``).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable

from common.analysis.hints import Hints
from common.analysis.formats import SNIFF_BYTES, FileKind, UnknownFormat, check_stored, sniff
from common.analysis.service import PLOT_NAMES, SERIES, public_report, strip_base, write_analysis
from common.atomic import atomic_write_text

log = logging.getLogger(__name__)

MAX_FILES = 16
RECORD = "analysis.json"
INPUTS = "inputs"
OUT = "out"
# What the readers raise on malformed uploads: AnalysisInputError (a ValueError), and errors a
# reader to harden lets through (logged). Either way the upload's fault: a 400, never a 500.
READER_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError)


class UploadRejected(ValueError):
    """An upload cannot be analysed: ``message`` starts with the multipart ``field`` at fault,
    ``detail`` (default: the message) is what is said under that field."""

    def __init__(self, field: str, message: str, detail: str | None = None):
        super().__init__(message)
        self.field = field
        self.message = message
        self.errors = {field: [detail or message]}


@dataclass(frozen=True)
class IncomingFile:
    field: str
    filename: str | None  # the client's name for it: display only
    stream: BinaryIO


@dataclass(frozen=True)
class UploadedFile:
    field: str
    filename: str | None  # sanitised for display
    stored_as: str
    kind: FileKind
    size: int


@dataclass(frozen=True)
class AnalysisRecord:
    """analysis.json: who uploaded what, written last (its presence marks the analysis complete)."""

    id: str
    user: str
    user_id: int
    created_at: dt.datetime
    num_classes: int | None
    files: list[UploadedFile]

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "created_at": self.created_at.isoformat(),
                           "files": [{**dataclasses.asdict(f), "kind": f.kind.value} for f in self.files]})

    @classmethod
    def read(cls, folder: Path) -> "AnalysisRecord":
        meta = json.loads((folder / RECORD).read_text())
        files = [UploadedFile(**{**f, "kind": FileKind(f["kind"])}) for f in meta.pop("files")]
        return cls(**{**meta, "created_at": dt.datetime.fromisoformat(meta["created_at"]), "files": files})


@dataclass(frozen=True)
class StoredAnalysis:
    """A complete analysis folder, as clients see it."""

    record: AnalysisRecord
    report: dict[str, Any]  # without server paths
    plots: list[str]
    # Per-epoch curves (service.epoch_series), stored when the analysis was made: the report
    # page draws them without reading the uploads again. None: made before series were stored.
    series: list[dict[str, Any]] | None = None


def is_complete(folder: Path) -> bool:
    return (folder / RECORD).is_file()


def load_analysis(folder: Path) -> StoredAnalysis:
    out = folder / OUT
    report = json.loads((out / "report.json").read_text())
    return StoredAnalysis(AnalysisRecord.read(folder), public_report(report, folder / INPUTS),
                          [name for name in PLOT_NAMES if (out / f"{name}.png").is_file()], _read_series(out))


def _read_series(out: Path) -> list[dict[str, Any]] | None:
    try:
        series = json.loads((out / SERIES).read_text())
    except FileNotFoundError:
        return None  # an analysis made before the series were stored: its page shows the PNGs
    return series if isinstance(series, list) else None


def create_analysis(folder: Path, incoming: Iterable[IncomingFile], *, analysis_id: str, user: str, user_id: int,
                    num_classes: int | None, patterns: tuple[str, ...], hints: Hints | None = None) -> StoredAnalysis:
    """Store and analyse the uploads in ``folder`` (which must not exist). Raises
    :class:`UploadRejected`; nothing is left behind when anything fails."""
    inputs = folder / INPUTS
    inputs.mkdir(parents=True)
    try:
        files = save_uploads(incoming, inputs)
        _analyse(inputs, files, folder / OUT, num_classes, patterns, analysis_id, hints)
        record = AnalysisRecord(id=analysis_id, user=user, user_id=user_id, num_classes=num_classes, files=files,
                                created_at=dt.datetime.now(dt.timezone.utc))
        atomic_write_text(folder / RECORD, record.to_json())  # written last: marks it complete
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return load_analysis(folder)


def save_uploads(incoming: Iterable[IncomingFile], inputs: Path) -> list[UploadedFile]:
    saved: list[UploadedFile] = []
    for index, item in enumerate(incoming):
        shown = display_name(item.filename)
        label = f"{item.field}[{index}] ({shown or 'unnamed'})"
        if index >= MAX_FILES:
            raise UploadRejected(item.field, f"{item.field}: at most {MAX_FILES} files per analysis")
        head = item.stream.read(SNIFF_BYTES)
        item.stream.seek(0, io.SEEK_END)
        size = item.stream.tell()
        item.stream.seek(0)
        if size == 0:
            raise UploadRejected(item.field, f"{label}: the file is empty")
        try:
            kind = sniff(item.filename or "", head, size)
            stored = f"upload_{index}{kind.extension}"
            with (inputs / stored).open("wb") as fh:
                shutil.copyfileobj(item.stream, fh)
            check_stored(inputs / stored, kind, size)
        except UnknownFormat as exc:
            raise UploadRejected(item.field, f"{label}: {exc}") from None
        saved.append(UploadedFile(field=item.field, filename=shown, stored_as=stored, kind=kind, size=size))
    return saved


def display_name(name: str | None) -> str | None:
    """The last part of a client's file name, printable, at most 200 characters."""
    if not name:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch if ch.isprintable() else "?" for ch in name)[:200] or None


def display_names(files: list[UploadedFile]) -> dict[str, str]:
    """stored name -> the name reports and plot legends show: the client's (sanitised) file
    name, made unique with the stored name when two uploads share one. Display only."""
    counts: dict[str, int] = {}
    for f in files:
        if f.filename:
            counts[f.filename] = counts.get(f.filename, 0) + 1
    return {f.stored_as: (f.filename if f.filename and counts[f.filename] == 1
                          else f"{f.filename or 'unnamed'} ({f.stored_as})") for f in files}


def _analyse(inputs: Path, files: list[UploadedFile], out: Path, num_classes: int | None,
             patterns: tuple[str, ...], analysis_id: str, hints: Hints | None = None) -> None:
    try:
        write_analysis([inputs / f.stored_as for f in files], out, num_classes=num_classes, patterns=patterns,
                       display_names=display_names(files), hints=hints, series=True)
    except READER_ERRORS as exc:
        from common.analysis.series import AnalysisInputError

        if not isinstance(exc, AnalysisInputError):
            log.warning("analysis %s: reader error on uploaded files", analysis_id, exc_info=exc)
        raise _rejection(strip_base(str(exc), inputs) or type(exc).__name__, files) from None


def _rejection(message: str, files: list[UploadedFile]) -> UploadRejected:
    """The reader's message, blamed on the upload it names (by its stored name)."""
    message = for_form(message)
    if message.startswith("pattern "):  # a bad regex is the pattern field's fault
        return UploadRejected("pattern", f"pattern: {message}", message)
    culprit = next((f for f in files if message.startswith(f.stored_as)), None)
    if culprit is not None and culprit.filename:
        message = message.replace(culprit.stored_as, f"{culprit.stored_as} ({culprit.filename})", 1)
    field = culprit.field if culprit is not None else "files"
    return UploadRejected(field, f"{field}: cannot analyse the upload: {message}", message)


def for_form(message: str) -> str:
    """The readers speak to ``teacher analyze`` users; the upload's option is a form field."""
    return (message.replace("pass --pattern REGEX", "send a `pattern` form field (a regex)")
            .replace("--pattern ", "pattern "))
