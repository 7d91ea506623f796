"""Reading a job's run directory from the API: tolerant of files that do not exist yet and of
the incomplete last line of an append-only log (see docs/run-directory.md)."""
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


def tail_lines(path: Path, n: int, *, include_partial: bool = False) -> tuple[list[str], int]:
    """The last ``n`` complete lines and the byte offset just after them (where following
    should continue)."""
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
    body = data[:complete_end]
    lines = body.decode("utf-8", errors="replace").splitlines()
    if pos > 0:  # the first line in `data` may be cut; we read more than n lines so drop it
        lines = lines[1:]
    return lines[-n:], pos + complete_end


def read_new_lines(path: Path, offset: int) -> tuple[list[str], int]:
    """Complete lines appended since ``offset``, and the new offset."""
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
    cut = data.rfind(b"\n") + 1
    if cut == 0:
        return [], offset
    return data[:cut].decode("utf-8", errors="replace").splitlines(), offset + cut
