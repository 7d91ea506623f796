"""``teacher export``: the command-line edge of :mod:`worker.training.export` (kept apart so
that listing the commands does not import torch)."""
from __future__ import annotations

import sys
from pathlib import Path

import click


def _job_or_path(source: Path) -> Path:
    """A path as given, or, when nothing exists there and it looks like a job id (or a unique
    prefix of 6+ characters), that job's directory under the jobs root (TEACHER_JOBS_ROOT)."""
    import re

    from common.rundir import is_job_id
    from common.settings import Settings
    from .export import ExportError

    text = str(source)
    if source.exists() or not re.fullmatch(r"[0-9a-f]{6,32}", text.lower()):
        return source
    jobs_root = Settings.from_env().jobs_root
    matches = sorted(p for p in jobs_root.glob(f"{text.lower()}*") if is_job_id(p.name))
    if len(matches) > 1:
        raise ExportError(f"{text} is ambiguous: {', '.join(p.name for p in matches)}")
    if not matches:
        raise ExportError(f"{text}: no such checkpoint, run directory or job under the jobs root")
    return matches[0]


@click.command("export")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for model.pt and model.json (created if needed).")
def export_cmd(source: Path, out_dir: Path) -> None:
    """Export SOURCE (a checkpoint, the best.pt of a run or job directory, or a job id or unique
    prefix, looked up under the jobs root) as a weights-only
    model.pt plus model.json (architecture, classes, exact preprocessing, metrics, sha256)."""
    from common.rundir import Metric, RunFileCorrupt
    from .checkpoints import CheckpointError
    from .export import ExportError, export_checkpoint

    try:
        info = export_checkpoint(_job_or_path(source), out_dir)
    except ExportError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (CheckpointError, RunFileCorrupt) as exc:  # RunFileCorrupt: a damaged manifest beside it
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    meta = info.record
    top1 = meta.metrics.get(Metric.VAL_TOP1.value)
    verified = "verified against its manifest" if meta.source.verified_against_manifest else "no manifest to verify against"
    click.echo(f"exported {info.source.name} (epoch {meta.epoch}, {meta.arch}, {meta.num_classes} classes"
               + (f", val top-1 {top1:.2f}%" if isinstance(top1, (int, float)) else "") + f"; source sha256 {verified})", err=True)
    click.echo(f"{info.model_path}  sha256 {info.sha256}")
    click.echo(str(info.meta_path))
