"""PNG plots of a run's metrics with the report's findings marked on the curves.

Step streams can hold millions of points; drawing them all costs seconds and hundreds of MB in
Agg, and thinning by striding hides exactly the spikes one looks for. They are reduced to a
min/max envelope per bucket (numpy only), which keeps every extreme at a fixed cost.
"""
from __future__ import annotations

import io

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, no GUI toolkit import

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from common.analysis.report import CheckResult, Report  # noqa: E402
from common.atomic import atomic_write_bytes  # noqa: E402
from common.analysis.series import EpochSeries, RunData, StepSeries  # noqa: E402

FIGSIZE = (8.0, 4.5)
DPI = 100
MAX_BUCKETS = 2000  # ~2 vertices per horizontal pixel at 800 px wide
PLOT_FILES = ("loss.png", "accuracy.png", "lr.png", "throughput.png", "step_loss.png")
_STYLE = {"train": "-", "val": "--"}


def minmax_downsample(x: np.ndarray, y: np.ndarray, buckets: int = MAX_BUCKETS) -> tuple[np.ndarray, np.ndarray]:
    """Reduce to the min and max of each of ``buckets`` equal-count buckets.

    Each bucket becomes a vertical stroke from its min to its max, so a single spike survives
    any reduction. NaNs are ignored within a bucket (``fmin``/``fmax``), not propagated.
    """
    n = int(y.size)
    if n <= 2 * buckets:
        return x, y
    starts = np.linspace(0, n, buckets + 1).astype(np.int64)[:-1]
    lo = np.fmin.reduceat(y, starts)
    hi = np.fmax.reduceat(y, starts)
    xs = x[starts]
    out_x = np.repeat(xs, 2)
    out_y = np.empty(2 * buckets, dtype=np.float64)
    out_y[0::2], out_y[1::2] = lo, hi
    return out_x, out_y


def write_plots(run: RunData, report: Report | None, out_dir: Path) -> dict[str, Path]:
    """Write every plot whose data exists; returns {file name: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    problems = report.problems() if report is not None else []
    written: dict[str, Path] = {}
    plans = (
        ("loss.png", "Loss (mean cross-entropy per sample)", ("train.loss", "val.loss"), "loss", None),
        ("accuracy.png", "Accuracy", ("train.top1", "val.top1", "train.top5", "val.top5"), "accuracy (%)", None),
        ("lr.png", "Learning rate", ("lr",), "learning rate", "step.lr"),
        ("throughput.png", "Training throughput", ("train.throughput",), "images / s", None),
    )
    for filename, title, names, ylabel, stream in plans:
        path = plot_epoch_metrics(run, problems, names, title, ylabel, out_dir / filename, stream)
        if path is not None:
            written[filename] = path
    path = plot_step_loss(run.step_series("step.train_loss"), problems, out_dir / "step_loss.png")
    if path is not None:
        written["step_loss.png"] = path
    return written


def plot_epoch_metrics(run: RunData, problems: list[CheckResult], names: tuple[str, ...], title: str,
                       ylabel: str, path: Path, stream_name: str | None = None) -> Path | None:
    chance = float(np.log(run.num_classes)) if run.num_classes else None
    curves = select_curves(run, names, problems)
    stream = run.step_series(stream_name) if stream_name else None
    if not curves and stream is None:
        return None
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    try:
        if curves:
            for name, series in curves:
                draw_series(ax, name, series)
            mark_problems(ax, problems, curves)
            if chance is not None and any(n.endswith(".loss") for n, _ in curves):
                ax.axhline(chance, color="grey", lw=0.8, ls=":", label=f"chance ln C = {chance:.3g}")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
        else:
            x, y = minmax_downsample(stream.steps, stream.values)
            ax.plot(x, y, lw=0.8, label=f"{stream.name} ({stream.source})")
            ax.set_xlabel("optimizer step")
        save_figure(fig, ax, path, title=title, ylabel=ylabel)
    finally:
        plt.close(fig)
    return path


def select_curves(run: RunData, names: tuple[str, ...], problems: list[CheckResult]) -> list[tuple[str, EpochSeries]]:
    """The primary series of each metric; other sources' copies only where the report says they
    disagree (identical copies would just clutter the legend)."""
    disputed = {c.metric for c in problems if c.id == "cross_source"}
    curves = []
    for name in names:
        if name in disputed:
            curves.extend((name, s) for s in run.all_series(name))
        elif (primary := run.primary(name)) is not None:
            curves.append((name, primary))
    return curves


def draw_series(ax, name: str, series: EpochSeries) -> None:
    split = name.split(".")[0]
    order = np.argsort(series.epochs, kind="stable")
    ax.plot(series.epochs[order], series.values[order], _STYLE.get(split, "-"), marker="o", ms=3,
            lw=1.2, label=f"{name} ({series.source})")


def mark_problems(ax, problems: list[CheckResult], curves: list[tuple[str, EpochSeries]]) -> None:
    """Red crosses at each epoch a failed/warned check names, with the check id once per check."""
    labels_at: dict[tuple[float, float], int] = {}  # stack labels that land on the same point
    for check in problems:
        targets = [s for n, s in curves if n == check.metric and (check.source is None or s.source in check.source)]
        for series in targets:
            by_epoch = series.by_epoch()
            points = [(e, by_epoch[e]) for e in check.epochs if e in by_epoch and np.isfinite(by_epoch[e])]
            if not points:
                continue
            xs, ys = zip(*points)
            color = "red" if check.status == "fail" else "orange"
            ax.plot(xs, ys, "x", color=color, ms=10, mew=2, zorder=5)
            anchor = (float(xs[-1]), float(ys[-1]))
            stacked = labels_at.get(anchor, 0)
            labels_at[anchor] = stacked + 1
            ax.annotate(check.id, anchor, textcoords="offset points", xytext=(4, 6 + 10 * stacked),
                        color=color, fontsize=8)


def plot_step_loss(stream: StepSeries | None, problems: list[CheckResult], path: Path) -> Path | None:
    if stream is None or not len(stream):
        return None
    x, y = minmax_downsample(stream.steps, stream.values)
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    try:
        ax.plot(x, y, lw=0.6, color="tab:blue",
                label=f"interval loss ({stream.source}, {len(stream):,} points" +
                      (", min/max per bucket)" if x.size < len(stream) else ")"))
        bad = ~np.isfinite(stream.values)
        if bad.any():
            ax.plot(stream.steps[bad][:1000], np.zeros(min(int(bad.sum()), 1000)), "x", color="red",
                    label="non-finite (drawn at 0)")
        ax.set_xlabel("optimizer step")
        save_figure(fig, ax, path, title="Training loss per log interval", ylabel="loss")
    finally:
        plt.close(fig)
    return path


def save_figure(fig, ax, path: Path, *, title: str, ylabel: str) -> None:
    """The finishing touches every plot shares, then the PNG."""
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())  # a reader (the API) never sees half a PNG
