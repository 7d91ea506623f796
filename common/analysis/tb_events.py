"""The scalars of TensorBoard event files, read directly: TFRecord framing, CRC32C, Event protos.

Why not TensorBoard's ``EventAccumulator``: without TensorFlow it reads through a pure-Python
compatibility layer (its CRC32C is a Python loop over every byte, each record takes four
buffered reads, each scalar a reservoir insert), about 60 s for a 1,000,000-step log on 2 cores.
Here the framing is ``struct.unpack_from`` over 4 MB chunks, the checksums are google-crc32c's C
code and the protos are TensorBoard's own generated classes (upb), so the same file is read
several times faster. What is kept is exactly what ``EventAccumulator(size_guidance={SCALARS: 0})``
gives as ``Scalars(tag)`` (tests/unit/common/test_tb_events.py compares the two):

- events in file order, the files of one directory in name order (as its DirectoryWatcher);
- TensorBoard's purge of orphaned data: with ``file_version`` 2 or newer, a ``SessionLog.START``
  drops every event of a step at or after its own (a restart from a checkpoint); without a
  version, a summary whose step goes backwards drops its tags' events at or after that step;
- a tag once seen stays listed, even if a purge emptied it;
- a record that is truncated or fails its CRC ends the file, as it does for TensorBoard (a writer
  still appending leaves a partial last record). Unlike TensorBoard, which logs it only at debug
  level, :class:`Scalars` says so in ``notes``: the events after a corrupt record are not read.

One addition: TF2 writers (``tf.summary.scalar``, the Keras TensorBoard callback) store a scalar
as a rank-0 ``tensor`` whose tag's first value carries the ``scalars`` plugin's metadata; those are
read too (``EventAccumulator`` lists them under ``Tensors``, not ``Scalars``).
"""
from __future__ import annotations

import dataclasses
import os
import struct
from array import array
from pathlib import Path
from typing import Iterator

import google_crc32c
from google.protobuf.message import DecodeError
from tensorboard.compat.proto import event_pb2, types_pb2

CHUNK = 4 << 20
_HEADER = struct.Struct("<QI")  # the record's length, then the masked CRC32C of those 8 bytes
_CRC = struct.Struct("<I")
_START = event_pb2.SessionLog.START
_FLOAT_TYPES = {types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_HALF: "half_val",
                types_pb2.DT_BFLOAT16: "half_val"}
_CONTENT_FORMATS = {types_pb2.DT_FLOAT: "<f", types_pb2.DT_DOUBLE: "<d"}
_MASK_DELTA = 0xA282EAD8


class EventFileError(ValueError):
    """A record that passed its checksums but is not an Event proto: not a TensorBoard file."""


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC32C, rotated right by 15 bits, plus a constant (mod 2**32)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


@dataclasses.dataclass
class Scalars:
    """Each tag's steps (``array('q')``) and values (``array('d')``, 8 bytes each rather than a
    Python int and float's 60) in the order read, and what the reading noticed."""

    series: dict[str, tuple[array, array]] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)


def iter_records(path: Path, notes: list[str]) -> Iterator[bytes]:
    """The file's records, each checked against both its CRCs, read in chunks of ``CHUNK``
    bytes. A partial last record (a writer may still be appending it) or a checksum mismatch
    ends the file, with a note in ``notes``. A length is trusted only once its own CRC matched, and
    never read past the file's end, so a damaged header cannot make this allocate its length."""
    with open(path, "rb") as fh:
        buf, base, off = b"", 0, 0  # the bytes read and not yet consumed start at buf[off], file offset base + off
        while True:
            need = _HEADER.size
            if len(buf) - off >= need:
                length, header_crc = _HEADER.unpack_from(buf, off)
                if masked_crc32c(buf[off:off + 8]) != header_crc:
                    notes.append(f"{path.name}: the record at byte {base + off} fails its header checksum; "
                                 "the rest of the file is not read")
                    return
                need += length + _CRC.size
            if len(buf) - off < need:  # read on: at least a chunk, at most what the file still holds
                left = os.fstat(fh.fileno()).st_size - fh.tell()
                more = fh.read(max(0, min(max(CHUNK, need - (len(buf) - off)), left)))
                if not more:
                    if len(buf) > off:
                        notes.append(f"{path.name}: ends inside a record at byte {base + off} ({len(buf) - off} "
                                     "bytes; a writer still appending it, or a truncated copy); not read")
                    return
                base += off
                buf, off = buf[off:] + more, 0
                continue
            start = off + _HEADER.size
            data = buf[start:start + length]
            if masked_crc32c(data) != _CRC.unpack_from(buf, start + length)[0]:
                notes.append(f"{path.name}: the record at byte {base + off} fails its checksum; "
                             "the rest of the file is not read")
                return
            off = start + length + _CRC.size
            yield data


