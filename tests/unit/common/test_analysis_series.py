"""The per-epoch curves stored with an uploaded analysis (common/analysis/service.epoch_series,
written as out/series.json by uploads.create_analysis): what the dashboard's report page draws."""
from __future__ import annotations

import io
import json
import math

from common.analysis.series import EpochSeries, RunData, Source
from common.analysis.service import SERIES, epoch_series
from common.analysis.uploads import OUT, IncomingFile, create_analysis, load_analysis


def test_the_series_are_the_history_shape_one_entry_per_epoch(tmp_path):
    """The original incident uploaded as a Keras-style history: train loss 0.0 at every epoch."""
    history = json.dumps({"loss": [0.0, 0.0, 0.0], "val_loss": [9.5, 9.5, 9.5],
                          "accuracy": [0.1, 0.2, 0.3], "val_accuracy": [0.05, 0.05, 0.06]}).encode()
    folder = tmp_path / "a1"
    made = create_analysis(folder, [IncomingFile("files", "history.json", io.BytesIO(history))], analysis_id="a1",
                           user="alice", user_id=1, num_classes=10, patterns=())
    assert [e["epoch"] for e in made.series] == [1, 2, 3]
    assert [e["train"]["loss"] for e in made.series] == [0.0, 0.0, 0.0]
    assert [e["val"]["loss"] for e in made.series] == [9.5, 9.5, 9.5]
    assert [round(e["train"]["top1"], 6) for e in made.series] == [10.0, 20.0, 30.0]  # percent, as the checks see it
    assert made.series[0]["val"]["top5"] is None and made.series[0]["lr"] is None  # not in the file: no point
    assert json.loads((folder / OUT / SERIES).read_text()) == made.series
    assert load_analysis(folder).series == made.series


def test_repeated_epochs_keep_the_last_value_and_non_finite_values_are_null():
    source = Source("h", "history", "h.json")
    source.add(EpochSeries("train.loss", [1, 2, 2, 3], [1.0, 5.0, 0.8, math.nan], "h"))
    source.add(EpochSeries("val.top1", [2, 4], [50.0, math.inf], "h"))
    got = epoch_series(RunData(sources=[source]))
    assert [e["epoch"] for e in got] == [1, 2, 3, 4]
    assert [e["train"]["loss"] for e in got] == [1.0, 0.8, None, None]
    assert [e["val"]["top1"] for e in got] == [None, 50.0, None, None]
    json.dumps(got, allow_nan=False)  # what series.json holds is strict JSON


def test_an_analysis_made_before_series_were_stored_still_loads(tmp_path):
    history = json.dumps({"loss": [2.0, 1.5], "val_loss": [2.1, 1.7]}).encode()
    folder = tmp_path / "a2"
    create_analysis(folder, [IncomingFile("files", "h.json", io.BytesIO(history))], analysis_id="a2",
                    user="alice", user_id=1, num_classes=None, patterns=())
    (folder / OUT / SERIES).unlink()
    assert load_analysis(folder).series is None
