"""What kind of metrics file an upload is: from its name's extension, confirmed by its first
bytes (and, once stored, by its whole content where a prefix cannot tell).

The readers (:mod:`.readers`) accept paths on a trusted disk; uploads come from anyone, so
their kind is decided here before any reader sees them, and a file whose content does not fit
its name is refused with a human message (:class:`UnknownFormat`).
"""
from __future__ import annotations

import csv
import io
import json
import struct
from enum import StrEnum
from pathlib import Path

# How much of a file the sniff reads.
SNIFF_BYTES = 64 * 1024
TEXT_EXTENSIONS = frozenset({"json", "jsonl", "csv", "log", "txt", "out", "err", "md", "tsv", "yaml", "yml"})
HINT_EXTENSIONS = frozenset({"yaml", "yml"})
UNKNOWN_TYPE = ("unknown file type; upload JSON (.json: history, trainer_state.json, JSON lines), CSV (.csv), "
                "step streams (.jsonl), TensorBoard event files (events.out.tfevents.*), console logs or tables "
                "(.log, .txt, .out, .err, .md, .tsv), or sidecar hints (hparams.yaml, args.yaml as .yaml); the "
                "content decides the format")


class FileKind(StrEnum):
    history = "history"
    csv = "csv"
    steps = "steps"
    tensorboard = "tensorboard"
    log = "log"
    hints = "hints"  # a sidecar (hparams.yaml, args.yaml): read for hints, never as metrics

    @property
    def extension(self) -> str:
        """The extension a stored upload of this kind gets (the readers go by it)."""
        return _EXTENSIONS[self]


_EXTENSIONS = {FileKind.history: ".json", FileKind.steps: ".jsonl", FileKind.csv: ".csv",
               FileKind.tensorboard: ".tfevents", FileKind.log: ".log", FileKind.hints: ".yaml"}


class UnknownFormat(ValueError):
    """The file is not what its name says, or of no kind the analysis reads."""


def sniff(name: str, head: bytes, size: int) -> FileKind:
    """The kind of a file called ``name`` of ``size`` bytes that starts with ``head``."""
    lower = name.lower()
    if "tfevents" in lower:
        if not starts_with_tfrecord(head, size):
            raise UnknownFormat("too short for a TensorBoard event file" if len(head) < 12
                                else "not a TensorBoard event file (its first record is invalid)")
        return FileKind.tensorboard
    ext = lower.rsplit(".", 1)[-1] if "." in lower else ""
    if ext not in TEXT_EXTENSIONS:
        raise UnknownFormat(UNKNOWN_TYPE)
    text = _text_prefix(head, size)
    if ext in HINT_EXTENSIONS:
        return FileKind.hints  # safe-loaded by the hints reader; a bad one is a note, not an error
    if ext == "json":
        return FileKind.history  # parsed in full once stored (check_stored)
    if ext == "jsonl":
        _first_line_is_object(text)
        return FileKind.steps
    if ext == "csv":
        _has_header_row(text)
        return FileKind.csv
    return FileKind.log  # .log .txt .out .err: UTF-8 text, checked in full once stored


def starts_with_tfrecord(head: bytes, size: int) -> bool:
    """Whether ``head`` starts with a valid TFRecord header (an event file is a sequence of
    records): uint64 length, masked crc32c of those 8 bytes, then the payload and its crc.
    The length must fit in the file."""
    if len(head) < 12:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    (crc,) = struct.unpack("<I", head[8:12])
    return _masked_crc32c(head[:8]) == crc and length <= size


def check_stored(path: Path, kind: FileKind, size: int) -> None:
    """What the sniff of a prefix could not tell, on the whole stored file: a history is one
    JSON document; a console log longer than the sniffed prefix is UTF-8 throughout."""
    if kind is FileKind.history:
        try:
            text = path.read_bytes().decode("utf-8")
            json.loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            if isinstance(exc, UnicodeDecodeError) or not _json_lines(text):
                raise UnknownFormat(f"not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    elif kind is FileKind.log and size > SNIFF_BYTES:
        try:
            with path.open(encoding="utf-8") as fh:
                while fh.read(1 << 20):
                    pass
        except UnicodeDecodeError:
            raise UnknownFormat("not UTF-8 text") from None


def _json_lines(text: str) -> bool:
    """Every non-empty line a JSON object (mmcls ``*.log.json``, DeiT ``log.txt``)."""
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        return bool(lines) and all(isinstance(json.loads(line), dict) for line in lines)
    except (ValueError, RecursionError):
        return False


def _masked_crc32c(data: bytes) -> int:
    from common.analysis.tb_events import masked_crc32c  # lazily: it loads TensorBoard's protos

    return masked_crc32c(data)


def _text_prefix(head: bytes, size: int) -> str:
    """``head`` as text; a multi-byte character cut by the sniff's end is not an error."""
    if b"\x00" in head:
        raise UnknownFormat("binary content; expected text (JSON, CSV or a console log)")
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if size <= len(head) or exc.start < len(head) - 4:  # not just a character cut by the sniff
            raise UnknownFormat("not UTF-8 text") from None
        return head[:exc.start].decode("utf-8")


def _first_line_is_object(text: str) -> None:
    first = text.split("\n", 1)[0].strip()
    try:
        if not isinstance(json.loads(first), dict):
            raise ValueError
    except (ValueError, RecursionError):
        raise UnknownFormat("not JSON lines (the first line is not a JSON object)") from None


def _has_header_row(text: str) -> None:
    try:
        header = next(csv.reader(io.StringIO(text.split("\n", 1)[0])))
    except (StopIteration, csv.Error):
        header = []
    if len([h for h in header if h.strip()]) < 2:
        raise UnknownFormat("not a CSV with a header row (e.g. epoch,train_loss,eval_loss)")
