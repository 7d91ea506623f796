"""Deleting a finished job's files: one implementation for ``DELETE /jobs/{id}`` and for
``teacher prune``.

A job is deleted in two steps so that a crash never leaves a half-deleted job that still lists:
inside one transaction its directory is renamed away (atomic) and ``deleted_at`` set; after the
commit the renamed tree is removed. If the transaction fails, the directory is put back.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common import rundir
from common.atomic import atomic_write_json
from common.store.db import transaction

from common.store.jobs import JobConflict, JobPaths
from common.store.models import FINISHED, Job, utcnow

log = logging.getLogger(__name__)


def unfinished_dependent(session: Session, job_id: str) -> str | None:
    """An unfinished job that waits for ``job_id`` (``after``) or will start from one of its
    checkpoints (``init_from``, which need not be its ``after``), if any."""
    unfinished = (Job.deleted_at.is_(None), Job.status.not_in([st.value for st in FINISHED]))
    waiting = session.scalar(select(Job.id).where(Job.after_id == job_id, *unfinished).limit(1))
    if waiting:
        return waiting
    for other_id, init_from in session.execute(select(Job.id, Job.init_from).where(Job.init_from.is_not(None),
                                                                                  *unfinished)):
        if isinstance(init_from, dict) and init_from.get("job") == job_id:
            return other_id
    return None


def check_deletable(session: Session, job: Job) -> None:
    """Raise :class:`JobConflict` unless the job's files may go now."""
    if not job.job_status.finished:
        raise JobConflict(f"job {job.id} is {job.status}; cancel it and wait until it has stopped, then delete it")
    dependent = unfinished_dependent(session, job.id)
    if dependent:
        raise JobConflict(f"job {dependent} has not finished and waits for (or starts from) job {job.id}")


def delete_finished_job(factory: "sessionmaker[Session]", find: Callable[[Session], Job], jobs_root: Path) -> str:
    """Delete the job that ``find`` returns (it locks the row) and its files; returns its id.
    Raises :class:`JobConflict` for a job that may not be deleted now."""
    root: Path | None = None
    trash: Path | None = None
    try:
        with transaction(factory) as s:
            job = find(s)
            check_deletable(s, job)
            job_id = job.id
            root = JobPaths.of(jobs_root, job.id).root
            if root.exists():
                trash = root.with_name(f".deleted-{job.id}")
                os.replace(root, trash)  # atomic: the job's files are gone from its path at once
            job.deleted_at = utcnow()
    except BaseException:
        if trash is not None and root is not None and trash.exists():
            os.replace(trash, root)  # the transaction did not commit: the job keeps its files
        raise
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
        if trash.exists():  # e.g. a file this process may not remove; the job is deleted all the same
            log.warning("job %s: could not remove every file under %s", job_id, trash)
    return job_id


def keep_best_only(paths: JobPaths) -> int:
    """Remove every checkpoint of a finished run except ``best.pt`` (its data stays: the epoch
    file it links to goes, the link keeps the inode) and rewrite the manifest to list only it.
    Returns the bytes freed (0 if there is no best checkpoint: nothing is removed then)."""
    ckpts, manifest_path = paths.checkpoints, paths.manifest
    best = ckpts / rundir.BEST
    if not best.is_file() or not manifest_path.is_file():
        return 0
    manifest = json.loads(manifest_path.read_text())
    kept = [e for e in manifest.get("checkpoints", []) if e.get("name") == rundir.BEST]
    if not kept:
        return 0
    manifest["checkpoints"] = kept
    atomic_write_json(manifest_path, manifest)  # the manifest first: it never names a file that is gone
    best_inode = best.stat().st_ino
    freed = 0
    for f in ckpts.glob("*.pt"):
        if f.name != rundir.BEST:
            st = f.stat()
            if st.st_ino != best_inode:
                freed += st.st_size
            f.unlink()
    return freed


__all__ = ["check_deletable", "delete_finished_job", "keep_best_only", "unfinished_dependent"]
