"""The console reader reads a log one line at a time (issue 14): it must give exactly what the
whole-text path (``clean_text`` of the file's text, :func:`parse_console_text`) gives, for any
bytes, and :func:`read_path` must route a big log to it only where the whole-text routing would
have ended in the console reader too."""
from __future__ import annotations

import gc
import io
import json
import math
import random
import tracemalloc
from pathlib import Path

import pytest

from common.analysis.checks import run_checks
from common.analysis.log_reader import (
    DEFAULT_PATTERNS,
    clean_text,
    compile_user_patterns,
    parse_console_text,
    read_console_lines,
    read_console_log,
)
from common.analysis.readers import HEAD_BYTES, read_path, read_text, surely_console_log
from common.analysis.series import AnalysisInputError, RunData, Source

PT_LINE = ("Epoch: [{e}][{i:4d}/500]\tTime  0.512 ( 0.530)\tData  0.001 ( 0.002)\tLoss {loss:.4e} ({avg:.4e})\t"
           "Acc@1  {a:6.2f} ({a:6.2f})\tAcc@5  {a5:6.2f} ({a5:6.2f})\n")


def pt_log(epochs: int, every: int = 10) -> str:
    """A pytorch/examples console log: progress lines, then the evaluation's summary."""
    out = []
    for e in range(epochs):
        for i in range(0, 500, every):
            loss = 6.9 * 0.97 ** e * (1 + 0.01 * math.sin(i))
            out.append(PT_LINE.format(e=e, i=i, loss=loss, avg=loss * 1.01, a=e * 0.9 + i / 1000, a5=min(99, 3 * e)))
        out.append(f" * Acc@1 {min(76.0, e * 1.5):.3f} Acc@5 {min(93.0, e * 2.5):.3f}\n")
    return "".join(out)


def snapshot(source: Source) -> str:
    """Everything a source carries that checks, report and plots read, as JSON (NaN compares)."""
    return json.dumps({
        "describe": source.describe(),
        "series": {n: [s.epochs.tolist(), s.values.tolist(), s.raw_name, s.resolution]
                   for n, s in source.series.items()},
        "steps": {n: [s.steps.tolist(), s.values.tolist(), None if s.epochs is None else s.epochs.tolist()]
                  for n, s in source.steps.items()},
        "within_epoch": {n: {str(e): v for e, v in per.items()} for n, per in source.within_epoch.items()},
        "exact_zero_steps": source.exact_zero_steps, "restarts": source.restarts,
        "detected_unit_metrics": source.detected_unit_metrics,
        "report": run_checks(RunData(sources=[source])).to_dict() if source.series else None,
    }, sort_keys=True)


def whole_text(path: Path, patterns: list[str] | None = None) -> str:
    """The reader as it was: the file's whole text, then its lines."""
    text = path.read_text(encoding="utf-8", errors="replace")
    compiled = compile_user_patterns(patterns) + list(DEFAULT_PATTERNS)
    return snapshot(parse_console_text(text, path.name, str(path), compiled))


def streamed(path: Path, patterns: list[str] | None = None) -> str:
    return snapshot(read_console_log(path, patterns, require_metrics=False))


def lines_of(data: bytes) -> list[str]:
    return list(read_console_lines(io.BytesIO(data)))


def old_lines(data: bytes, tmp_path: Path) -> list[str]:
    path = tmp_path / "lines.log"
    path.write_bytes(data)
    return clean_text(path.read_text(encoding="utf-8", errors="replace"))


TQDM = ("Epoch 0:  10%|#         | 1/10 [00:00<00:01, 9.1it/s, loss=2.31, v_num=0]\r"
        "Epoch 0: 100%|##########| 10/10 [00:01<00:00, 9.3it/s, loss=1.20, v_num=0, val_loss=1.1, val_acc=0.61]\n"
        "Epoch 1:  50%|#####     | 5/10 [00:00<00:00, 9.2it/s, loss=0.99, v_num=0]\r"
        "Epoch 1: 100%|##########| 10/10 [00:01<00:00, 9.2it/s, loss=0.90, v_num=0, val_loss=0.95, val_acc=0.70]\n")
