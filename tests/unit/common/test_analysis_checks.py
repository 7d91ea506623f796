"""Integrity checks: each fires on a constructed fault and stays silent on healthy runs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from common.analysis.checks import run_checks
from common.analysis.live import run_integrity
from common.analysis.readers import load_inputs
from common.analysis.report import Report
from common.analysis.series import EpochSeries, RunData, Source
from common.analysis.synthetic import SyntheticRun, write_synthetic_run

HEALTHY = {
    "train.loss": [2.3, 1.5, 1.0, 0.7, 0.5, 0.35],
    "val.loss": [2.4, 1.6, 1.1, 0.8, 0.55, 0.3],
    "train.top1": [20.0, 45.0, 60.0, 72.0, 80.0, 88.0],
    "train.top5": [60.0, 80.0, 90.0, 95.0, 97.0, 99.0],
    "val.top1": [22.0, 44.0, 58.0, 70.0, 79.0, 90.0],
    "val.top5": [61.0, 81.0, 91.0, 95.0, 98.0, 99.5],
}


def source(name: str, metrics: dict[str, list[float]], epochs: list[int] | None = None, kind: str = "history",
           resolution: float = 0.0) -> Source:
    src = Source(name=name, kind=kind, path=name)
    for metric, values in metrics.items():
        eps = epochs or list(range(1, len(values) + 1))
        src.add(EpochSeries(metric, eps, values, name, metric, resolution))
    return src


def report_for(*sources: Source, num_classes: int | None = 12, sizes: dict | None = None) -> Report:
    run = RunData(sources=list(sources), num_classes=num_classes, dataset_sizes=sizes or {})
    return run_checks(run)


def statuses(report: Report, check_id: str) -> set[str]:
    return {c.status for c in report.by_id(check_id)}


def truncate(metrics: dict[str, list[float]], n: int) -> dict[str, list[float]]:
    return {k: v[:n] for k, v in metrics.items()}


# --- healthy runs -------------------------------------------------------------------------------


@pytest.mark.parametrize("epochs", [1, 2, 3, 6])
def test_healthy_series_pass_without_warnings(epochs: int) -> None:
    report = report_for(source("h", truncate(HEALTHY, epochs)))
    assert report.verdict == "pass", report.summary()
    assert not report.warnings()


@pytest.mark.parametrize("epochs", [1, 2, 6])
def test_healthy_synthetic_run_dir_passes_without_warnings(tmp_path: Path, epochs: int) -> None:
    write_synthetic_run(tmp_path, SyntheticRun(epochs=epochs))
    report = run_integrity(tmp_path)
    assert report.verdict == "pass", report.summary()
    assert {c.status for c in report.checks} <= {"pass", "skipped"}
    assert statuses(report, "cross_source") == {"pass"}


# --- one test per check: fires on the fault ----------------------------------------------------


def test_nonfinite_fires() -> None:
    metrics = dict(HEALTHY, **{"val.loss": [2.4, 1.6, float("nan"), 0.8, 0.55, float("inf")]})
    report = report_for(source("h", metrics))
    hit = report.by_id("nonfinite")[0]
    assert hit.status == "fail" and hit.epochs == [3, 6] and hit.metric == "val.loss"
    assert json.loads(report.to_json())["checks"][0]["values"] == ["nan", "inf"]


def test_duplicated_and_missing_epochs_fire() -> None:
    dup = source("h", {"train.loss": [2.0, 1.5, 1.4, 1.0]}, epochs=[1, 2, 2, 3])
    gap = source("g", {"val.loss": [2.0, 1.5, 1.0]}, epochs=[1, 2, 4])
    report = report_for(dup, gap)
    assert statuses(report, "epochs_duplicated") == {"fail"}
    missing = report.by_id("epochs_missing")[0]
    assert missing.status == "fail" and missing.epochs == [3]


def test_validation_every_k_epochs_is_not_a_gap() -> None:
    report = report_for(source("h", {"val.loss": [2.0, 1.5, 1.0]}, epochs=[2, 4, 6]))
    assert statuses(report, "epochs_missing") == {"pass"}


def test_steps_going_backwards_fires() -> None:
    src = source("h", dict(HEALTHY, step=[30, 60, 90, 60, 90, 120]))
    report = report_for(src)
    hit = report.by_id("steps_backwards")[0]
    assert hit.status == "fail" and hit.epochs == [4]
    assert statuses(report_for(source("h", dict(HEALTHY, step=[30, 60, 90, 120, 150, 180]))), "steps_backwards") == {"pass"}


def test_dead_loss_fires_after_one_epoch() -> None:
    report = report_for(source("h", {"train.loss": [0.0], "val.loss": [2.3]}))
    assert statuses(report, "dead_metric") == {"fail"}


def test_dead_accuracy_fires_when_loss_says_learning() -> None:
    metrics = dict(HEALTHY, **{"train.top1": [0.0] * 6})
    hit = [c for c in report_for(source("h", metrics)).by_id("dead_metric") if c.status == "fail"]
    assert [c.metric for c in hit] == ["train.top1"]


def test_zero_accuracy_without_learning_evidence_is_not_dead() -> None:
    report = report_for(source("h", {"train.loss": [2.48], "train.top1": [0.0]}))
    assert statuses(report, "dead_metric") == {"pass"}


def test_metric_that_stops_updating_fires() -> None:
    src = source("h", truncate(HEALTHY, 6))
    src.series["val.top1"] = EpochSeries("val.top1", [1, 2], [22.0, 44.0], "h")
    hit = [c for c in report_for(src).by_id("dead_metric") if c.status == "fail"]
    assert hit and hit[0].metric == "val.top1" and hit[0].epochs == [2]


def test_constant_train_loss_fires() -> None:
    report = report_for(source("h", dict(HEALTHY, **{"train.loss": [1.7] * 6})))
    assert any(c.status == "fail" and c.metric == "train.loss" for c in report.by_id("constant_series"))


def test_constant_val_loss_while_train_moves_fires() -> None:
    report = report_for(source("h", dict(HEALTHY, **{"val.loss": [2.2] * 6})))
    hit = report.by_id("constant_series")[0]
    assert hit.status == "fail" and hit.metric == "val.loss" and hit.epochs == [1, 2, 3, 4, 5, 6]


def test_rounded_plateau_is_not_constant() -> None:
    # A printed loss can repeat on a plateau; 3 equal printed values are not proof.
    log = source("log", {"train.loss": [0.0012, 0.0012, 0.0012]}, kind="log", resolution=5e-5)
    assert statuses(report_for(log), "constant_series") == {"skipped"}


def test_init_loss_far_above_chance_warns() -> None:
    report = report_for(source("h", dict(HEALTHY, **{"train.loss": [80.0, 1.5, 1.0, 0.7, 0.5, 0.35]})))
    assert statuses(report, "init_loss") == {"warn"}
    assert statuses(report_for(source("h", HEALTHY), num_classes=None), "init_loss") == {"skipped"}


def test_val_loss_above_chance_fires() -> None:
    metrics = dict(HEALTHY, **{"val.loss": [2.4, 2.6, 2.7, 2.8, 2.9, 3.0], "val.top1": [8.0] * 6})
    hit = report_for(source("h", metrics)).by_id("val_above_chance")[0]
    # Fails at the epochs where training fits well (loss < ½ ln C) and validation stays at chance.
    assert hit.status == "fail" and hit.epochs == [3, 4, 5, 6]


def test_val_loss_above_chance_with_good_accuracy_is_overfitting_warning() -> None:
    metrics = dict(HEALTHY, **{"train.loss": [0.9, 0.4, 0.2, 0.1, 0.05, 0.02],
                               "val.loss": [1.0, 0.9, 1.5, 2.0, 2.6, 3.0]})
    assert statuses(report_for(source("h", metrics)), "val_above_chance") == {"warn"}


def test_no_learning_fires() -> None:
    metrics = {"train.loss": [2.49, 2.485, 2.487, 2.486], "train.top1": [8.0, 8.3, 8.1, 8.2]}
    assert statuses(report_for(source("h", metrics)), "no_learning") == {"fail"}
    assert statuses(report_for(source("h", metrics), num_classes=None), "no_learning") == {"warn"}


def test_accuracy_out_of_range_and_top1_above_top5_fire() -> None:
    metrics = dict(HEALTHY, **{"val.top1": [22.0, 44.0, 58.0, 99.0, 101.0, 90.0]})
    bad = report_for(source("h", metrics)).by_id("accuracy_range")
    assert {c.message.split(":")[0] for c in bad} == {"accuracy outside [0, 100]%", "top-1 above top-5 accuracy"}
    assert all(c.status == "fail" for c in bad)


def test_loss_falling_with_flat_accuracy_fires() -> None:
    metrics = {"train.loss": [2.3, 1.2, 0.6], "train.top1": [10.0, 10.0, 10.0]}
    assert statuses(report_for(source("h", metrics), num_classes=None), "accuracy_loss_mismatch") == {"fail"}


def test_perfect_accuracy_at_chance_loss_fires() -> None:
    metrics = {"val.loss": [2.48, 2.47], "val.top1": [100.0, 100.0], "train.loss": [2.0, 1.0]}
    assert "fail" in statuses(report_for(source("h", metrics)), "accuracy_loss_mismatch")


def test_cross_source_disagreement_fires_and_rounding_is_tolerated() -> None:
    history = source("history.json", {"train.loss": [1.23456789, 0.98765432]})
    good_log = source("train.log", {"train.loss": [1.2346, 0.9877]}, kind="log", resolution=5e-5)
    assert statuses(report_for(history, good_log), "cross_source") == {"pass"}
    bad_log = source("train.log", {"train.loss": [1.2346, 0.9600]}, kind="log", resolution=5e-5)
    hit = report_for(history, bad_log).by_id("cross_source")[0]
    assert hit.status == "fail" and hit.epochs == [2] and hit.values == [[0.98765432, 0.96]]


def test_approximate_sources_are_not_cross_checked() -> None:
    history = source("history.json", {"train.loss": [1.0, 0.5]})
    bar = source("progress.log", {"train.loss": [1.2, 0.6]}, kind="log")
    bar.approximate = True
    assert statuses(report_for(history, bar), "cross_source") == {"skipped"}


def test_sample_counts_fire_on_dropped_and_duplicated_samples() -> None:
    sizes = {"train": 960, "val": 240}
    good = source("h", {"train.samples": [960, 960], "val.samples": [240, 240]})
    assert statuses(report_for(good, sizes=sizes), "sample_counts") == {"pass"}
    bad = source("h", {"train.samples": [960, 900], "val.samples": [256, 240]})
    hits = report_for(bad, sizes=sizes).by_id("sample_counts")
    assert {(c.metric, tuple(c.epochs)) for c in hits} == {("train.samples", (2,)), ("val.samples", (1,))}


def test_drop_last_is_accepted_when_batch_size_known() -> None:
    run = RunData(sources=[source("h", {"train.samples": [900, 900]})], dataset_sizes={"train": 960}, batch_size=100)
    assert statuses(run_checks(run), "sample_counts") == {"pass"}


def test_divergence_warns_but_never_fails() -> None:
    metrics = dict(HEALTHY, **{"val.loss": [2.4, 1.6, 1.1, 1.3, 1.5, 1.7]})
    report = report_for(source("h", metrics))
    assert statuses(report, "train_val_divergence") == {"warn"}
    assert report.verdict == "warn"


# --- the incident ----------------------------------------------------------------------------

INCIDENT_LOG = """\
Epoch 1 [Train]: loss=9.1600, top1=0.02%, top5=0.09%
Epoch 2 [Train]: loss=8.7400, top1=0.61%, top5=2.40%
Epoch 3 [Train]: loss=8.2000, top1=1.95%, top5=7.02%
Epoch 4 [Train]: loss=7.5350, top1=3.88%, top5=13.15%
"""


def write_incident(tmp_path: Path, epochs: int = 4) -> list[Path]:
    history = {"train_loss": [0.0] * epochs, "train_top1_acc": [0.0] * epochs,
               "val_loss": [9.5393] * epochs, "val_top1_acc": [0.01] * epochs}
    (tmp_path / "training_history.json").write_text(json.dumps(history))
    (tmp_path / "console.log").write_text("".join(INCIDENT_LOG.splitlines(keepends=True)[:epochs]))
    return [tmp_path / "training_history.json", tmp_path / "console.log"]


def test_incident_fails_naming_every_symptom(tmp_path: Path) -> None:
    report = run_checks(load_inputs(write_incident(tmp_path), num_classes=9500))
    assert report.verdict == "fail"
    failed = {(c.id, c.metric) for c in report.failures()}
    assert {("dead_metric", "train.loss"), ("dead_metric", "train.top1"), ("constant_series", "val.loss"),
            ("cross_source", "train.loss")} <= failed
    # Training has not fitted well (loss far above ½ ln C): a high val loss alone is only a warning.
    assert {c.status for c in report.by_id("val_above_chance")} == {"warn"}
    disagreement = [c for c in report.failures() if c.id == "cross_source" and c.metric == "train.loss"][0]
    assert disagreement.values[-1] == [0.0, 7.535]
    json.loads(report.to_json())


def test_incident_is_caught_after_the_first_epoch(tmp_path: Path) -> None:
    report = run_checks(load_inputs(write_incident(tmp_path, epochs=1), num_classes=9500))
    assert report.verdict == "fail"
    assert {"dead_metric", "cross_source"} <= {c.id for c in report.failures()}


# --- live -----------------------------------------------------------------------------------


def test_live_tolerates_a_run_dir_being_written(tmp_path: Path) -> None:
    assert run_integrity(tmp_path).verdict == "pass"  # nothing written yet
    (tmp_path / "config.yaml").write_text("model:\n  arch: resnet18\n  num_classes: 12\n")
    (tmp_path / "train.log").write_text("Epoch 1/6 [Train]: loss=2.2080, top1=43.12%, top5=64.69%, sam")
    (tmp_path / "steps.jsonl").write_text('{"split": "train", "epoch": 1, "batch": 10, "step": 10, "samples": 320, '
                                         '"loss_sum": 741.8, "correct1": 138, "correct5": 207, "final": false}\n{"spl')
    report = run_integrity(tmp_path, num_classes=12, dataset_sizes={"train": 960, "val": 240})
    assert report.verdict == "pass" and report.num_classes == 12


def test_live_catches_a_dead_history_after_one_epoch(tmp_path: Path) -> None:
    write_synthetic_run(tmp_path, SyntheticRun(epochs=1))
    history = json.loads((tmp_path / "history.json").read_text())
    history["epochs"][0]["train"]["loss"] = 0.0
    (tmp_path / "history.json").write_text(json.dumps(history))
    report = run_integrity(tmp_path)
    assert {("dead_metric", "train.loss"), ("cross_source", "train.loss")} <= {(c.id, c.metric) for c in report.failures()}


def test_report_json_is_strict_and_complete() -> None:
    report = report_for(source("h", dict(HEALTHY, **{"val.loss": [math.nan] * 6})))
    data = json.loads(report.to_json())
    assert data["verdict"] == "fail" and data["counts"]["fail"] >= 1
    assert {"id", "status", "message", "epochs", "values", "reason"} <= set(data["checks"][0])
    assert all(c["status"] in ("pass", "warn", "fail", "skipped") for c in data["checks"])
    assert not np.isnan(data["chance_loss"])


def test_live_imports_neither_torch_nor_matplotlib(tmp_path: Path) -> None:
    import subprocess
    import sys

    write_synthetic_run(tmp_path, SyntheticRun(epochs=2))
    code = ("import sys; from pathlib import Path; from common.analysis.live import run_integrity; "
            f"r = run_integrity(Path({str(tmp_path)!r})); "
            "heavy = [m for m in ('torch', 'matplotlib', 'tensorboard') if m in sys.modules]; "
            "print(r.verdict, heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.strip() == "pass []"


def test_nonfinite_step_loss_in_the_stream_fires(tmp_path: Path) -> None:
    write_synthetic_run(tmp_path, SyntheticRun(epochs=2))
    lines = (tmp_path / "steps.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    record.update(loss_sum=None, nonfinite={"loss_sum": "nan"})  # how our writer stores a NaN
    lines[1] = json.dumps(record)
    (tmp_path / "steps.jsonl").write_text("\n".join(lines) + "\n")
    hits = [c for c in run_integrity(tmp_path).by_id("nonfinite") if c.status == "fail"]
    assert [c.metric for c in hits] == ["step.train_loss"] and hits[0].details["steps"][0] == record["step"]
