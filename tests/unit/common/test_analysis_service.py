"""common/analysis/service.py, formats.py and uploads.py, without the API: the cached report of a
run directory, what kind an upload is, and storing and analysing uploads."""
from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

import pytest

from common.analysis.formats import FileKind, UnknownFormat, sniff, starts_with_tfrecord
from common.analysis.service import NoMetrics, public_report, run_analysis, write_analysis
from common.analysis.synthetic import SyntheticRun, write_synthetic_run
from common.analysis.uploads import IncomingFile, UploadRejected, create_analysis, display_name, load_analysis


def tfrecord_header(length: int) -> bytes:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    head = struct.pack("<Q", length)
    return head + struct.pack("<I", masked_crc32c(head))


# ------------------------------------------------------------------------------ formats
def test_tfrecord_framing():
    assert starts_with_tfrecord(tfrecord_header(10) + b"x" * 14, 24)
    assert not starts_with_tfrecord(tfrecord_header(100) + b"x" * 14, 24)  # longer than the file
    assert not starts_with_tfrecord(b"\x10" + b"\x00" * 11, 24)  # wrong crc
    assert not starts_with_tfrecord(tfrecord_header(1)[:11], 11)


@pytest.mark.parametrize("name, head, kind", [
    ("events.out.tfevents.1.host", tfrecord_header(4) + b"data1234", FileKind.tensorboard),
    ("history.json", b"{\"loss\": [1]}", FileKind.history),
    ("steps.jsonl", b"{\"step\": 1}\n{\"step\": 2}\n", FileKind.steps),
    ("summary.csv", b"epoch,train_loss\n1,0.5\n", FileKind.csv),
    ("console.OUT", b"epoch 1 loss=0.5\n", FileKind.log),
])
def test_sniff_by_name_confirmed_by_content(name, head, kind):
    assert sniff(name, head, len(head)) is kind
    assert kind.extension.startswith(".")


@pytest.mark.parametrize("name, head, fragment", [
    ("tool.exe", b"MZ", "unknown file type"),
    ("events.out.tfevents.1", b"short", "too short"),
    ("events.out.tfevents.1", b"\x10" + b"\x00" * 20, "first record is invalid"),
    ("a.log", b"\x00\x01", "binary"),
    ("a.jsonl", b"[1, 2]\n", "JSON lines"),
    ("a.csv", b"onecolumn\n1\n", "header row"),
    ("a.log", b"\xff\xfe" + b"x" * 100, "not UTF-8"),
])
def test_sniff_refuses_content_that_does_not_fit(name, head, fragment):
    with pytest.raises(UnknownFormat, match=fragment):
        sniff(name, head, len(head))


def test_a_character_cut_by_the_sniff_is_not_an_error():
    text = ("é" * 10).encode()
    assert sniff("a.log", text[:-1], len(text)) is FileKind.log


# ------------------------------------------------------------------------------ run directories
@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    write_synthetic_run(run, SyntheticRun(epochs=3))
    return run


def test_run_analysis_is_cached_until_the_inputs_change(run_dir):
    first = run_analysis(run_dir)
    assert first.report["last_epoch"] == 3 and "loss" in first.plots()
    assert str(run_dir) not in json.dumps(first.report)  # sources named relative to the run
    report_file = first.out / "report.json"
    stamp = report_file.stat().st_mtime_ns
    assert run_analysis(run_dir).report == first.report
    assert report_file.stat().st_mtime_ns == stamp  # not recomputed
    log = run_dir / "train.log"
    log.write_text(log.read_text() + "one more line\n")
    os.utime(log, ns=(stamp + 10**9, stamp + 10**9))
    run_analysis(run_dir)
    assert report_file.stat().st_mtime_ns != stamp
    assert first.plot_bytes("loss")[:8] == b"\x89PNG\r\n\x1a\n"
    assert first.plot_bytes("../report") is None


def test_a_run_without_metrics_is_no_metrics(tmp_path):
    (tmp_path / "train.log").write_text("starting\n")
    with pytest.raises(NoMetrics):
        run_analysis(tmp_path)


def test_write_analysis_renames_sources_for_display(run_dir, tmp_path):
    report, plots = write_analysis([run_dir / "history.json"], tmp_path / "out",
                                   display_names={"history.json": "mine.json"}, plots=False)
    assert plots == {} and [s["name"] for s in report.to_dict()["sources"]] == ["mine.json"]
    assert (tmp_path / "out" / "report.json").is_file()


def test_public_report_names_sources_relative_to_the_base(tmp_path):
    report = {"sources": [{"path": str(tmp_path / "a" / "h.json")}, {"path": "/elsewhere/x.log"}],
              "checks": [{"message": f"{tmp_path}/a/h.json: fine"}]}
    public = public_report(report, tmp_path)
    assert [s["path"] for s in public["sources"]] == ["a/h.json", "x.log"]
    assert public["checks"][0]["message"] == "a/h.json: fine"


# ------------------------------------------------------------------------------ uploads
def incoming(*files: tuple[str, bytes]) -> list[IncomingFile]:
    return [IncomingFile("files", name, io.BytesIO(data)) for name, data in files]


def test_create_analysis_stores_under_our_names_and_reads_back(tmp_path):
    history = json.dumps({"loss": [2.0, 1.5, 1.2], "val_loss": [2.1, 1.7, 1.4]}).encode()
    folder = tmp_path / "a1"
    made = create_analysis(folder, incoming(("../../evil.json", history)), analysis_id="a1", user="alice",
                           user_id=1, num_classes=10, patterns=())
    assert [f.stored_as for f in made.record.files] == ["upload_0.json"]
    assert made.record.files[0].filename == "evil.json" and made.record.files[0].kind is FileKind.history
    assert sorted(p.name for p in (folder / "inputs").iterdir()) == ["upload_0.json"]
    again = load_analysis(folder)
    assert again.record == made.record and again.report == made.report and again.plots == made.plots


@pytest.mark.parametrize("files, field, fragment", [
    ((("history.json", b"{not json"),), "files", "not valid JSON"),
    ((("a.log", b""),), "files", "empty"),
    ((("hello.log", b"no metrics in here\n"),), "files", "hello.log"),
])
def test_a_rejected_upload_leaves_nothing_behind(tmp_path, files, field, fragment):
    folder = tmp_path / "a2"
    with pytest.raises(UploadRejected) as info:
        create_analysis(folder, incoming(*files), analysis_id="a2", user="alice", user_id=1, num_classes=None,
                        patterns=())
    assert info.value.field == field and fragment in info.value.message and list(info.value.errors) == [field]
    assert info.value.message.startswith(field)
    assert not folder.exists()


def test_display_name():
    assert display_name("C:\\Users\\x\\run.log") == "run.log"
    assert display_name("a\x00b.log") == "a?b.log"
    assert display_name("") is None and display_name(None) is None
