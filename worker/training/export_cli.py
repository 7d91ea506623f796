"""``teacher export``: the command-line edge of :mod:`worker.training.export` (kept apart so
that listing the commands does not import torch)."""
from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("export")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for model.pt and model.json (created if needed).")
def export_cmd(source: Path, out_dir: Path) -> None:
    """Export SOURCE (a checkpoint, or the best.pt of a run or job directory) as a weights-only
    model.pt plus model.json (architecture, classes, exact preprocessing, metrics, sha256)."""
    from .checkpoints import CheckpointError
    from .export import ExportError, export_checkpoint

    try:
        info = export_checkpoint(source, out_dir)
    except ExportError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except CheckpointError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    meta = info.meta
    top1 = meta["metrics"].get("val.top1")
    verified = "verified against its manifest" if meta["source"]["verified_against_manifest"] else "no manifest to verify against"
    click.echo(f"exported {info.source.name} (epoch {meta['epoch']}, {meta['arch']}, {meta['num_classes']} classes"
               + (f", val top-1 {top1:.2f}%" if isinstance(top1, (int, float)) else "") + f"; source sha256 {verified})", err=True)
    click.echo(f"{info.model_path}  sha256 {info.sha256}")
    click.echo(str(info.meta_path))