OURS = "".join(f"Epoch {e}/4 [Train]: loss={2 / e:.4f}, top1={20 * e:.2f}%\n"
               f"Epoch {e}/4 [Val]: loss={2.2 / e:.4f}, top1={18 * e:.2f}%\n" for e in range(1, 5))
FASTAI = ("epoch     train_loss  valid_loss  accuracy  time\n"
          "0         1.200000    1.100000    0.610000  00:05\n"
          "\n"
          "1         0.900000    0.950000    0.700000  00:05\n"
          "   \n"
          "2         0.800000    0.900000    0.720000  00:05\n")
NAMES = "Epoch 1\n*****train_loss,train_acc,valid_loss,valid_acc*****\n\n0.9 0.61 1.0 0.58\nEpoch 2\n" \
        "*****train_loss,train_acc,valid_loss,valid_acc*****\n0.7 0.71 0.9 0.66\n"
CASES: dict[str, bytes] = {
    "pt_examples": pt_log(3).encode(),
    "crlf": pt_log(2).replace("\n", "\r\n").encode(),
    "lone_cr": OURS.replace("\n", "\r").encode(),
    "tqdm_progress_bars": TQDM.encode(),
    "ansi_and_syslog_escapes": ("\x1b[32m" + OURS.replace("\n", "\x1b[0m\n", 3) + "#033[1mepoch 5 loss 0.3#033[0m#015"
                                "epoch 6 loss 0.2\n").encode(),
    "last_line_without_newline": (OURS + "Epoch 5/5 [Train]: loss=0.3").encode(),
    "last_line_partial_number": (pt_log(1) + "Epoch: [1][  10/500]\tLoss 6.1").encode(),
    "ends_with_cr": (OURS + "Epoch 5/5 [Train]: loss=0.3\r").encode(),
    "ends_with_syslog_cr": (OURS + "Epoch 5/5 [Train]: loss=0.3#015").encode(),
    "ends_with_escape": (OURS + "\x1b[0m").encode(),
    "escape_only": b"\x1b[0m",
    "very_long_line": ("epoch 1 train_loss 0.9 val_loss 1.0 " + "x=1 " * 60_000 + "val_acc 0.5\n" + OURS).encode(),
    "very_long_progress_line": ("\r".join(f"Epoch 0: {p}%|#| {p}/100 [00:01<00:00, loss={3 - p / 50:.3f}]"
                                          for p in range(1, 101)) * 40 + "\n").encode(),
    "empty": b"",
    "newline_only": b"\n",
    "blank_lines_first": b"\n\r\n\n" + OURS.encode(),
    "whitespace_lines": ("  \n\t\n" + OURS.replace("\n", "\n   \n")).encode(),
    "fastai_table_with_blank_lines": FASTAI.encode(),
    "names_then_values": NAMES.encode(),
    "bom": b"\xef\xbb\xbf" + OURS.encode(),
    "invalid_utf8": OURS.encode().replace(b"loss=", b"lo\xffss=", 2).replace(b"[Val]", b"[Val]\xe2\x82", 1),
    "truncated_utf8_at_end": OURS.encode() + b"epoch 9 loss 0.1\n\xe2\x82",
    "truncated_utf8_before_newline": OURS.encode() + b"epoch 9 loss 0.1 \xf0\x9f\n",
    "non_ascii": ("Époque\n" + OURS.replace("[Train]", "[Train] ✓")).encode(),
    "prefixed_lines": "".join(f"2026-11-26 01:02:0{e} INFO epoch {e} train_loss {1 / e:.3f} val_acc {e / 10:.2f}\n"
                              for e in range(1, 6)).encode(),
    "logger_prefixes": ("2026-11-26 01:02:03,123 - mmcls - INFO - Epoch [1][100/239]\tlr: 1.000e-03, loss: 0.0885\n"
                        "2026-11-26 01:02:04,123 - mmcls - INFO - Epoch(val) [1][12]\taccuracy_top-1: 77.6042, "
                        "accuracy_top-5: 100.0000\n"
                        "I1126 01:02:05.123456 140 train.py:88] epoch 2 train_loss 0.8 val_acc 0.6\n"
                        "[1,mpirank:0,algo-1]<stdout>:[2026-11-26 01:02:06] INFO epoch 3 train_loss 0.7 val_acc 0.7\n"
                        "x - y - 00:43:58train Loss: 0.0138 Acc: 0.5\n").encode(),
    "exact_zero_losses": (pt_log(1) + "".join(PT_LINE.format(e=1, i=i, loss=0.0, avg=0.0, a=100.0, a5=100.0)
                                            for i in range(0, 30, 10))).encode(),
    "nan_loss": OURS.replace("loss=0.5000", "loss=nan").encode() + b"epoch 5 loss nan\n",
    "key_value_records": b"loss: 0.94, acc: 0.65\nloss: 0.80, acc: 0.70\nloss: 0.7, acc: 0.72\n",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_streamed_lines_are_the_whole_texts_lines(name: str, tmp_path: Path) -> None:
    assert lines_of(CASES[name]) == old_lines(CASES[name], tmp_path)


@pytest.mark.parametrize("name", sorted(CASES))
def test_streamed_reader_gives_what_the_whole_text_gave(name: str, tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    path.write_bytes(CASES[name])
    assert streamed(path) == whole_text(path)


def test_user_patterns_read_the_same_lines(tmp_path: Path) -> None:
    path = tmp_path / "custom.log"
    path.write_bytes(b"ep=1 tl 0.9\r\nep=2 tl 0.8\rep=3 tl 0.7\n\nep=4 tl 0.6")
    patterns = [r"ep=(?P<epoch>\d+) tl (?P<train_loss>\S+)"]
    assert streamed(path, patterns) == whole_text(path, patterns)


# Pieces that stress the line splitting and the cleaning: line breaks of every kind, escapes
# (whole, and cut across lines), syslog's #015, bytes that are not UTF-8 or are cut sequences.
PIECES = [b"\n", b"\r", b"\r\n", b"\n\n", b"#015", b"#0", b"15", b"\x1b[0m", b"\x1b[", b"1;32m", b"#033[K", b" ",
          b"\xff", b"\xe2\x82", b"\xac", "é".encode(), b"epoch 3 loss 0.5", b"Epoch 2/5 [Val]: loss=1.25, top1=40.0%",
          b"Epoch: [1][  20/500]\tLoss 2.5e+00 (2.6e+00)\tAcc@1 10.0 (9.0)", b" * Acc@1 12.5 Acc@5 30.0",
          b"val_acc 0.61"]


def test_random_texts_read_the_same(tmp_path: Path) -> None:
    rng = random.Random(14)
    path = tmp_path / "random.log"
    for _ in range(150):
        data = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40)))
        assert lines_of(data) == old_lines(data, tmp_path), data
        path.write_bytes(data)
        assert streamed(path) == whole_text(path), data


