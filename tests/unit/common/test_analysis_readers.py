"""Readers: every input format becomes the same canonical series."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from common.analysis.log_reader import read_console_log
from common.analysis.readers import load_inputs, read_csv, read_history_json, read_path, read_run_dir
from common.analysis.series import AnalysisInputError, map_metric_name
from common.analysis.steps_reader import read_steps_jsonl
from common.analysis.synthetic import SyntheticRun, write_synthetic_run


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    write_synthetic_run(tmp_path / "run")
    return tmp_path / "run"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("raw, canonical", [
    ("loss", "train.loss"), ("accuracy", "train.top1"), ("val_loss", "val.loss"), ("val_accuracy", "val.top1"),
    ("train_top1_acc", "train.top1"), ("eval_top5", "val.top5"), ("train/loss", "train.loss"),
    ("validation/epoch_loss", "val.loss"), ("train_loss_epoch", "train.loss"), ("train_loss_step", "step.train_loss"),
    ("step/train_loss", "step.train_loss"), ("lr-SGD", "lr"), ("Acc@1", "train.top1"), ("val_acc", "val.top1"),
])
def test_metric_names_map_to_the_canonical_vocabulary(raw: str, canonical: str) -> None:
    assert map_metric_name(raw)[0] == canonical


def test_unknown_names_are_not_mapped() -> None:
    assert map_metric_name("v_num") is None and map_metric_name("time") is None


def test_run_dir_yields_history_steps_and_log_sources(run_dir: Path) -> None:
    run = read_run_dir(run_dir)
    assert [s.name for s in run.sources] == ["history.json", "steps.jsonl", "train.log"]
    assert run.num_classes == 12 and run.dataset_sizes == {"train": 960, "val": 240} and run.batch_size == 32
    history, steps, log = run.sources
    for name in ("train.loss", "val.top5", "train.samples"):
        np.testing.assert_allclose(steps.series[name].values, history.series[name].values, rtol=1e-12)
        np.testing.assert_allclose(log.series[name].values, history.series[name].values, atol=0.006)
    assert history.series["val.loss"].epochs.tolist() == [1, 2, 3, 4, 5, 6]
    assert log.series["train.throughput"].values[0] == pytest.approx(401.0)
    assert "step.train_loss" in steps.steps and len(steps.steps["step.train_loss"]) == 6 * 3


def test_config_yaml_gives_num_classes_without_history(tmp_path: Path) -> None:
    write(tmp_path / "config.yaml", "model:\n  arch: resnet18\n  num_classes: 37\n")
    run = read_run_dir(tmp_path)
    assert run.num_classes == 37 and run.sources == []


def test_history_nonfinite_values_are_restored(tmp_path: Path) -> None:
    data = {"format": "teacher-history/1", "accuracy_unit": "percent", "num_classes": 3, "epochs": [
        {"epoch": 1, "train": {"loss": 1.0, "top1": 40.0}, "val": {"loss": None, "top1": 50.0}, "nonfinite": {"val.loss": "inf"}}]}
    source = read_history_json(write(tmp_path / "history.json", json.dumps(data)))
    assert math.isinf(source.series["val.loss"].values[0])
    assert source.series["val.top1"].values[0] == 50.0  # declared percent, not rescaled


def test_keras_history_fraction_accuracy_becomes_percent(tmp_path: Path) -> None:
    path = write(tmp_path / "h.json", json.dumps({"loss": [1.2, 0.8], "accuracy": [0.55, 0.71],
                                                 "val_loss": [1.1, 0.9], "val_accuracy": [0.6, 0.7]}))
    source = read_history_json(path)
    assert source.series["train.top1"].values.tolist() == pytest.approx([55.0, 71.0])
    assert source.mapping["accuracy"] == "train.top1" and source.mapping["val_accuracy"] == "val.top1"
    assert any("fraction detected" in n for n in source.notes)


def test_list_of_records_history(tmp_path: Path) -> None:
    records = [{"epoch": e, "train_loss": 2.0 / e, "val_acc": 30.0 + e} for e in (1, 2, 3)]
    source = read_history_json(write(tmp_path / "records.json", json.dumps(records)))
    assert source.series["val.top1"].values.tolist() == [31.0, 32.0, 33.0]
    assert source.series["train.loss"].epochs.tolist() == [1, 2, 3]


def test_timm_summary_csv_is_shifted_to_one_based_epochs(tmp_path: Path) -> None:
    path = write(tmp_path / "summary.csv", "epoch,train_loss,eval_loss,eval_top1,eval_top5,lr\n"
                 "0,6.9,6.5,1.5,5.0,0.1\n1,6.0,5.6,8.0,20.0,0.09\n")
    source = read_csv(path)
    assert source.series["val.top1"].epochs.tolist() == [1, 2]
    assert source.series["val.top1"].values.tolist() == [1.5, 8.0]  # has values > 1: percent
    assert source.series["lr"].values.tolist() == [0.1, 0.09]


def test_lightning_metrics_csv_separates_step_rows(tmp_path: Path) -> None:
    rows = ["epoch,step,train_loss_step,train_loss_epoch,val_loss,val_acc"]
    for epoch in range(2):
        for step in range(3):
            rows.append(f"{epoch},{epoch * 3 + step},{1.0 - 0.1 * step},,,")
        rows.append(f"{epoch},{epoch * 3 + 2},,,{0.9 - 0.1 * epoch},{0.5 + 0.1 * epoch}")
        rows.append(f"{epoch},{epoch * 3 + 2},,{0.95 - 0.1 * epoch},,")
    source = read_csv(write(tmp_path / "metrics.csv", "\n".join(rows) + "\n"))
    assert source.series["train.loss"].epochs.tolist() == [1, 2]
    assert source.series["val.top1"].values.tolist() == pytest.approx([50.0, 60.0])
    assert len(source.steps["step.train_loss"]) == 6


def test_raw_fastai_history_csv_reads_validation_metrics(tmp_path: Path) -> None:
    """fastai v2's CSVLogger: 0-based epochs, unprefixed metrics computed on validation, a
    ``time`` column of mm:ss that is not a metric."""
    path = write(tmp_path / "history.csv", "epoch,train_loss,valid_loss,accuracy,time\n"
                 "0,0.81,0.46,0.89,04:39\n1,0.62,0.41,0.88,04:36\n2,0.50,0.33,0.90,04:34\n")
    source = read_path(path)
    assert source.format == "fastai_csv"
    assert source.series["val.top1"].epochs.tolist() == [1, 2, 3]
    assert source.series["val.top1"].values.tolist() == pytest.approx([89.0, 88.0, 90.0])
    assert "train.top1" not in source.series and "time" not in source.mapping


FASTAI_V1_APPENDED = ("epoch,train_loss,valid_loss,accuracy,auroc\n"
                      "0,4.999118,#na#\n"  # learn.lr_find(): no validation
                      "epoch,train_loss,valid_loss,accuracy,auroc\n"
                      "0,0.425735,0.412875,0.841378,0.809488\n"  # fit_one_cycle(1)
                      "epoch,train_loss,valid_loss,accuracy,auroc\n"
                      "0,1.069103,#na#\n"
                      "epoch,train_loss,valid_loss,accuracy,auroc\n"
                      "0,0.390194,0.452819,0.856472,0.842951\n1,0.407808,0.389007,0.847359,0.852696\n")


def test_fastai_v1_appended_history_drops_lr_find_rows_and_numbers_sessions_on(tmp_path: Path) -> None:
    """fastai v1's CSVLogger(append=True): no time column, the header again at every fit() and
    lr_find(), a short '#na#' row per lr_find(), every fit() counted from 0 (even after a
    one-epoch fit(), whose last epoch number is the same 0)."""
    source = read_path(write(tmp_path / "history.csv", FASTAI_V1_APPENDED))
    assert source.format == "fastai_csv"
    assert source.series["train.loss"].values.tolist() == [0.425735, 0.390194, 0.407808]
    assert source.series["train.loss"].epochs.tolist() == [1, 2, 3]
    assert source.series["val.loss"].values.tolist() == [0.412875, 0.452819, 0.389007]
    assert source.restarts == [{"row": 8, "epoch": 0, "continues_as": 2}]  # line 8 becomes epoch 2
    assert any("2 session(s) without validation" in n and "lr_find" in n for n in source.notes)


def test_fastai_history_without_any_validation_keeps_its_rows(tmp_path: Path) -> None:
    source = read_path(write(tmp_path / "history.csv", "epoch,train_loss,valid_loss,time\n"
                             "0,0.9,#na#,00:10\n1,0.7,#na#,00:10\n"))
    assert source.series["train.loss"].values.tolist() == [0.9, 0.7]
    assert "val.loss" not in source.series


def test_one_epoch_fit_sessions_appended_without_headers_are_numbered_on(tmp_path: Path) -> None:
    """Keras CSVLogger(append=True) over three one-epoch fit() calls: 0, 0, 0 (no header again
    since keras PR #4426) is three sessions, not one epoch written three times."""
    source = read_csv(write(tmp_path / "model_history_log.csv", "epoch,accuracy,loss\n"
                            "0,0.79,0.83\n0,0.47,1.44\n0,0.70,0.85\n"))
    assert source.series["train.loss"].epochs.tolist() == [1, 2, 3]
    assert [r["continues_as"] for r in source.restarts] == [2, 3]


def test_an_epoch_written_twice_across_a_repeated_header_stays_a_duplicate(tmp_path: Path) -> None:
    source = read_csv(write(tmp_path / "training.log", "epoch,loss,val_loss\n0,1.0,1.1\n1,0.9,1.0\n"
                            "epoch,loss,val_loss\n1,0.9,1.0\n2,0.8,0.9\n"))
    assert source.restarts == []
    assert source.series["train.loss"].epochs.tolist() == [1, 2, 2, 3]


def test_steps_jsonl_ignores_an_incomplete_last_line(run_dir: Path) -> None:
    path = run_dir / "steps.jsonl"
    with path.open("a") as handle:
        handle.write('{"split": "train", "epoch": 7, "ba')
    source = read_steps_jsonl(path)
    assert source.series["train.loss"].epochs.tolist() == [1, 2, 3, 4, 5, 6]
    assert any("incomplete" in n for n in source.notes)


def test_steps_jsonl_names_a_corrupt_line(tmp_path: Path) -> None:
    path = write(tmp_path / "steps.jsonl", '{"split": "train"}\nnot json\n{"split": "val"}\n')
    with pytest.raises(AnalysisInputError, match="line 2"):
        read_steps_jsonl(path)


LOGS = {
    "ours": ("Epoch 3/10 [Train]: loss=1.2345, top1=55.21%, top5=90.10%, samples=960, lr=0.048000, 410.2 img/s\n"
             "Epoch 3/10 [Val]: loss=1.1000, top1=60.00%, top5=92.50%, samples=240\n",
             {"train.loss": 1.2345, "train.top1": 55.21, "val.top5": 92.5, "val.samples": 240, "lr": 0.048,
              "train.throughput": 410.2}, 3),
    "incident": ("Epoch 3 [Train]: loss=7.5350, top1=3.88%, top5=13.15%\n",
                 {"train.loss": 7.535, "train.top1": 3.88, "train.top5": 13.15}, 3),
    "timm": ("Train: 2 [   0/1251 (  0%)]  Loss: 6.900 (6.900)  Time: 1.0s  LR: 1.000e-03  Data: 0.5\n"
             "Train: 2 [1250/1251 (100%)]  Loss: 6.100 (6.456)  Time: 0.3s  LR: 1.000e-03  Data: 0.01\n"
             "Test: [   0/48]  Time: 0.9 (0.9)  Loss:  0.9000 (0.9000)  Acc@1: 80.0000 (80.0000)  Acc@5: 95.0000 (95.0000)\n"
             "Test: [  48/48]  Time: 0.1 (0.3)  Loss:  0.8398 (1.1125)  Acc@1: 83.4906 (76.3120)  Acc@5: 95.5189 (93.1340)\n",
             {"train.loss": 6.456, "lr": 1e-3, "val.loss": 1.1125, "val.top1": 76.312, "val.top5": 93.134}, 3),
    "lightning": ("Epoch 3: 100%|##########| 50/50 [00:02<00:00, 20.1it/s, v_num=0, train_loss=0.523, val_loss=0.612, val_acc=0.830]\n",
                  {"train.loss": 0.523, "val.loss": 0.612, "val.top1": 83.0}, 4),
    "plain": ("epoch 3 train_loss 0.52 val_loss 0.61 val_acc 0.83\n",
              {"train.loss": 0.52, "val.loss": 0.61, "val.top1": 83.0}, 3),
    "keras": ("Epoch 3/10\n30/30 [==============================] - 1s 3ms/step - loss: 0.5200 - accuracy: 0.8100 "
              "- val_loss: 0.6100 - val_accuracy: 0.7900\n",
              {"train.loss": 0.52, "train.top1": 81.0, "val.top1": 79.0}, 3),
}


@pytest.mark.parametrize("style", sorted(LOGS))
def test_console_log_default_patterns(tmp_path: Path, style: str) -> None:
    text, expected, epoch = LOGS[style]
    source = read_console_log(write(tmp_path / "train.log", text))
    for name, value in expected.items():
        series = source.series[name]
        assert series.epochs.tolist() == [epoch], name
        assert series.values[0] == pytest.approx(value), name


def test_console_log_ignores_a_partial_last_line(tmp_path: Path) -> None:
    path = write(tmp_path / "train.log", "epoch 1 train_loss 0.90\nepoch 2 train_loss 0.7")
    assert read_console_log(path).series["train.loss"].values.tolist() == [0.9]


def test_user_pattern_with_metric_groups(tmp_path: Path) -> None:
    path = write(tmp_path / "out.txt", "ep=1 | tl 0.90 | vl 1.00\nep=2 | tl 0.70 | vl 0.80\n")
    run = load_inputs([path], patterns=[r"ep=(?P<epoch>\d+) \| tl (?P<train_loss>\S+) \| vl (?P<val_loss>\S+)"])
    assert run.sources[0].series["val.loss"].values.tolist() == [1.0, 0.8]


def test_bad_user_pattern_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(AnalysisInputError, match="not a valid regex"):
        load_inputs([write(tmp_path / "a.log", "x\n")], patterns=["(unclosed"])


def test_unrecognised_log_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(AnalysisInputError, match="no known format recognised. Tried: TensorBoard"):
        read_path(write(tmp_path / "notes.txt", "hello\nworld\n"))


def test_missing_path_and_binary_file_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(AnalysisInputError, match="no such file"):
        read_path(tmp_path / "nope.json")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(AnalysisInputError, match="unknown file format"):
        read_path(tmp_path / "blob.bin")


def test_tensorboard_our_layout_maps_steps_to_epochs(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    spec = SyntheticRun(epochs=3)
    writer = SummaryWriter(str(tmp_path / "tb"))
    for epoch in range(1, 4):
        for step in range((epoch - 1) * 30 + 1, epoch * 30 + 1):
            writer.add_scalar("step/train_loss", spec.loss("train", epoch), step)
        step = epoch * 30
        writer.add_scalar("train/loss", spec.loss("train", epoch), step)
        writer.add_scalar("val/top1", 40.0 + epoch, step)
        writer.add_scalar("epoch", epoch, step)
    writer.close()
    source = read_path(tmp_path / "tb")
    assert source.series["train.loss"].epochs.tolist() == [1, 2, 3]
    assert source.series["val.top1"].values.tolist() == pytest.approx([41.0, 42.0, 43.0])
    assert len(source.steps["step.train_loss"]) == 90


def test_tensorboard_with_25000_steps_is_read_completely(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    for step in range(25_000):
        writer.add_scalar("step/train_loss", 5.0 / (1 + step), step)
        if step % 5000 == 4999:
            writer.add_scalar("train/loss", 5.0 / (1 + step), step)
            writer.add_scalar("epoch", step // 5000 + 1, step)
    writer.close()
    source = read_path(tmp_path / "tb")
    stream = source.steps["step.train_loss"]
    assert len(stream) == 25_000
    assert stream.steps[0] == 0 and stream.steps[-1] == 24_999
    assert source.series["train.loss"].epochs.tolist() == [1, 2, 3, 4, 5]


def test_tensorboard_without_epoch_tag_counts_events_as_epochs(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    for i, value in enumerate([0.9, 0.7, 0.6]):
        writer.add_scalar("val_loss", value, 100 * (i + 1))
    writer.close()
    event_file = next((tmp_path / "tb").glob("*tfevents*"))
    source = read_path(event_file)
    assert source.series["val.loss"].epochs.tolist() == [1, 2, 3]


def test_foreign_output_dir_reads_its_metric_files(tmp_path: Path) -> None:
    write(tmp_path / "summary.csv", "epoch,train_loss,eval_loss\n0,2.0,2.1\n1,1.5,1.6\n")
    run = load_inputs([tmp_path])
    assert [s.name for s in run.sources] == ["summary.csv"]


def test_directory_without_metrics_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(AnalysisInputError, match="neither a run directory"):
        load_inputs([tmp_path])
    write(tmp_path / "config.yaml", "model:\n  num_classes: 3\n")
    with pytest.raises(AnalysisInputError, match="no metrics found"):
        load_inputs([tmp_path])


@pytest.mark.parametrize("prefix", ["2026-11-26 01:02:03 INFO ", "[2026-11-26T01:02:03.123Z] ", "INFO:root:", "WARNING - "])
def test_logging_prefixes_are_skipped(tmp_path: Path, prefix: str) -> None:
    path = write(tmp_path / "train.log", f"{prefix}Epoch 2/5 [Val]: loss=null, top1=50.00%, top5=90.00%, samples=240\n")
    source = read_console_log(path)
    assert math.isnan(source.series["val.loss"].values[0])
    assert source.series["val.top1"].epochs.tolist() == [2]


def test_our_tensorboard_accuracy_is_percent_even_below_one(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    write_synthetic_run(tmp_path / "run", SyntheticRun(epochs=2))
    writer = SummaryWriter(str(tmp_path / "run" / "tb"))
    for epoch, top1 in ((1, 0.02), (2, 0.61)):  # a 9,500-class run's first epochs, in percent
        writer.add_scalar("train/top1", top1, epoch * 30)
        writer.add_scalar("epoch", epoch, epoch * 30)
    writer.close()
    tb = read_run_dir(tmp_path / "run").sources[-1]
    assert tb.name == "tb"
    assert tb.series["train.top1"].values.tolist() == pytest.approx([0.02, 0.61])


def test_unmapped_text_fields_are_ignored_not_parsed(tmp_path: Path) -> None:
    records = [{"epoch": 1, "phase": "done", "train_loss": 1.0}, {"epoch": 2, "phase": "done", "train_loss": 0.8}]
    source = read_history_json(write(tmp_path / "r.json", json.dumps(records)))
    assert "phase" in source.ignored and source.series["train.loss"].values.tolist() == [1.0, 0.8]
    columns = {"loss": [1.0, 0.7], "classes": ["cat", "dog"]}
    assert "classes" in read_history_json(write(tmp_path / "c.json", json.dumps(columns))).ignored
