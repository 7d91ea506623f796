"""The analysis as a service: what ``teacher analyze`` and the API both call.

- :func:`write_analysis`: read inputs, run every check, write ``report.json`` and the plots.
- :func:`run_analysis`: the same for a job's run directory, cached in ``<run>/analysis`` and
  recomputed only when the run's files change; one process or thread at a time per run.
- :func:`public_report`: a report without the server's paths, for a client.

Flask-free and torch-free; errors are :class:`AnalysisInputError` (bad input) and
:class:`NoMetrics` (nothing to analyse yet), for the caller to translate.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from common import rundir
from common.atomic import atomic_write_text

if TYPE_CHECKING:  # the readers import NumPy: not at import time (the API imports this module)
    from common.analysis.hints import Hints
    from common.analysis.report import Report
    from common.analysis.series import RunData

# The plots write_plots may draw, in the order clients list them.
PLOT_NAMES = ("loss", "accuracy", "lr", "throughput", "step_loss")
# The files of a run directory whose changes make a cached report stale (plus tb/*tfevents*).
RUN_INPUTS = (rundir.HISTORY, rundir.STEPS, rundir.LOG, rundir.CONFIG)
METRICS_FILES = (rundir.HISTORY, rundir.STEPS)
ANALYSIS_DIR = "analysis"  # in a run directory: its cached report and plots (docs/run-directory.md)
REPORT = "report.json"
SIGNATURE = "inputs.json"
SERIES = "series.json"  # beside report.json for an upload: its per-epoch curves (epoch_series)
# The per-epoch metrics the dashboard's curves draw, as in a job's history.json epochs.
SERIES_METRICS = ("train.loss", "train.top1", "train.top5", "val.loss", "val.top1", "val.top5",
                  "lr", "train.throughput")


class NoMetrics(LookupError):
    """The run directory has no metrics (no history, no step stream) to analyse yet."""


def write_analysis(paths: Sequence[Path], out: Path, *, num_classes: int | None = None,
                   patterns: tuple[str, ...] = (), plots: bool = True,
                   display_names: Mapping[str, str] | None = None,
                   hints: Hints | None = None, series: bool = False) -> tuple[Report, dict[str, Path]]:
    """Read ``paths``, run every check, write ``out/report.json`` (atomically) and the PNGs;
    with ``series``, also ``out/series.json`` (:func:`epoch_series`, atomically).
    ``display_names`` (file name -> name to show) renames sources before the checks and plots
    run, so messages and legends say "console.log", not the stored name. Raises
    :class:`AnalysisInputError` on bad input."""
    from common.analysis.checks import run_checks
    from common.analysis.readers import load_inputs

    run = load_inputs(list(paths), num_classes=num_classes, patterns=patterns, hints=hints)
    if display_names:
        rename_sources(run, display_names)
        rename_in_hints(run, display_names)
    report = run_checks(run)
    out.mkdir(parents=True, exist_ok=True)
    if series:  # before the report: a report never stands without the curves it was made with
        atomic_write_text(out / SERIES, json.dumps(epoch_series(run), allow_nan=False) + "\n")
    atomic_write_text(out / REPORT, report.to_json() + "\n")
    written: dict[str, Path] = {}
    if plots:
        from common.analysis.plots import write_plots

        written = write_plots(run, report, out)
    return report, written


def epoch_series(run: RunData) -> list[dict[str, Any]]:
    """The per-epoch curves of ``run`` in the shape of a job's history.json epochs, so one
    chart code draws both: ``[{"epoch": 1, "train": {"loss", "top1", "top5", "throughput"},
    "val": {"loss", "top1", "top5"}, "lr"}, ...]``, ascending, one entry per epoch any metric
    has. Each metric is the run's primary series (the one the checks and PNG plots use; the
    last value of a repeated epoch, as :meth:`EpochSeries.by_epoch`); a non-finite value or a
    metric the epoch lacks is None (JSON null: no point drawn)."""
    values: dict[str, dict[int, float]] = {}
    for name in SERIES_METRICS:
        primary = run.primary(name)
        if primary is not None:
            values[name] = primary.by_epoch()
    epochs = sorted({e for by_epoch in values.values() for e in by_epoch})
    out = []
    for epoch in epochs:
        entry: dict[str, Any] = {"epoch": epoch, "train": {}, "val": {}}
        for name in SERIES_METRICS:
            value = values.get(name, {}).get(epoch)
            value = value if value is not None and math.isfinite(value) else None
            split, _, key = name.partition(".")
            if key:
                entry[split][key] = value
            else:
                entry[name] = value
        out.append(entry)
    return out


def rename_in_hints(run: RunData, shown: Mapping[str, str]) -> None:
    """Sidecar notes and origins name the uploaded file as the client called it."""
    def show(text: str) -> str:
        for stored, name in shown.items():
            text = text.replace(stored, name)
        return text

    run.hints.notes = [show(n) for n in run.hints.notes]
    run.hints.origin = {k: show(v) for k, v in run.hints.origin.items()}


def rename_sources(run: RunData, shown: Mapping[str, str]) -> None:
    """Give each source read from a file named in ``shown`` its display name (series too)."""
    for source in run.sources:
        stored = Path(source.path).name
        if stored in shown:
            new = shown[stored] if source.name == stored else source.name.replace(stored, shown[stored])
            for series in [*source.series.values(), *source.steps.values()]:
                series.source = new
            source.name = new


# ---------------------------------------------------------------------------- run directories
@dataclass(frozen=True)
class RunAnalysis:
    """A run directory's report (client-safe: :func:`public_report`) and its plots' folder."""

    report: dict[str, Any]
    out: Path

    def plots(self) -> list[str]:
        """The names of the plots drawn (a run without data for one has no file for it)."""
        return [name for name in PLOT_NAMES if (self.out / f"{name}.png").is_file()]

    def plot_bytes(self, name: str) -> bytes | None:
        """The PNG of an allowlisted plot, or None; read under the run's lock, since a
        concurrent recomputation may be rewriting it."""
        with locked(self.out):
            path = plot_path(self.out, name)
            return path.read_bytes() if path is not None else None


def plot_path(out: Path, name: str) -> Path | None:
    """The PNG of plot ``name`` in ``out`` if drawn; the path is built from the allowlist's
    constant, never from the name given."""
    for allowed in PLOT_NAMES:
        if name == allowed:
            path = out / f"{allowed}.png"
            return path if path.is_file() else None
    return None


def has_metrics(run_dir: Path) -> bool:
    return any((run_dir / name).is_file() for name in METRICS_FILES)


def run_analysis(run_dir: Path) -> RunAnalysis:
    """The report of a run directory, computed with :func:`write_analysis` into
    ``run_dir/analysis`` and reused while the run's files are unchanged. Raises
    :class:`NoMetrics` when there is nothing to analyse and :class:`AnalysisInputError` when
    the run's files cannot be read."""
    if not has_metrics(run_dir):
        raise NoMetrics(str(run_dir))
    out = run_dir / ANALYSIS_DIR
    with locked(out):
        current = signature(run_dir)
        cached = _cached_report(out, current)
        if cached is not None:
            return RunAnalysis(public_report(cached, run_dir), out)
        for name in PLOT_NAMES:  # a plot whose data is gone must not be served from an older run
            (out / f"{name}.png").unlink(missing_ok=True)
        report, _ = write_analysis([run_dir], out)
        atomic_write_text(out / SIGNATURE, json.dumps(current))
        return RunAnalysis(public_report(report.to_dict(), run_dir), out)