# --- read_path: which files go to the streamed reader ---------------------------------------


def old_read_path(path: Path) -> str:
    """read_path as it was for a text file: the whole text, then read_text's routing."""
    try:
        return snapshot(read_text(path, path.read_bytes().decode("utf-8", errors="replace"), None))
    except AnalysisInputError as exc:
        return f"error: {exc}"


def new_read_path(path: Path) -> str:
    try:
        return snapshot(read_path(path))
    except AnalysisInputError as exc:
        return f"error: {exc}"


def padded(head: str, body: str, size: int = 2 * HEAD_BYTES) -> str:
    """``head``, then ``body`` repeated past ``size`` characters (files past the head's size)."""
    return head + body * (size // max(len(body), 1) + 1)


REPR_LINE = ("{'loss': 0.5, 'learning_rate': 0.001, 'epoch': 1.0, 'step': 10}\n"
             "{'eval_loss': 0.4, 'epoch': 1.0, 'step': 10}\n")
ROUTES: dict[str, tuple[str, bool]] = {  # name -> (text, whether it is surely a console log)
    "pt_examples": (pt_log(20), True),
    "timestamp_brackets": (padded("", "[2026-11-26 01:02:03] INFO epoch 1 train_loss 0.9 val_acc 0.5\n"), True),
    "brackets_cut_at_line_end": (padded("[\n", "epoch 1 train_loss 0.9\n"), False),
    "json_list": ("[\n" + ",\n".join(json.dumps({"epoch": e, "loss": 1 / e, "val_loss": 1.1 / e})
                                     for e in range(1, 3000)) + "\n]\n", False),
    "json_lines": ("".join(json.dumps({"epoch": e, "train_loss": 1 / e, "test_acc1": e / 40}) + "\n"
                           for e in range(1, 3000)), False),
    "json_first_line_then_console": (padded('{"epoch": 1}\n', "epoch 1 train_loss 0.9\n"), False),
    "csv": ("epoch,loss,val_loss\n" + "".join(f"{e},{1 / e:.5f},{1.1 / e:.5f}\n" for e in range(1, 4000)), False),
    "python_repr_past_the_head": (padded("", "epoch 1 train_loss 0.9\n") + REPR_LINE, False),
    "long_first_lines": ("x" * (HEAD_BYTES + 10) + "\n" + pt_log(2), False),
    "nothing_recognised": (padded("", "hello world\n"), True),
}


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_read_path_routes_as_the_whole_text_did(name: str, tmp_path: Path) -> None:
    text, console = ROUTES[name]
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8")
    with path.open("rb") as handle:
        assert surely_console_log(path, handle.read(HEAD_BYTES)) is console
    assert new_read_path(path) == old_read_path(path)


# --- memory ------------------------------------------------------------------------------------


def test_reader_does_not_hold_the_file(tmp_path: Path) -> None:
    """A ~20 MB log: the old reader held its text and its lines (over twice the file, counted by
    tracemalloc: 62.8 MB for this one); the streamed one holds a line, a few numbers per progress line
    and the 1 MB block that read_path scans for Python dicts (3.3 MB in all)."""
    path = tmp_path / "big.log"
    # Progress lines to keep (their losses, their running averages), and long lines the reader
    # reads and drops (a config dump, warnings): most of the bytes, few of the allocations.
    filler = "".join(f"warning: option_{i} " + "=" * 2000 + "\n" for i in range(50))
    with path.open("w", encoding="utf-8") as handle:
        for epoch in range(40):
            handle.write(pt_log(1).replace("Epoch: [0]", f"Epoch: [{epoch}]"))
            for _ in range(5):
                handle.write(filler)
    size = path.stat().st_size
    assert size > 20_000_000
    tracemalloc.start()
    try:
        source = read_path(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(source.steps["step.train_loss"]) == 40 * 50
    assert peak < size / 4, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"


def test_what_is_kept_per_progress_line_is_a_few_numbers(tmp_path: Path) -> None:
    """Each progress line leaves its instant loss (step, value, epoch) and its three running
    averages (Source.within_epoch): 48 bytes in float64/int64 arrays; as float objects in lists
    and tuples it was 122 bytes a line."""
    path = tmp_path / "progress.log"
    path.write_text(pt_log(20, every=1), encoding="utf-8")
    gc.collect()
    tracemalloc.start()
    try:
        source = read_console_log(path)
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    lines = len(source.steps["step.train_loss"])
    assert lines == 20 * 500
    assert isinstance(source.within_epoch["train.loss"][1], list)
    assert kept / lines < 64, f"{kept / lines:.0f} bytes kept per progress line"
