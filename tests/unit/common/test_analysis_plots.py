"""Plots: written with stable names, not blank, problems marked, long streams downsampled."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from common.analysis.checks import run_checks
from common.analysis.plots import minmax_downsample, write_plots
from common.analysis.readers import load_inputs, read_run_dir
from common.analysis.series import RunData, Source, StepSeries
from common.analysis.synthetic import write_synthetic_run


def assert_not_blank(path: Path, size: tuple[int, int] = (800, 450)) -> None:
    with Image.open(path) as image:
        assert image.size == size
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.var() > 0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # axes, text and several curve colours


def test_run_dir_plots_are_written_and_not_blank(tmp_path: Path) -> None:
    write_synthetic_run(tmp_path / "run")
    run = read_run_dir(tmp_path / "run")
    written = write_plots(run, run_checks(run), tmp_path / "out")
    assert sorted(written) == sorted(["loss.png", "accuracy.png", "lr.png", "throughput.png", "step_loss.png"])
    for path in written.values():
        assert_not_blank(path)


def test_absent_data_skips_its_plot(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]}))
    run = load_inputs([path])
    assert sorted(write_plots(run, run_checks(run), tmp_path / "out")) == ["loss.png"]


def red_pixels(path: Path) -> int:
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB")).astype(int)
    return int(np.sum((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)))


def test_problems_are_marked_in_red(tmp_path: Path) -> None:
    healthy = {"loss": [2.0, 1.5, 1.0, 0.8], "val_loss": [2.1, 1.6, 1.2, 0.9]}
    broken = dict(healthy, val_loss=[2.1, 2.1, 2.1, 2.1])
    counts = []
    for name, data in (("ok", healthy), ("bad", broken)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        run = load_inputs([path])
        counts.append(red_pixels(write_plots(run, run_checks(run), tmp_path / name)["loss.png"]))
    assert counts[0] == 0 and counts[1] > 50


def test_minmax_downsample_keeps_spikes_and_bounds_size() -> None:
    n = 1_000_003
    x = np.arange(n, dtype=np.float64)
    y = np.ones(n)
    y[777_777] = 50.0
    y[123_456] = -5.0
    y[500_000] = np.nan
    dx, dy = minmax_downsample(x, y, buckets=1000)
    assert dx.size == dy.size == 2000
    assert np.nanmax(dy) == 50.0 and np.nanmin(dy) == -5.0 and not np.isnan(dy).any()
    short_x, short_y = minmax_downsample(x[:100], y[:100], buckets=1000)
    assert short_y.size == 100


def test_step_loss_plot_with_a_million_points(tmp_path: Path) -> None:
    n = 1_000_000
    steps = np.arange(n, dtype=np.float64)
    values = 3.0 * np.exp(-steps / 3e5) + 0.05 * np.sin(steps / 50)
    source = Source("steps.jsonl", "steps", "steps.jsonl")
    source.steps["step.train_loss"] = StepSeries("step.train_loss", steps, values, "steps.jsonl")
    written = write_plots(RunData(sources=[source]), None, tmp_path)
    assert list(written) == ["step_loss.png"]
    assert_not_blank(written["step_loss.png"])
