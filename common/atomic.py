"""Atomic file writes: a reader sees the old file or the new one, never half of either.

The recipe is the classic one: write a temporary file in the *same* directory (so the rename
stays on one filesystem), flush and fsync it, rename it over the target, then fsync the
directory so the rename itself survives a power cut. The temporary file is created with mode
0600 (mkstemp), so the result is readable by its owner only.

Also here, torch-free so the worker and the API can use it: the sha256 every verified file is
named by.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    stage_bytes(path, data).commit()


class StagedWrite:
    """An atomic write cut in two, so the slow half can run elsewhere: :meth:`open` makes a temp
    file beside ``path`` and :meth:`write` puts bytes in it (the page cache, no fsync);
    :meth:`commit` fsyncs it, renames it over ``path`` and fsyncs the directory. Until the commit
    a reader sees the old file, and a crash leaves only a temp file (removed by
    :func:`remove_stale_temp_files`). The temp file's descriptor stays open between the halves:
    an error in writing back its pages is reported to the fsync of a descriptor open while they
    were written."""

    def __init__(self, path: Path, tmp: Path, fd: int) -> None:
        self.path, self.tmp, self._fd = path, tmp, fd

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "StagedWrite":
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
        return cls(path, Path(tmp), fd)

    def write(self, data: "bytes | memoryview") -> int:
        view = memoryview(data).cast("B")
        size = view.nbytes
        while view:  # os.write may write less than asked (a signal, a huge buffer)
            view = view[os.write(self._fd, view):]
        return size

    def commit(self) -> None:
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abandon()
            raise
        fsync_dir(self.path.parent)

    def abandon(self) -> None:
        """Drop the temp file (a commit that will not happen)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.tmp.unlink(missing_ok=True)


def stage_bytes(path: str | os.PathLike[str], data: bytes) -> StagedWrite:
    """The first half of an atomic write (:class:`StagedWrite`). On failure (a full disk) no
    temp file is left."""
    staged = StagedWrite.open(path)
    try:
        staged.write(data)
    except BaseException:
        staged.abandon()
        raise
    return staged


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Strict JSON: NaN and infinities raise instead of becoming invalid ``NaN`` tokens."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False, sort_keys=False) + "\n")


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete temp files a killed writer left behind; return what was removed."""
    removed = []
    directory = Path(directory)
    if directory.is_dir():
        for p in directory.glob(f"{TMP_PREFIX}*"):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one line and flush it to disk. Readers must ignore an incomplete last line."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line.rstrip("\n") + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