def _tensor_scalar(tensor: object) -> float | None:
    """The value of a rank-0 (or one-element) float tensor, as tf.summary.scalar writes it."""
    field = _FLOAT_TYPES.get(tensor.dtype)  # type: ignore[attr-defined]
    if field is None or any(d.size != 1 for d in tensor.tensor_shape.dim):  # type: ignore[attr-defined]
        return None
    content = tensor.tensor_content  # type: ignore[attr-defined]
    if content:
        fmt = _CONTENT_FORMATS.get(tensor.dtype)  # type: ignore[attr-defined]
        if fmt is None or len(content) != struct.calcsize(fmt):
            return None
        return float(struct.unpack(fmt, content)[0])
    values = getattr(tensor, field)
    if len(values) != 1:
        return None
    if field == "half_val":  # the 16 bits of a half or bfloat16, stored in an int32
        bits = values[0] & 0xFFFF
        if tensor.dtype == types_pb2.DT_HALF:  # type: ignore[attr-defined]
            return float(struct.unpack("<e", struct.pack("<H", bits))[0])
        return float(struct.unpack("<f", struct.pack("<I", bits << 16))[0])
    return float(values[0])


class _Accumulator:
    """EventAccumulator's handling of the events that matter for scalars (see the module doc)."""

    def __init__(self, out: Scalars) -> None:
        self.out = out
        self.file_version: float | None = None
        self.most_recent_step = -1
        self.plugin: dict[str, str] = {}  # tag -> plugin name, from the tag's first metadata

    def add(self, event: event_pb2.Event) -> None:
        if event.HasField("file_version"):
            try:
                self.file_version = float(event.file_version.split("brain.Event:")[-1])
            except ValueError:
                self.file_version = -1.0  # TensorBoard's ParseFileVersion also gives -1 for these
        has_summary = event.HasField("summary")
        if self.file_version is not None and self.file_version >= 2:
            if event.HasField("session_log") and event.session_log.status == _START:
                self._purge(event.step, None)
        elif has_summary and event.step < self.most_recent_step:
            self._purge(event.step, [v.tag for v in event.summary.value])
        else:
            self.most_recent_step = event.step
        if not has_summary:
            return
        series = self.out.series
        for value in event.summary.value:
            tag = value.tag
            if value.HasField("metadata") and tag not in self.plugin:
                self.plugin[tag] = value.metadata.plugin_data.plugin_name
            kind = value.WhichOneof("value")
            if kind == "simple_value":
                number = value.simple_value
            elif kind == "tensor" and self.plugin.get(tag) == "scalars":
                number = _tensor_scalar(value.tensor)
                if number is None:
                    continue
                tag = tag or value.node_name
            else:
                continue
            steps_values = series.get(tag)
            if steps_values is None:
                steps_values = series[tag] = (array("q"), array("d"))
            steps_values[0].append(event.step)
            steps_values[1].append(number)

    def _purge(self, step: int, tags: list[str] | None) -> None:
        purged = 0
        for tag, (steps, values) in self.out.series.items():
            if tags is not None and tag not in tags:
                continue
            keep = [i for i, s in enumerate(steps) if s < step]
            if len(keep) != len(steps):
                purged += len(steps) - len(keep)
                steps[:] = array("q", [steps[i] for i in keep])
                values[:] = array("d", [values[i] for i in keep])
        if purged:
            why = "a restart (SessionLog.START)" if tags is None else "a step going backwards"
            self.out.notes.append(f"{purged} scalar events at step {step} or later were dropped at {why}, "
                                  "as TensorBoard does (orphaned by the restart)")


def read_scalars(files: list[Path]) -> Scalars:
    """The scalars of ``files`` (one directory's event files, or one file) read as one stream, in
    the order given. Raises :class:`EventFileError` for a record that is not an Event."""
    out = Scalars()
    acc = _Accumulator(out)
    parse = event_pb2.Event.FromString
    for path in files:
        for record in iter_records(path, out.notes):
            try:
                event = parse(record)
            except DecodeError as exc:
                raise EventFileError(f"{path.name}: a record is not a TensorBoard event ({exc})") from exc
            acc.add(event)
    return out
