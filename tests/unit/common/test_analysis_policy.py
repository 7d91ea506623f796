"""Issue 12's verdict policy: each innocent look-alike a healthy run can show stays at most
``warn`` and names its explanation; the numbers that cannot be right fail, naming the evidence.
Also the hints (sidecars, unsafe YAML) and the unit decision per source."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from common.analysis.checks import run_checks
from common.analysis.cli import analyze
from common.analysis.hints import read_sidecar, user_hints
from common.analysis.readers import load_inputs
from common.analysis.report import Report
from common.analysis.series import EpochSeries, RunData, Source


def source(metrics: dict[str, list[float]], epochs: list[int] | None = None, resolution: float = 0.0,
           fmt: str = "") -> Source:
    src = Source(name="s", kind="history", path="s", format=fmt)
    for metric, values in metrics.items():
        src.add(EpochSeries(metric, epochs or list(range(1, len(values) + 1)), values, "s", metric, resolution))
    return src


def report(src: Source, num_classes: int | None = None) -> Report:
    return run_checks(RunData(sources=[src], num_classes=num_classes))


def worst(rep: Report) -> str:
    return rep.verdict


# --- look-alikes: at most warn, with the explanation named ---------------------------------------

LOOKALIKES = {
    "overfitting": (dict(**{"train.loss": [1.0, 0.6, 0.3, 0.15, 0.08, 0.04], "val.loss": [1.0, 0.8, 0.85, 0.95, 1.1, 1.3],
                          "train.top1": [60, 80, 90, 95, 98, 99], "val.top1": [60, 70, 71, 71, 70, 70]}), 10,
                    "overfit"),
    "miscalibrated binary": ({"train.loss": [0.6, 0.4, 0.3, 0.2], "val.loss": [0.72, 0.76, 0.79, 0.81],
                              "val.top1": [55, 55.5, 54, 55]}, 2, "miscalibration"),
    "EMA warming up": ({"train.loss": [6.9, 6.5, 6.1, 5.8, 5.4], "val.loss": [6.97, 6.96, 6.95, 6.94, 6.9],
                        "val.top1": [0.1, 0.1, 0.12, 0.15, 0.2]}, 1000, "EMA"),
    "train accuracy below val (augmentation)": ({"train.loss": [2.0, 1.6, 1.3], "val.loss": [1.5, 1.1, 0.9],
                                                 "train.top1": [30, 40, 50], "val.top1": [45, 60, 70]}, 10,
                                                "augment"),
    "mixup loss above val": ({"train.loss": [3.3, 3.29, 3.28], "val.loss": [0.95, 0.94, 0.93]}, 1000, "mixup"),
    "low first loss (pretrained)": ({"train.loss": [0.05, 0.03, 0.02], "val.loss": [0.08, 0.06, 0.05]}, 2,
                                    "pretrained"),
    "top-5 = 100% with few classes": ({"train.loss": [0.6, 0.5, 0.45], "train.top5": [100.0] * 3,
                                       "val.top5": [100.0] * 3}, None, "at most 5 classes"),
    "small val set swings": ({"val.top1": [54.66667, 64.33333, 66.66667, 64.0, 59.0, 64.16667, 69.5]}, None,
                             "validation set of"),
    "focal-like loss below the cross-entropy floor": ({"train.loss": [0.2, 0.15], "train.top1": [60.0, 62.0]}, 10,
                                                      "not plain cross-entropy"),
    "transient divergence that recovers": ({"train.loss": [2.0, 1.5, 9.0, 1.2, 1.0], "val.loss": [2.1, 1.6, 8.0, 1.3, 1.1]},
                                           10, None),
}


@pytest.mark.parametrize("name", sorted(LOOKALIKES))
def test_innocent_lookalike_is_at_most_a_warning(name: str) -> None:
    metrics, classes, words = LOOKALIKES[name]
    rep = report(source(metrics), classes)
    assert rep.verdict != "fail", rep.summary()
    if words:
        assert any(words.lower() in c.message.lower() for c in rep.warnings()), rep.summary()


def test_rounded_zero_loss_and_printed_plateau_are_warnings() -> None:
    rounded = source({"train.loss": [0.0, 0.0, 0.0], "train.top1": [100.0, 100.0, 100.0]}, resolution=5e-5, fmt="x")
    assert report(rounded).verdict == "warn"
    plateau = source({"train.loss": [0.0291, 0.0266, 0.0266, 0.0266, 0.0266], "val.loss": [0.0265] * 5},
                     resolution=5e-5, fmt="keras_console")
    rep = report(plateau, 2)
    assert rep.verdict == "warn" and "plateau" in rep.by_id("constant_series")[0].message


def test_appended_keras_sessions_are_renumbered_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "training.log"
    path.write_text("epoch,accuracy,loss,val_accuracy,val_loss\n0,0.5,1.2,0.55,1.1\n1,0.6,1.0,0.62,0.98\n"
                    "0,0.65,0.95,0.64,0.93\n1,0.7,0.85,0.68,0.9\n")
    run = load_inputs([path])
    assert run.sources[0].format == "keras_csv"
    assert run.sources[0].series["train.loss"].epochs.tolist() == [1, 2, 3, 4]
    rep = run_checks(run)
    assert rep.verdict == "warn" and any("append" in c.message for c in rep.warnings())


def test_a_fresh_model_in_a_later_appended_session_is_not_no_learning(tmp_path: Path) -> None:
    """The last fit() appended to the log trains a new model from scratch: its loss starts above
    where the first session began, yet the first session learned."""
    path = tmp_path / "model_history_log.csv"
    path.write_text("epoch,accuracy,loss\n0,0.22,2.31\n1,0.40,1.60\n2,0.55,1.20\n3,0.70,0.83\n"
                    "0,0.01,3.58\n1,0.02,2.96\n2,0.03,2.90\n")
    rep = run_checks(load_inputs([path]))
    assert rep.verdict == "warn"
    assert [c.status for c in rep.checks if c.id == "no_learning"] == ["pass"]
    assert "appended session" in rep.by_id("no_learning")[0].message
    restart = rep.by_id("epochs_missing")[0]
    assert restart.status == "warn" and restart.epochs == [5]  # the row of epoch 0 becomes epoch 5


# --- impossible numbers: fail, naming the evidence -----------------------------------------------


def test_tiny_loss_with_zero_accuracy_fails_with_evidence() -> None:
    rep = report(source({"train.loss": [0.0138, 0.0126], "train.top1": [0.0, 0.0]}, fmt="epoch_lines"))
    hit = [c for c in rep.failures() if c.id == "loss_accuracy_bound"][0]
    assert hit.epochs == [1, 2] and hit.values[0] == [0.0, 0.0138] and "ln 2" in hit.message


def test_top5_below_100_with_two_classes_fails() -> None:
    rep = report(source({"val.top1": [0.0], "val.top5": [0.0], "val.loss": [8.96]}), 2)
    assert any(c.id == "accuracy_range" and c.metric == "val.top5" for c in rep.failures())


def test_frozen_accuracies_while_the_loss_swings_fail() -> None:
    rep = report(source({"train.loss": [1.36, 1.33, 1.09, 0.77, 0.73, 1.03, 1.31],
                         "train.top1": [50.0] * 7, "val.top1": [50.0] * 7}, resolution=5e-3, fmt="epoch_lines"))
    assert [c.id for c in rep.failures()] == ["frozen_accuracy"]


def test_exact_zero_iteration_loss_fails(tmp_path: Path) -> None:
    log = tmp_path / "console.txt"
    log.write_text("".join(f"Epoch: [0][{i:5d}/40037]\tTime  0.018 ( 0.1)\tLoss {v} ({v})\tAcc@1 100.00 ( 90.00)\t"
                           f"Acc@5 100.00 ( 90.00)\n" for i, v in ((0, "6.9085e+00"), (10, "0.0000e+00"),
                                                                   (20, "0.0000e+00"))))
    rep = run_checks(load_inputs([log], num_classes=1000))
    hit = [c for c in rep.failures() if c.id == "zero_loss"][0]
    assert hit.details["steps"] == [10, 20]


# --- units and hints -------------------------------------------------------------------------------


def test_accuracy_unit_is_decided_per_source_and_can_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "summary.csv"
    path.write_text("epoch,train_loss,eval_loss,eval_top1,eval_top5\n0,6.93,6.97,0.096,0.474\n1,6.57,6.95,0.358,1.554\n")
    run = load_inputs([path])
    assert run.sources[0].series["val.top1"].values.tolist() == [0.096, 0.358]  # percent, like top-5
    assert run_checks(run).by_id("accuracy_range")[0].status == "pass"
    forced = load_inputs([path], hints=user_hints(accuracy_unit="fraction"))
    assert forced.sources[0].series["val.top1"].values.tolist() == pytest.approx([9.6, 35.8])


def test_sidecars_give_hints_and_pickle_tags_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("epoch,step,train_loss,val_loss,val_acc\n0,9,0.9,0.8,0.7\n1,19,0.5,0.6,0.8\n")
    (tmp_path / "hparams.yaml").write_text("lr: 0.1\nweights: !!python/object/apply:torch._utils._rebuild_tensor_v2\n"
                                           "- x\n")
    (tmp_path / "args.yaml").write_text("num_classes: 7\nsmoothing: 0.1\nmixup: 0.8\nmodel_ema: true\n")
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"0": "a", "1": "b"}, "_name_or_path": "vit"}))
    run = load_inputs([tmp_path / "metrics.csv"])
    assert run.num_classes == 7 and run.hints.label_smoothing == 0.1 and run.hints.mixup and run.hints.ema
    assert run.hints.pretrained and run.hints.origin["num_classes"] == "args.yaml: num_classes"
    assert any("pickle" in n and "hparams.yaml" in n for n in run.hints.notes)
    rep = run_checks(run).to_dict()
    assert rep["hints"]["used"]["num_classes"] == 7 and rep["strength"]["ran"]
    # the user's hint wins over the sidecar's
    assert load_inputs([tmp_path / "metrics.csv"], num_classes=3).num_classes == 3


def test_a_yaml_alias_bomb_sidecar_is_read_in_linear_time(tmp_path: Path) -> None:
    """Review finding: six levels of 40 aliased keys each (2 KB) would be walked 40**6 times if
    each alias were flattened again; each mapping is visited once, so this returns at once."""
    import time

    k, lines = 40, ["l0: &l0 {num_classes: 7}"]
    for level in range(1, 7):
        refs = ", ".join(f"k{i}: *l{level - 1}" for i in range(k))
        lines.append(f"l{level}: &l{level} {{{refs}}}")
    bomb = tmp_path / "hparams.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    hints = read_sidecar(bomb)
    assert time.perf_counter() - t0 < 5  # exponential: hours
    assert hints.num_classes == 7


def test_unsafe_yaml_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    bad = tmp_path / "hparams.yaml"
    bad.write_text(f"x: !!python/object/apply:os.system ['touch {marker}']\n")
    hints = read_sidecar(bad)
    assert not marker.exists() and hints.known() == {} and "never unpickled" in hints.notes[0]


def test_unknown_format_exits_2_naming_the_formats_tried(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\nnothing to see here\n")
    result = CliRunner().invoke(analyze, [str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    for word in ("Tried:", "trainer_state.json", "Keras CSVLogger", "ultralytics", "--pattern"):
        assert word in result.output, word


def test_weak_pass_is_said(tmp_path: Path) -> None:
    rep = report(source({"val.top1": [50.0]}))
    assert rep.verdict == "pass" and rep.strength["weak"] and "weak:" in rep.summary()


# --- readers for the formats without a redistributable corpus file (writers' layouts) -------------


def test_ultralytics_results_csv_with_padded_columns(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text("                  epoch,             train/loss,  metrics/accuracy_top1,  metrics/accuracy_top5,"
                    "               val/loss,                 lr/pg0\n"
                    "                      1,                 1.2345,                  0.612,                  0.954,"
                    "                 1.1003,              0.0005\n"
                    "                      2,                 0.9876,                  0.701,                  0.972,"
                    "                 0.9502,              0.0004\n")
    source = load_inputs([path]).sources[0]
    assert source.format == "ultralytics_csv"
    assert source.series["val.top1"].values.tolist() == pytest.approx([61.2, 70.1])
    assert source.series["train.loss"].epochs.tolist() == [1, 2] and "val.loss" in source.series


def test_fastai_history_csv_metrics_are_validation_metrics(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    path.write_text("epoch,train_loss,valid_loss,accuracy,time\n0,1.20,0.98,0.61,00:03\n1,0.90,0.80,0.70,00:03\n")
    source = load_inputs([path]).sources[0]
    assert source.format == "fastai_csv" and "train.top1" not in source.series
    assert source.series["val.top1"].values.tolist() == pytest.approx([61.0, 70.0])
    assert source.series["val.loss"].epochs.tolist() == [1, 2]


def test_lightning_version_dirs_are_sessions_never_cross_checked(tmp_path: Path) -> None:
    for version, loss in (("version_0", 0.9), ("version_1", 0.5)):
        folder = tmp_path / "lightning_logs" / version
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text(f"epoch,step,val_loss\n0,9,{loss}\n1,19,{loss - 0.1}\n")
    run = load_inputs([tmp_path])
    assert [s.name for s in run.sources] == ["version_0/metrics.csv", "version_1/metrics.csv"]
    assert {s.session for s in run.sources} == {"version_0", "version_1"}
    assert run_checks(run).by_id("cross_source")[0].status != "fail"


def test_values_under_a_names_line_are_read(tmp_path: Path) -> None:
    log = tmp_path / "console.txt"
    log.write_text("Epoch: 01 | Epoch Time: 0m 57s\n*****train_loss,train_acc,valid_loss*****\n5.2\t2.79\t4.97\n"
                   "Epoch: 02 | Epoch Time: 0m 57s\n*****train_loss,train_acc,valid_loss*****\n5.08\t2.28\t4.95\n")
    source = load_inputs([log]).sources[0]
    assert source.series["val.loss"].values.tolist() == [4.97, 4.95]
    assert source.series["train.loss"].epochs.tolist() == [1, 2]
