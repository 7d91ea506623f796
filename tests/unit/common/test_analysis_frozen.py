"""A validation accuracy that never changes while the losses beside it move (issue 12's two
missed broken runs): warned, naming collapse or a stale evaluation, never failed; its innocent
look-alikes (a saturated or a plateaued, coarsely printed accuracy) stay quiet or at most warn.
Also the readers' parts of it: cut-off accuracy names, evaluations inside one epoch, a CSV
header repeated by appended sessions."""
from __future__ import annotations

from pathlib import Path

from common.analysis.checks import run_checks
from common.analysis.log_reader import read_console_log
from common.analysis.readers import read_csv
from common.analysis.series import EpochSeries, RunData, Source, map_metric_name


def source(metrics: dict[str, list[float]], resolution: float = 0.0) -> Source:
    src = Source(name="s", kind="log", path="s")
    for metric, values in metrics.items():
        src.add(EpochSeries(metric, list(range(1, len(values) + 1)), values, "s", metric, resolution))
    return src


def frozen_checks(src: Source) -> list:
    rep = run_checks(RunData(sources=[src]))
    return [c for c in rep.checks if c.id == "frozen_accuracy"]


def test_cut_off_accuracy_names_with_a_split_are_top1() -> None:
    assert map_metric_name("valid_ac") == ("val.top1", True)
    assert map_metric_name("val_accur") == ("val.top1", True)
    assert map_metric_name("ac") is None  # no split: means nothing
    assert map_metric_name("val_a") is None  # one letter is too little


def test_val_accuracy_identical_every_epoch_while_val_loss_moves_warns() -> None:
    src = source({"train.loss": [5.20, 5.09, 5.02, 5.01, 5.00, 5.01, 5.03],
                  "train.top1": [2.79, 2.29, 2.90, 3.57, 3.24, 3.29, 2.68],
                  "val.loss": [4.977, 4.954, 4.961, 4.954, 4.965, 4.963, 4.945],
                  "val.top1": [3.6057692021131516] * 7}, resolution=5e-16)
    checks = frozen_checks(src)
    assert [c.status for c in checks] == ["warn"]
    assert "collapsed to one class" in checks[0].message and "stale" in checks[0].message
    assert run_checks(RunData(sources=[src])).verdict == "warn"


def test_saturated_or_moving_val_accuracy_is_not_frozen() -> None:
    moving = source({"train.loss": [1.0, 0.8, 0.6, 0.5, 0.4], "val.loss": [1.0, 0.9, 0.8, 0.75, 0.7],
                     "val.top1": [60.0, 70.0, 75.0, 78.0, 80.0]})
    saturated = source({"train.loss": [1.0, 0.8, 0.6, 0.5, 0.4], "val.loss": [0.3, 0.2, 0.15, 0.1, 0.09],
                        "val.top1": [100.0] * 5})
    for src in (moving, saturated):
        assert [c.status for c in frozen_checks(src)] in (["pass"], ["skipped"])


def test_val_accuracy_with_a_constant_val_loss_is_left_to_constant_series() -> None:
    src = source({"train.loss": [1.0, 0.8, 0.6, 0.5, 0.4], "val.loss": [0.7] * 5, "val.top1": [55.0] * 5})
    assert all(c.status != "warn" or "validation loss moves" not in c.message for c in frozen_checks(src))


ABSA_LIKE = "epoch:  10\n" + "".join(
    f"loss: {loss}, acc: {acc}, test_acc: 0.6500, f1: 0.2626\n"
    for loss, acc in ((0.9447, 0.6562), (0.9312, 0.6562), (1.0388, 0.6042), (0.9838, 0.5977),
                      (0.9509, 0.6000), (0.8728, 0.6205)))


def test_evaluations_inside_one_epoch_are_kept_and_a_frozen_one_warns(tmp_path: Path) -> None:
    log = tmp_path / "console.txt"
    log.write_text(ABSA_LIKE)
    src = read_console_log(log)
    assert src.within_epoch["val.top1"][10] == [0.65] * 6
    assert src.within_epoch["train.loss"][10][:2] == [0.9447, 0.9312]
    checks = frozen_checks(src)
    assert [c.status for c in checks] == ["warn"]
    assert "6 evaluations inside epoch 10" in checks[0].message and "65%" in checks[0].message


def test_evaluations_inside_one_epoch_that_move_pass(tmp_path: Path) -> None:
    log = tmp_path / "console.txt"
    log.write_text("epoch:  10\n" + "".join(
        f"loss: {1 - i / 10:.4f}, acc: 0.6, test_acc: 0.6{i}00, f1: 0.3\n" for i in range(6)))
    assert all(c.status != "warn" for c in frozen_checks(read_console_log(log)))


def test_a_header_repeated_by_an_appended_session_is_skipped(tmp_path: Path) -> None:
    csv = tmp_path / "training.log"
    csv.write_text("epoch,accuracy,loss\n0,0.5,1.0\n1,0.6,0.9\nepoch,accuracy,loss\n2,0.7,0.8\n")
    src = read_csv(csv)
    assert src.series["train.loss"].values.tolist() == [1.0, 0.9, 0.8]
    assert any("header is repeated 1 time" in n for n in src.notes)


def test_two_metrics_csv_of_one_logger_are_two_runs_not_a_disagreement(tmp_path: Path) -> None:
    """Uploads lose the version_N folders: two Lightning metrics.csv that differ are two runs."""
    from common.analysis.readers import load_inputs

    paths = []
    for n, scale in ((0, 1.0), (1, 0.8)):
        path = tmp_path / f"v{n}" / "metrics.csv"
        path.parent.mkdir()
        path.write_text("epoch,step,train_loss,val_loss,val_acc\n" + "".join(
            f"{e},{e * 10 + 9},{scale * (1.0 - e / 10):.4f},{scale * (1.1 - e / 10):.4f},{0.5 + e / 20:.4f}\n"
            for e in range(5)))
        paths.append(path)
    rep = run_checks(load_inputs(paths))
    assert not [c for c in rep.checks if c.id == "cross_source" and c.status == "fail"]


def test_a_pandas_printed_fastai_history_with_an_appended_session(tmp_path: Path) -> None:
    """fastai CSVLogger(append=True) read back with pandas: a row index first, the header again
    as a row, and the epoch counter restarting: the second session is numbered on."""
    log = tmp_path / "history.txt"
    log.write_text("\tepoch\ttrain_loss\tvalid_loss\terror_rate\ttime\n"
                   "0\t0\t0.421814\t0.215576\t0.081452\t00:18\n1\t1\t0.339672\t0.184925\t0.076546\t00:17\n"
                   "2\tepoch\ttrain_loss\tvalid_loss\terror_rate\ttime\n3\t0\t0.429223\t0.249327\t0.099607\t00:17\n")
    src = read_console_log(log)
    assert src.series["train.loss"].epochs.tolist() == [1, 2, 3]
    assert src.series["val.loss"].values.tolist() == [0.215576, 0.184925, 0.249327]
    assert src.restarts == [{"row": 3, "epoch": 0, "continues_as": 3}]  # epoch 3 of the series
    rep = run_checks(RunData(sources=[src]))
    assert rep.verdict == "warn" and any(c.id == "epochs_missing" and "restarts" in c.message for c in rep.checks)
