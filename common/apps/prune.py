"""``teacher prune``: free the disk that old finished jobs hold (an operator's command).

Like ``teacher tokens``, it works on the job store and the jobs volume directly, so whoever can
run it is an administrator of this deployment. ``--keep-best`` keeps every job listed and its
best checkpoint (and its history, config, reports and export), removing only the other
checkpoints; without it the jobs are deleted exactly as ``DELETE /api/v1/jobs/{id}`` deletes them.
"""
from __future__ import annotations

import datetime as dt
import re

import click

_AGE = re.compile(r"^(\d+)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_age(text: str) -> dt.timedelta:
    match = _AGE.match(text.strip())
    if not match:
        raise click.BadParameter("expected a number and a unit: 30d, 12h or 90m", param_hint="--older-than")
    return dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _disk_bytes(root) -> int:  # type: ignore[no-untyped-def]
    """Bytes under ``root``, each inode once (best.pt and last.pt are links to epoch files)."""
    sizes = {}
    for f in root.rglob("*") if root.exists() else ():
        if f.is_file() and not f.is_symlink():
            st = f.stat()
            sizes[(st.st_dev, st.st_ino)] = st.st_size
    return sum(sizes.values())


@click.command()
@click.option("--older-than", "older_than", required=True, metavar="AGE",
              help="Finished (succeeded, failed, cancelled) longer ago than this: 30d, 12h, 90m.")
@click.option("--keep-best", is_flag=True, help="Keep the jobs and their best checkpoint; remove the other checkpoints.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
def prune(older_than: str, keep_best: bool, dry_run: bool) -> None:
    """Delete old finished jobs (or all but their best checkpoint) to free disk space."""
    from sqlalchemy import select

    from common.settings import Settings
    from common.store import FINISHED, Job, make_engine, make_sessionmaker, transaction, utcnow
    from common.store.deletion import delete_finished_job, keep_best_only, unfinished_dependent
    from common.store.jobs import JobConflict, JobPaths, lock_job

    cutoff = utcnow() - parse_age(older_than)
    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    factory = make_sessionmaker(engine)
    try:
        with transaction(factory) as s:
            ids = list(s.scalars(select(Job.id).where(
                Job.deleted_at.is_(None), Job.status.in_([st.value for st in FINISHED]),
                Job.finished_at.is_not(None), Job.finished_at < cutoff).order_by(Job.finished_at)))
        freed, done, skipped = 0, 0, 0
        for job_id in ids:
            paths = JobPaths.of(settings.jobs_root, job_id)
            if dry_run:
                click.echo(f"would {'trim' if keep_best else 'delete'} {job_id}")
                continue
            if keep_best:
                with transaction(factory) as s:
                    dependent = unfinished_dependent(s, job_id)
                if dependent:  # it may start from last.pt or an epoch file: keep them all
                    click.echo(f"kept {job_id}: job {dependent} has not finished and starts from it", err=True)
                    skipped += 1
                    continue
                freed += keep_best_only(paths)
                done += 1
                continue
            size = _disk_bytes(paths.root)
            try:
                delete_finished_job(factory, lambda s, job_id=job_id: lock_job(s, job_id), settings.jobs_root)
            except JobConflict as exc:  # e.g. an unfinished job starts from it
                click.echo(f"kept {job_id}: {exc}", err=True)
                skipped += 1
                continue
            freed += size
            done += 1
    finally:
        engine.dispose()
    if dry_run:
        click.echo(f"prune: {len(ids)} job(s) finished before {cutoff:%Y-%m-%d %H:%M} UTC (dry run: nothing removed)")
    else:
        verb = "trimmed to their best checkpoint" if keep_best else "deleted"
        click.echo(f"prune: {done} job(s) {verb}, {skipped} kept, {freed / 2**20:.1f} MiB freed")


__all__ = ["prune", "parse_age"]
