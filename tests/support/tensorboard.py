"""TensorBoard event files built from TensorBoard's own protos and record writer (the framing
SummaryWriter uses, with its pure-Python CRC32C: independent of common/analysis/tb_events.py)."""
from __future__ import annotations

import io
import struct

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.summary.writer.record_writer import RecordWriter


def frame(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC32C, the data, its masked CRC32C."""
    buf = io.BytesIO()
    RecordWriter(buf).write(data)
    return buf.getvalue()


def event_file(events: list[event_pb2.Event]) -> bytes:
    return b"".join(frame(e.SerializeToString()) for e in events)


def tf2_scalar(tag: str, number: float, dtype: int = types_pb2.DT_FLOAT, *, metadata: bool,
               content: bool = False) -> summary_pb2.Summary.Value:
    """A scalar as TF2's tf.summary.scalar writes it: a rank-0 tensor, the ``scalars`` plugin's
    metadata on the tag's first value only (``metadata``); ``content``: the bytes in
    ``tensor_content``, as TF2's C++ writer stores them (Tensor::AsProtoTensorContent)."""
    shape = tensor_shape_pb2.TensorShapeProto()
    if content:
        fmt = "<d" if dtype == types_pb2.DT_DOUBLE else "<f"
        tensor = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, tensor_content=struct.pack(fmt, number))
    elif dtype == types_pb2.DT_DOUBLE:
        tensor = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, double_val=[number])
    elif dtype == types_pb2.DT_HALF:
        bits = struct.unpack("<H", struct.pack("<e", number))[0]
        tensor = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, half_val=[bits])
    else:
        tensor = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, float_val=[number])
    meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    return summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=meta if metadata else None)
