"""common/analysis/tb_events.py against TensorBoard's own EventAccumulator, the reference: the same
(step, value) pairs per tag, in the same order, for the streams real writers produce (PyTorch's
SummaryWriter, several files in one directory, restarts that TensorBoard purges, files still being
written or damaged) and for random event streams; plus what EventAccumulator does not read as
scalars (TF2's tensor-valued scalars). The files are framed by TensorBoard's own record writer
(tests/support/tensorboard.py: its pure-Python CRC32C, independent of the google-crc32c the reader
uses)."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.compat.proto import event_pb2, summary_pb2, types_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference_crc

from common.analysis.series import AnalysisInputError
from common.analysis.tb_events import CHUNK, masked_crc32c, read_scalars
from common.analysis.tb_reader import read_tensorboard
from tests.support.tensorboard import event_file, frame, tf2_scalar


def version_event(version: str = "brain.Event:2") -> event_pb2.Event:
    return event_pb2.Event(wall_time=1.0, file_version=version)


def scalar_event(step: int, **values: float) -> event_pb2.Event:
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=t.replace("__", "/"), simple_value=v)
                                         for t, v in values.items()])
    return event_pb2.Event(wall_time=2.0 + step, step=step, summary=summary)


def start_event(step: int) -> event_pb2.Event:
    return event_pb2.Event(wall_time=3.0, step=step, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))


def write(path: Path, events: list[event_pb2.Event]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(event_file(events))
    return path


def reference(directory: Path) -> dict[str, tuple[list[int], list[float]]]:
    acc = ea.EventAccumulator(str(directory), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    return {tag: ([e.step for e in acc.Scalars(tag)], [e.value for e in acc.Scalars(tag)])
            for tag in acc.Tags()["scalars"]}


def ours(directory: Path) -> tuple[dict[str, tuple[list[int], list[float]]], list[str]]:
    result = read_scalars(sorted(p for p in directory.iterdir() if "tfevents" in p.name))
    return {tag: (steps.tolist(), values.tolist()) for tag, (steps, values) in result.series.items()}, result.notes


def test_the_checksum_is_tensorboards() -> None:
    for data in (b"", b"a", b"\x00" * 8, bytes(range(256)) * 7):
        assert masked_crc32c(data) == reference_crc(data)


def test_summary_writer_logs_in_several_files_read_as_tensorboard_reads_them(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "tb"
    for session, steps in enumerate((range(0, 40), range(40, 75))):  # two writers: two files, one stream
        writer = SummaryWriter(str(run), filename_suffix=f".{session}")
        for step in steps:
            writer.add_scalar("train/loss", 5.0 / (step + 1), step)
            writer.add_scalar("lr", 0.1 * 0.99 ** step, step)
            if step % 10 == 9:
                writer.add_scalar("val/top1", step / 2.0, step)
        writer.close()
    assert len(list(run.glob("*tfevents*"))) == 2
    series, notes = ours(run)
    assert series == reference(run)
    assert len(series["train/loss"][0]) == 75 and notes == []


def test_a_restart_purges_what_tensorboard_purges(tmp_path: Path) -> None:
    events = [version_event()] + [scalar_event(s, loss=10.0 - s, top1=s) for s in range(1, 11)]
    events += [start_event(6)] + [scalar_event(s, loss=20.0 - s) for s in range(6, 9)]
    write(tmp_path / "events.out.tfevents.1.a", events)
    series, notes = ours(tmp_path)
    assert series == reference(tmp_path)
    assert series["loss"][0] == [1, 2, 3, 4, 5, 6, 7, 8] and series["loss"][1][5] == 14.0
    assert series["top1"][0] == [1, 2, 3, 4, 5]
    assert any("SessionLog.START" in n for n in notes)


def test_without_a_file_version_a_step_going_back_purges_its_tags(tmp_path: Path) -> None:
    events = [scalar_event(s, loss=1.0 * s, acc=2.0 * s) for s in range(1, 8)]
    events += [scalar_event(4, loss=-1.0)] + [scalar_event(s, loss=-1.0 * s) for s in range(5, 7)]
    write(tmp_path / "events.out.tfevents.1.a", events)
    series, notes = ours(tmp_path)
    assert series == reference(tmp_path)
    assert series["loss"][0] == [1, 2, 3, 4, 5, 6] and series["acc"][0] == list(range(1, 8))
    assert any("backwards" in n for n in notes)


def test_a_partial_last_record_ends_the_file_with_a_note(tmp_path: Path) -> None:
    path = write(tmp_path / "events.out.tfevents.1.a", [version_event()] + [scalar_event(s, loss=s) for s in range(50)])
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])  # a writer half-way through its last record
    series, notes = ours(tmp_path)
    assert series == reference(tmp_path)
    assert series["loss"][0] == list(range(49))
    assert any("ends inside a record" in n for n in notes)


@pytest.mark.parametrize("where", ["data", "header"])
def test_a_corrupt_record_ends_the_file_as_in_tensorboard_and_says_so(tmp_path: Path, where: str) -> None:
    records = [frame(e.SerializeToString()) for e in [version_event()] + [scalar_event(s, loss=s) for s in range(30)]]
    at = sum(len(r) for r in records[:21])  # the record of step 20
    data = bytearray(b"".join(records))
    data[at + (14 if where == "data" else 2)] ^= 0x40
    (tmp_path / "events.out.tfevents.1.a").write_bytes(bytes(data))
    series, notes = ours(tmp_path)
    assert series == reference(tmp_path)
    assert series["loss"][0] == list(range(20))
    assert notes == [f"events.out.tfevents.1.a: the record at byte {at} fails its "
                     f"{'header ' if where == 'header' else ''}checksum; the rest of the file is not read"]


def test_a_huge_length_with_a_valid_checksum_reads_no_further_than_the_file(tmp_path: Path) -> None:
    header = struct.pack("<Q", 1 << 60)
    path = write(tmp_path / "events.out.tfevents.1.a", [version_event(), scalar_event(1, loss=1.0)])
    with open(path, "ab") as fh:
        fh.write(header + struct.pack("<I", reference_crc(header)) + b"x" * 100)
    series, notes = ours(tmp_path)
    assert series == {"loss": ([1], [1.0])} and "ends inside a record" in notes[0]


def test_records_spanning_chunks(tmp_path: Path) -> None:
    # Values carrying long tags put records across the 4 MB chunk boundary, one longer than a chunk.
    big = "t" * (CHUNK + 123)
    events = [version_event()] + [scalar_event(s, loss=float(s)) for s in range(3)]
    events.append(event_pb2.Event(step=3, summary=summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=big, simple_value=3.0)])))
    events += [scalar_event(s, loss=float(s)) for s in range(4, 30_000)]
    write(tmp_path / "events.out.tfevents.1.a", events)
    series, notes = ours(tmp_path)
    assert series == reference(tmp_path) and notes == []
    assert series[big] == ([3], [3.0]) and len(series["loss"][0]) == 29_999


def test_a_record_that_is_not_an_event_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "events.out.tfevents.1.a"
    path.write_bytes(frame(version_event().SerializeToString()) + frame(b"\xff\xff\xff\xff not a proto"))
    with pytest.raises(AnalysisInputError, match="not a TensorBoard event"):
        read_tensorboard(path)


@pytest.mark.parametrize("dtype,content", [(types_pb2.DT_FLOAT, False), (types_pb2.DT_FLOAT, True),
                                           (types_pb2.DT_DOUBLE, False),
                                           (types_pb2.DT_DOUBLE, True), (types_pb2.DT_HALF, False)])
def test_tf2_tensor_scalars_are_read_with_the_values_tensorboard_decodes(tmp_path: Path, dtype: int,
                                                                         content: bool) -> None:
    from tensorboard.util import tensor_util

    # As tf.summary.scalar writes them: the scalars plugin's metadata on each tag's first value only.
    events = [version_event()] + [event_pb2.Event(step=s, summary=summary_pb2.Summary(value=[
        tf2_scalar("epoch_loss", 2.5 / (s + 1), dtype, metadata=s == 0, content=content)])) for s in range(6)]
    write(tmp_path / "events.out.tfevents.1.a", events)
    series, _ = ours(tmp_path)
    acc = ea.EventAccumulator(str(tmp_path), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    assert acc.Tags()["scalars"] == []  # EventAccumulator does not list them as scalars
    expected = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors("epoch_loss")]
    assert series["epoch_loss"] == (list(range(6)), expected)
    assert expected[1] == pytest.approx(1.25, rel=1e-3)


def test_tensors_of_other_plugins_are_not_scalars(tmp_path: Path) -> None:
    value = tf2_scalar("text", 1.0, types_pb2.DT_FLOAT, metadata=True)
    value.metadata.plugin_data.plugin_name = "text"
    write(tmp_path / "events.out.tfevents.1.a", [version_event(), event_pb2.Event(
        step=1, summary=summary_pb2.Summary(value=[value])), scalar_event(1, loss=1.0)])
    assert ours(tmp_path)[0] == {"loss": ([1], [1.0])}


def test_keras_style_train_and_validation_directories(tmp_path: Path) -> None:
    for split, offset in (("train", 0.0), ("validation", 0.5)):
        write(tmp_path / split / "events.out.tfevents.1.a", [version_event()] + [
            event_pb2.Event(step=e, summary=summary_pb2.Summary(value=[
                tf2_scalar("epoch_loss", 3.0 - e + offset, types_pb2.DT_FLOAT, metadata=e == 0, content=True),
                tf2_scalar("epoch_accuracy", 0.1 * e + offset / 10, types_pb2.DT_FLOAT, metadata=e == 0,
                              content=True)]))
            for e in range(5)])
    source = read_tensorboard(tmp_path)
    # Until now these logs had no scalars at all here (EventAccumulator lists them as tensors).
    assert sorted(source.series) == ["train.loss", "train.top1", "val.loss", "val.top1"], source
    assert source.series["val.loss"].values.tolist() == pytest.approx([3.5, 2.5, 1.5, 0.5, -0.5])
    assert source.series["val.top1"].values.tolist() == pytest.approx([5.0, 15.0, 25.0, 35.0, 45.0])  # percent
    assert source.series["train.top1"].epochs.tolist() == [1, 2, 3, 4, 5]  # Keras counts from 0


# Random streams: steps that go back and forth, restarts, with and without a file version, tags
# that come and go; whatever the stream, the same scalars as TensorBoard's loader.
_EVENT = st.one_of(
    st.tuples(st.just("scalars"), st.integers(0, 40),
              st.dictionaries(st.sampled_from(["loss", "lr", "val__top1"]),
                              st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=3)),
    st.tuples(st.just("start"), st.integers(0, 40), st.just({})),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(versioned=st.booleans(), stream=st.lists(_EVENT, max_size=40), split=st.integers(0, 40))
def test_random_streams_match_tensorboard(tmp_path_factory: pytest.TempPathFactory, versioned: bool,
                                          stream: list[tuple[str, int, dict[str, float]]], split: int) -> None:
    directory = tmp_path_factory.mktemp("tb")
    events = [version_event()] if versioned else []
    for kind, step, values in stream:
        events.append(scalar_event(step, **values) if kind == "scalars" else start_event(step))
    cut = min(split, len(events))
    write(directory / "events.out.tfevents.1.a", events[:cut])  # two files of one stream
    write(directory / "events.out.tfevents.2.b", events[cut:])
    series, _ = ours(directory)
    assert series == reference(directory)
    for steps, values in series.values():
        assert len(steps) == len(values) and np.all(np.isfinite(values))
