"""Low-level readers of run-directory files, by byte: bounded JSON, and the tail and follow of
an append-only log, tolerant of files that do not exist yet and of an incomplete last line.

File names and record types are :mod:`common.rundir`'s (which reads its JSON through
:func:`read_json`); this module knows no file name (docs/run-directory.md)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MAX_JSON_BYTES = 64 << 20


def read_json(path: Path) -> Any | None:
    """Parsed JSON, or None when the file does not exist yet. Files are replaced atomically, so
    a partial read cannot happen; a corrupt file is a real error and propagates."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_JSON_BYTES:
        raise ValueError(f"{path.name} is larger than {MAX_JSON_BYTES} bytes")
    return json.loads(data)


Event = tuple[int, str]  # (byte offset just after the line, the line's text)


def _events(data: bytes, base: int) -> list[Event]:
    """Lines of ``data`` (read from byte ``base`` of the file), each with the file offset just
    after its newline: a client that saw an event can resume exactly after it. A chunk holding
    carriage returns (progress bars) becomes several lines sharing one offset, as before."""
    out: list[Event] = []
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        for text in data[pos:end].decode("utf-8", errors="replace").splitlines():
            out.append((base + end, text))
        pos = end
    return out


def tail_events(path: Path, n: int, *, include_partial: bool = False) -> tuple[list[Event], int]:
    """The last ``n`` complete lines with their end offsets, and the byte offset just after
    them (where following should continue)."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return [], 0
    with fh:
        end = fh.seek(0, os.SEEK_END)
        block, data, pos = 64 * 1024, b"", end
        while pos > 0 and data.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
    complete_end = len(data) if include_partial or data.endswith(b"\n") else data.rfind(b"\n") + 1
    start = 0
    if pos > 0:  # the first line in `data` may be cut; we read more than n lines so drop it
        start = data.find(b"\n") + 1
    events = _events(data[start:complete_end], pos + start)
    return events[-n:], pos + complete_end


def tail_lines(path: Path, n: int, *, include_partial: bool = False) -> tuple[list[str], int]:
    """The last ``n`` complete lines and the byte offset just after them."""
    events, offset = tail_events(path, n, include_partial=include_partial)
    return [text for _, text in events], offset


def read_new_events(path: Path, offset: int, *, include_partial: bool = False) -> tuple[list[Event], int]:
    """Lines appended since ``offset`` (complete ones, and the unterminated last one with
    ``include_partial``), with their end offsets, and the new offset. An offset beyond the end
    (the file was replaced) starts over from 0."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return [], offset
    with fh:
        size = fh.seek(0, os.SEEK_END)
        if size < offset:  # truncated/replaced: start over
            offset = 0
        fh.seek(offset)
        data = fh.read(min(size - offset, 4 << 20))
    cut = len(data) if include_partial and offset + len(data) == size else data.rfind(b"\n") + 1
    if cut == 0:
        return [], offset
    return _events(data[:cut], offset), offset + cut


def read_new_lines(path: Path, offset: int) -> tuple[list[str], int]:
    """Complete lines appended since ``offset``, and the new offset."""
    events, offset = read_new_events(path, offset)
    return [text for _, text in events], offset
