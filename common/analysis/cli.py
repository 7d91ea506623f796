"""``teacher analyze``: read metrics from any inputs, write report.json and plots, print a summary.

Exit codes: 0 no check failed, 1 a check failed, 2 bad input (missing path, unknown format,
malformed file). This is the only place that turns AnalysisInputError into an exit code.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from common.analysis.hints import user_hints
from common.analysis.series import AnalysisInputError
from common.analysis.service import write_analysis

from common.exitcodes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK  # noqa: F401

__all__ = ["analyze", "default_out_dir"]


def default_out_dir(paths: tuple[Path, ...]) -> Path:
    return paths[0] / "analysis" if paths[0].is_dir() else Path("analysis")


@click.command("analyze")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where report.json and the PNGs go (default: <first path>/analysis for a directory, else ./analysis)")
@click.option("--num-classes", type=click.IntRange(min=2), default=None,
              help="number of classes C (chance loss ln C); default from the run's config/history")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON on stdout (the summary goes to stderr)")
@click.option("--pattern", "patterns", multiple=True,
              help="extra console-log regex with named groups epoch/split/rest or metric names; repeatable")
@click.option("--no-plots", is_flag=True, help="write report.json only")
@click.option("--label-smoothing", type=click.FloatRange(min=0, max=1, max_open=True), default=None,
              help="hint: label smoothing used in training (explains a training loss above validation)")
@click.option("--mixup/--no-mixup", default=None, help="hint: mixup/CutMix used in training")
@click.option("--ema/--no-ema", default=None, help="hint: validation runs on EMA weights")
@click.option("--pretrained/--no-pretrained", default=None, help="hint: fine-tuned from pretrained weights")
@click.option("--accuracy-unit", type=click.Choice(["percent", "fraction"]), default=None,
              help="the unit of accuracies that the files do not declare (default: detected per file)")
def analyze(paths: tuple[Path, ...], out_dir: Path | None, num_classes: int | None, as_json: bool,
            patterns: tuple[str, ...], no_plots: bool, label_smoothing: float | None, mixup: bool | None,
            ema: bool | None, pretrained: bool | None, accuracy_unit: str | None) -> None:
    """Check a run's metrics for integrity and plot them.

    PATHS: run directories, history JSON, CSV (timm summary.csv), TensorBoard event files or
    directories, console logs. Several at once are cross-checked against each other.
    """
    out = out_dir or default_out_dir(paths)
    hints = user_hints(num_classes=num_classes, label_smoothing=label_smoothing, mixup=mixup, ema=ema,
                       pretrained=pretrained, accuracy_unit=accuracy_unit, origin="command line")
    try:
        report, plots = write_analysis(list(paths), out, patterns=patterns, plots=not no_plots, hints=hints)
    except AnalysisInputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(report.summary(), err=as_json)
    click.echo(f"wrote {out / 'report.json'}" + (f" and {', '.join(sorted(plots))}" if plots else ""), err=as_json)
    if as_json:
        click.echo(report.to_json())
    sys.exit(EXIT_FAILED if report.verdict == "fail" else EXIT_OK)