def signature(run_dir: Path) -> list[list[Any]]:
    """What the report of a run directory depends on: (name, size, mtime) of each input."""
    files = [run_dir / name for name in RUN_INPUTS]
    tb = run_dir / rundir.TENSORBOARD
    if tb.is_dir():
        files += sorted(p for p in tb.rglob("*tfevents*") if p.is_file())
    out = []
    for path in files:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        out.append([str(path.relative_to(run_dir)), st.st_size, st.st_mtime_ns])
    return out


def _cached_report(out: Path, current: list[list[Any]]) -> dict[str, Any] | None:
    try:
        if json.loads((out / SIGNATURE).read_text()) != current:
            return None
        report = json.loads((out / REPORT).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return report if isinstance(report, dict) and report else None


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """One writer or reader of an analysis directory at a time, across threads and processes
    (flock on a fresh descriptor), so nobody reads a PNG that another is still writing."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------------------- for clients
def public_report(report: dict[str, Any], base: Path) -> dict[str, Any]:
    """The report without server paths: sources are named relative to ``base``."""
    for source in report.get("sources", []):
        raw = str(source.get("path") or "")
        try:
            source["path"] = str(Path(raw).relative_to(base))
        except ValueError:
            source["path"] = Path(raw).name
    text = json.dumps(report, allow_nan=False)
    for prefix in {str(base), str(base.resolve())}:
        text = text.replace(prefix + "/", "")
    return json.loads(text)


def strip_base(message: str, base: Path) -> str:
    """A reader's message with ``base``'s path left out (files are named relative to it)."""
    for prefix in {str(base.resolve()), str(base)}:
        message = message.replace(prefix + "/", "")
    return message
