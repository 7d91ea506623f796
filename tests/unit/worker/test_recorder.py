"""The recorder turns the loop's events into the run directory's records; a fake RunFiles and a
fake TensorBoard writer capture what it would write."""
from __future__ import annotations

import json
import math

import pytest

from common import faults
from common.rundir import History, Integrity, Progress, RunStatus
from worker.training.metrics import Interval, Totals
from worker.training.recorder import Recorder, previous_integrity, record_outcome


class FakeFiles:
    def __init__(self):
        self.steps, self.histories, self.progress = [], [], []

    def append_step(self, record):
        self.steps.append(json.loads(json.dumps(record)))

    def write_history(self, history):
        self.histories.append(json.loads(json.dumps(history)))

    def write_progress(self, progress):
        self.progress.append(json.loads(json.dumps(progress)))


class FakeTB:
    def __init__(self):
        self.scalars, self.flushed = [], 0

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        self.flushed += 1


@pytest.fixture
def rec(monkeypatch):
    monkeypatch.setattr(faults, "_current", faults.Faults.parse(""))
    history = History(num_classes=3, class_names=["a", "b", "c"], dataset_sizes={"train": 40, "val": 10})
    return Recorder(FakeFiles(), FakeTB(), history=history, epochs=2, steps_per_epoch=3, batches=5, val_batches=2)


def test_an_interval_writes_a_step_line_two_step_scalars_and_train_progress(rec):
    totals = Totals(loss_sum=24.0, correct1=10.0, correct5=20.0, samples=24.0)
    rec.on_interval(epoch=1, batch=3, step=2, interval=Interval(totals, loss=1.5, throughput=100.0), lr=0.1)
    line, = rec.files.steps
    assert {k: line[k] for k in ("split", "epoch", "batch", "step", "loss_sum", "correct1", "samples", "lr", "final")} == \
        {"split": "train", "epoch": 1, "batch": 3, "step": 2, "loss_sum": 24.0, "correct1": 10, "samples": 24,
         "lr": 0.1, "final": False}
    assert rec.tb.scalars == [("step/train_loss", 1.5, 2), ("step/lr", 0.1, 2)]
    p, = rec.files.progress
    assert p["status"] == "running" and p["phase"] == "train" and p["total_steps"] == 6
    assert p["percent"] == round(100 * (3 / 5) / 2, 2) and p["latest"] == {"train.loss": 1.5}
    assert p["eta_s"] == pytest.approx((1 - 0.3) * 2 * 40 / 100.0) and p["integrity"] is None
    rec.on_interval(epoch=1, batch=5, step=3, interval=Interval(totals, loss=1.0, throughput=1.0), lr=0.1)
    assert rec.files.steps[-1]["final"] is True  # the epoch's last batch


def test_an_epoch_goes_to_history_the_val_line_tensorboard_and_the_console(rec, caplog):
    caplog.set_level("INFO", logger="teacher")
    train, val = Totals(40.0, 30.0, 40.0, 40.0), Totals(math.nan, 5.0, 10.0, 10.0)
    out = rec.on_epoch(epoch=1, step=3, lr=0.05, train=train, val=val, train_s=2.0, epoch_s=3.0)
    history, = rec.files.histories
    epoch, = history["epochs"]
    assert epoch["train"] == {"loss": 1.0, "top1": 75.0, "top5": 100.0, "samples": 40, "throughput": 20.0}
    assert epoch["val"] == {"loss": None, "top1": 50.0, "top5": 100.0, "samples": 10}
    assert epoch["nonfinite"] == {"val.loss": "nan"} and epoch["epoch_time_s"] == 3.0
    assert out.metrics()["val.loss"] is None and out.metrics()["train.top1"] == 75.0
    assert rec.files.steps[-1]["split"] == "val" and rec.files.steps[-1]["batch"] == 2 and rec.files.steps[-1]["final"]
    tags = {tag: value for tag, value, _ in rec.tb.scalars}
    assert tags["train/top1"] == 75.0 and math.isnan(tags["val/loss"]) and tags["throughput"] == 20.0
    assert rec.tb.flushed == 1
    assert "Epoch 1/2 [Val]: loss=null, top1=50.00%" in caplog.text


def test_the_zero_train_metrics_fault_zeros_only_the_history(rec, monkeypatch):
    monkeypatch.setattr(faults, "_current", faults.Faults.parse("zero_train_metrics"))
    out = rec.on_epoch(epoch=1, step=3, lr=0.05, train=Totals(40.0, 30.0, 40.0, 40.0), val=Totals(5.0, 5.0, 10.0, 10.0),
                       train_s=2.0, epoch_s=3.0)
    assert rec.files.histories[-1]["epochs"][0]["train"]["loss"] == 0.0 and out.train.top1 == 0.0
    assert ("train/loss", 1.0, 3) in rec.tb.scalars  # TensorBoard keeps the true value


def test_checked_and_end_carry_the_integrity_verdict_and_the_best(rec):
    out = rec.on_epoch(epoch=2, step=6, lr=0.0, train=Totals(40.0, 30.0, 40.0, 40.0), val=Totals(5.0, 5.0, 10.0, 10.0),
                       train_s=2.0, epoch_s=3.0)
    rec.on_checked(rec=out, integrity=Integrity("pass", [], []))
    p = rec.files.progress[-1]
    assert p["phase"] == "epoch_end" and p["percent"] == 100.0 and p["latest"] == out.metrics()
    assert p["integrity"] == {"verdict": "pass", "failed": [], "warnings": []}
    rec.on_end(epoch=2, step=6, best={"metric": "val.top1", "value": 50.0, "epoch": 2})
    p = rec.files.progress[-1]
    assert p["status"] == "succeeded" and p["phase"] == "done" and p["throughput"] == 20.0
    assert p["best"] == {"metric": "val.top1", "value": 50.0, "epoch": 2} and p["integrity"]["verdict"] == "pass"


def test_outcome_before_any_progress_has_only_status_and_error(tmp_path):
    files = FakeFiles()
    record_outcome(files, tmp_path, RunStatus.FAILED, error="DataError: no data")
    assert files.progress == [{"status": "failed", "error": "DataError: no data"}]


def test_outcome_keeps_the_last_progress_but_its_nonfinite_flags(tmp_path):
    last = {"status": "running", "phase": "train", "epoch": 1, "latest": {"train.loss": None}, "step": 4,
            "integrity": {"verdict": "warn", "failed": [], "warnings": ["x"]}, "nonfinite": {"latest.train.loss": "nan"}}
    (tmp_path / "progress.json").write_text(json.dumps(last))
    files = FakeFiles()
    record_outcome(files, tmp_path, RunStatus.STOPPED)
    out, = files.progress
    assert out == {**{k: v for k, v in last.items() if k != "nonfinite"}, "status": "stopped"}
    assert previous_integrity(tmp_path) == Integrity("warn", [], ["x"])
    (tmp_path / "progress.json").write_text("{not json")
    assert previous_integrity(tmp_path) is None
    record_outcome(files, tmp_path, RunStatus.FAILED, error="e", integrity=Integrity("fail", ["dead_metric"], []))
    assert files.progress[-1] == {"status": "failed", "error": "e",
                                  "integrity": {"verdict": "fail", "failed": ["dead_metric"], "warnings": []}}
    assert Progress.from_json(files.progress[-1]).status is RunStatus.FAILED
