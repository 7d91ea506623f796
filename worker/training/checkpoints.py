"""Checkpoints: atomic, verified, and never loaded with pickle's full power.

Every epoch writes an immutable ``epoch_NNNN.pt`` once (temp file, fsync, rename) and never
opens it for writing again. ``last.pt`` and ``best.pt`` are hard links to it (a copy only where
the filesystem cannot link), so an epoch costs one file's bytes on disk, not three.

A save is one manifest write, the commit point: it already names the new epoch, the new
``last.pt``/``best.pt`` and the pruned set. Only then are the links replaced and old epoch files
removed. A crash between the two leaves a manifest that is right and files that lag behind it;
:meth:`CheckpointManager.complete_interrupted_save` (run on every start in an existing run
directory, before anything else) makes the files match again, and also repairs run directories
written by older versions, whose manifest was written before ``last``/``best`` were. The
manifest's ``best`` is always the best recorded epoch by the configured metric.

A step checkpoint (``step_NNNNNNNN.pt``, mid-epoch: periodic, or written when a stop was
requested) is committed the same way; it replaces the previous step file and is dropped by the
next epoch save, in the same manifest write. ``keep_last`` counts epoch files only. A resume
starts from the newest file that verifies, a step file included.

The training loop commits an epoch checkpoint off its thread (``save(background=True)``): it
takes the snapshot and writes the bytes to the page cache, and one thread makes them durable and
commits them while the next epoch trains, because on a slow disk the fsync of a large model
takes as long as an epoch of a small run. The order on disk is the same, so the guarantees above
hold; the previous checkpoint is simply the resume point for a little longer. Every other call
(the next save, a step checkpoint, a load, the end of the run) waits for the commit first.

A file whose bytes do not match the manifest (truncated, half-written, bit-rotted) is skipped
with a warning in favour of the previous good one. Loading always uses ``weights_only=True``: a
checkpoint from an untrusted source cannot execute code.
"""
from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import io
import logging
import os
import pickle
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from common import faults
from common.atomic import TMP_PREFIX, StagedWrite, fsync_dir, remove_stale_temp_files, sha256_file
from common.rundir import (ALIASES, BEST, LAST, MANIFEST, Best, CheckpointEntry, JsonObject,  # noqa: F401 (re-exported)
                           Manifest, epoch_file, epoch_of_file, is_epoch_file, is_step_file, manifest_entries, naming,
                           step_file)

log = logging.getLogger(__name__)

# os.link errors that mean "this filesystem (or this pair of paths) cannot hard-link": copy instead.
_NO_LINK_ERRNOS = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was required, or one failed verification."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()




def serialize(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


class _HashingWriter(io.RawIOBase):
    """What ``torch.save`` writes to: the bytes go to a staged write and through sha256 as they
    come, so a checkpoint is never held in memory whole (a second copy of the model and its
    optimizer state) and never read back to be hashed."""

    def __init__(self, staged: StagedWrite) -> None:
        self.staged, self.sha, self.size = staged, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = self.staged.write(data)
        self.sha.update(data)
        self.size += n
        return n


def stage_checkpoint(state: dict[str, Any], path: Path) -> tuple[StagedWrite, int, str]:
    """``torch.save(state)`` into the temp file of an atomic write of ``path`` (not yet
    durable: :meth:`StagedWrite.commit`); returns it with the bytes' size and sha256. On failure
    (a full disk) it raises with ``path``'s name and leaves no temp file."""
    with naming(path):
        staged = StagedWrite.open(path)
        try:
            writer = _HashingWriter(staged)
            torch.save(state, writer)
        except BaseException:
            staged.abandon()
            raise
    return staged, writer.size, writer.sha.hexdigest()


def load_checkpoint_file(path: Path, *, expected_sha256: str | None = None) -> dict[str, Any]:
    """Verify (when a digest is known) and load with ``weights_only=True``."""
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise CheckpointError(f"{path.name}: sha256 mismatch (file is truncated or corrupt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refused an object (a `__reduce__` payload, a class, a function): the
        # file is not a checkpoint this code wrote. Never retry without weights_only.
        raise CheckpointError(f"{path.name}: cannot be loaded safely: refused by weights-only loading, it holds "
                              f"objects other than tensors and plain data (not a teacher checkpoint; possibly "
                              f"tampered with): {_unpickling_detail(exc)}") from exc
    except Exception as exc:  # translated: truncated zip archives, ...
        raise CheckpointError(f"{path.name}: cannot be loaded safely: {exc}") from exc


def _unpickling_detail(exc: BaseException) -> str:
    """The line of torch's weights_only error that names what was refused (its other lines
    suggest loading with weights_only=False, which is exactly what must not happen)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the documentation"))]
    return " ".join(useful or lines)[:500]


def manifest_sha256(path: Path) -> str | None:
    """The sha256 that the manifest beside ``path`` records for it, if there is one. Only that
    entry is read: a manifest written or edited by another tool may have other entries this
    code would not accept, which must not stop using a checkpoint it does record (a manifest
    that is not JSON raises :class:`common.rundir.RunFileCorrupt`)."""
    entry = next((e for e in manifest_entries(path.parent / MANIFEST) if e["name"] == path.name), None)
    sha = entry.get("sha256") if entry is not None else None
    return sha if isinstance(sha, str) else None


class CheckpointManager:
    def __init__(self, directory: Path, *, keep_last: int, every_epochs: int, best_metric: str, best_mode: str):
        self.dir = Path(directory)  # created by the first save: a run that fails validation leaves none
        self.keep_last, self.every_epochs = keep_last, every_epochs
        self.best_metric, self.best_mode = best_metric, best_mode
        removed = remove_stale_temp_files(self.dir)
        if removed:
            log.warning("removed %d incomplete checkpoint temp file(s) left by an interrupted write", len(removed))
        self.entries: dict[str, CheckpointEntry] = {}
        self.best_record: Best | None = None
        # A background commit (save(background=True)) owns the two above until wait() returns.
        self._pending: threading.Thread | None = None
        self._commit_error: BaseException | None = None
        self.slowest_commit_s = 0.0  # what a commit took at most: a stop's step checkpoint may wait for one
        self._read_manifest()

    @property
    def best(self) -> JsonObject | None:
        """The manifest's ``best`` as JSON (``{"metric", "value", "epoch"}``), as progress.json
        and the log print it (after any pending commit)."""
        self.wait()
        return self.best_record.to_json() if self.best_record is not None else None

    # -- manifest ---------------------------------------------------------------------------
    def _read_manifest(self) -> None:
        try:
            manifest = Manifest.read(self.dir / MANIFEST)
        except ValueError as exc:
            # The manifest is written atomically, so this means outside damage: say so loudly.
            log.warning("checkpoint manifest unreadable (%s); falling back to scanning files", exc)
            return
        if manifest is not None:
            self.entries, self.best_record = manifest.entries(), manifest.best

    def _write_manifest(self) -> None:
        ordered = sorted(self.entries.values(), key=lambda e: (e.step, e.name))
        Manifest(self.best_metric, self.best_record, ordered).write(self.dir / MANIFEST)

    # -- saving -----------------------------------------------------------------------------
    def is_better(self, value: float | None) -> bool:
        if value is None or value != value:  # None or NaN never wins
            return False
        if self.best_record is None:
            return True
        best = self.best_record.value
        return value > best if self.best_mode == "max" else value < best

    def save(self, state: dict[str, Any], *, epoch: int, step: int, metrics: dict[str, float | None],
             background: bool = False) -> list[str]:
        """Write this epoch's file, commit it in the manifest, then link ``last.pt`` (and
        ``best.pt`` when it is better) to it and prune; returns the names it writes. If the
        epoch file's write fails (a full disk), it raises with the file's name, leaves no temp
        file and changes nothing else. A failure or crash after the manifest write leaves files
        that lag behind a correct manifest; :meth:`complete_interrupted_save` finishes the job
        on the next start.

        ``background``: only the snapshot (``torch.save``, streamed into the temp file's page
        cache: :func:`stage_checkpoint`) happens here; the rest (the fsync, the rename, the manifest, the links,
        the prune) runs on a thread while training goes on, in the same order, so the manifest
        still never names bytes that are not durable. Until :meth:`wait` returns, the previous
        checkpoint is the resume point: a crash in between costs the epoch, as a crash in the
        middle of a synchronous write does. Every other use of this manager waits first."""
        self.wait()
        try:
            epoch_name = epoch_file(epoch)
            self.dir.mkdir(parents=True, exist_ok=True)
            faults.current().in_checkpoint_write(epoch, lambda: serialize(state),
                                                 self.dir / f"{TMP_PREFIX}{epoch_name}.partial")
            # The snapshot: once this returns, training may change the tensors. The only write
            # of these bytes, ever.
            staged, size, sha = stage_checkpoint(state, self.dir / epoch_name)
        except BaseException:
            self._tidy()
            raise
        better = self.is_better(metrics.get(self.best_metric))
        entry = CheckpointEntry(epoch_name, epoch, step, size, sha, metrics, time.time())
        commit = functools.partial(self._commit_epoch, staged, entry, better=better)
        if background:
            self._pending = threading.Thread(target=self._run_commit, args=(commit,), name="checkpoint-commit",
                                             daemon=True)  # a crash that skips wait() is a crash before the commit
            self._pending.start()
        else:
            self._run_commit(commit)
            self._raise_commit_error()
        return [epoch_name, LAST] + ([BEST] if better else [])

    def _commit_epoch(self, staged: StagedWrite, entry: CheckpointEntry, *, better: bool) -> None:
        epoch_name, epoch = entry.name, entry.epoch
        with naming(staged.path):
            staged.commit()
        faults.current().in_commit(epoch)
        self.entries[epoch_name] = entry
        self.entries[LAST] = dataclasses.replace(entry, name=LAST)
        aliases = [LAST]
        if better:
            self.entries[BEST] = dataclasses.replace(entry, name=BEST)
            self.best_record = Best(self.best_metric, entry.metrics[self.best_metric], epoch)
            aliases.append(BEST)
        doomed = self._plan_prune(epoch)
        self._write_manifest()  # the commit point: the files below only catch up with it
        faults.current().after_manifest(epoch)
        for alias in aliases:
            self._link(epoch_name, alias)
        self._remove(doomed)

    def _run_commit(self, commit: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        try:
            commit()
        except BaseException as exc:  # kept for wait(), which raises it where the run can act on it
            self._commit_error = exc
            self._tidy()
        self.slowest_commit_s = max(self.slowest_commit_s, time.perf_counter() - t0)

    def wait(self) -> None:
        """Wait for a save's background commit; raise its error, if it failed (nothing it did
        not finish is in the manifest)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.join()
        self._raise_commit_error()

    def settle(self) -> None:
        """:meth:`wait`, logging a failed commit instead of raising it: for a run that is
        already ending with another error, which is the one it reports."""
        try:
            self.wait()
        except Exception as exc:
            log.error("the last epoch checkpoint's commit failed (%s): the manifest names the newest durable one, "
                      "the resume point", exc)

    def _raise_commit_error(self) -> None:
        error, self._commit_error = self._commit_error, None
        if error is not None:
            raise error

    def _tidy(self) -> None:
        try:
            remove_stale_temp_files(self.dir)  # atomic writes clean up after themselves; belt and braces
        except OSError:
            pass

    def save_step(self, state: dict[str, Any], *, epoch: int, step: int, batch: int) -> str:
        """Write a mid-epoch checkpoint (``epoch`` completed, ``batch`` micro-batches into the
        next one) and commit it in the manifest in place of the previous step file, which is
        then removed. Atomic like an epoch save: a crash at any point leaves the previous
        resume point usable."""
        self.wait()
        try:
            name = step_file(step)
            if name in self.entries:  # same step, later batch: never rewrite the listed resume point
                name = step_file(step, batch)
            self.dir.mkdir(parents=True, exist_ok=True)
            staged, size, sha = stage_checkpoint(state, self.dir / name)
            with naming(self.dir / name):
                staged.commit()
            older = [e.name for e in self.entries.values() if is_step_file(e.name) and e.name != name]
            for old in older:
                del self.entries[old]
            self.entries[name] = CheckpointEntry(name, epoch, step, size, sha, {}, time.time(), batch=batch)
            self._write_manifest()  # the commit point
            self._remove(older)
            return name
        except BaseException:
            self._tidy()
            raise

    # -- hard links -------------------------------------------------------------------------
    def _link(self, source: str, alias: str) -> None:
        """Make ``alias`` name the same bytes as ``source``: a hard link, made under a temp name
        and renamed over ``alias`` so a reader sees the old file or the new one. A copy only
        where the filesystem refuses to link. Never opens ``source`` for writing."""
        src, dst = self.dir / source, self.dir / alias
        tmp = self.dir / f"{TMP_PREFIX}{alias}.link"
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError as exc:
            if exc.errno not in _NO_LINK_ERRNOS:
                raise
            log.info("cannot hard-link %s to %s (%s): copying it", alias, source, exc.strerror)
            with naming(dst):
                self._copy(src, tmp)
        if dst.exists() and os.path.samefile(tmp, dst):
            tmp.unlink()  # rename(2) of two links to one inode is a no-op that keeps both names
            return
        os.replace(tmp, dst)
        fsync_dir(self.dir)

    @staticmethod
    def _copy(src: Path, tmp: Path) -> None:
        try:
            with open(src, "rb") as fin, open(tmp, "xb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fsync(fout.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # -- pruning ----------------------------------------------------------------------------
    def _plan_prune(self, current_epoch: int) -> list[str]:
        """Drop from the manifest every epoch file except the newest one and the newest
        ``keep_last`` periodic ones, and the step files it supersedes; return their names (removed after the manifest is written).
        ``best.pt`` is its own link to the inode, so removing the epoch file it came from keeps it."""
        epoch_files = sorted((e for e in self.entries.values() if is_epoch_file(e.name)), key=lambda e: e.epoch)
        periodic = [e for e in epoch_files if e.epoch % self.every_epochs == 0][-self.keep_last:]
        keep = {e.name for e in periodic} | {epoch_file(current_epoch)}
        doomed = [e.name for e in epoch_files if e.name not in keep]
        # Step files written before this epoch ended are superseded by its checkpoint.
        doomed += [e.name for e in self.entries.values() if is_step_file(e.name) and e.epoch < current_epoch]
        for name in doomed:
            del self.entries[name]
        return doomed

    def _remove(self, names: list[str]) -> None:
        for name in names:
            (self.dir / name).unlink(missing_ok=True)

    def _unlisted_older_epoch_files(self) -> list[str]:
        """Epoch files on disk that the manifest no longer lists although it lists a newer
        epoch: pruned by a save that was killed before it removed them. (An unlisted file newer
        than every listed one is an epoch whose save never committed; its epoch is replayed and
        the file rewritten, so it is left alone.)"""
        listed = [e.epoch for e in self.entries.values() if is_epoch_file(e.name)]
        if not listed:
            return []
        newest = max(listed)
        older = []
        for p in self.dir.iterdir():
            epoch = epoch_of_file(p.name)
            if epoch is not None and epoch < newest and p.name not in self.entries:
                older.append(p.name)
        return sorted(older)

    def _unlisted_step_files(self) -> list[str]:
        """Step files on disk that the manifest does not list: superseded by a save killed
        before it removed them, or written by one killed before its manifest commit (unverified
        bytes: never a resume point)."""
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.iterdir() if is_step_file(p.name) and p.name not in self.entries)

    # -- completing a save a crash interrupted ----------------------------------------------
    def _value(self, entry: CheckpointEntry) -> float | None:
        return entry.value(self.best_metric)

    def best_recorded(self) -> CheckpointEntry | None:
        """The best recorded epoch by the configured metric, among the epoch files listed and
        the current ``best.pt`` (whose epoch file may be pruned). Ties go to the earlier epoch,
        as in :meth:`is_better`."""
        candidates = [e for e in self.entries.values()
                      if (is_epoch_file(e.name) or e.name == BEST) and self._value(e) is not None]
        if not candidates:
            return None
        sign = -1.0 if self.best_mode == "max" else 1.0
        # Among equals, an epoch file before best.pt, so the alias is checked against its source.
        return min(candidates, key=lambda e: (sign * self._value(e), e.epoch, e.name == BEST))

    def complete_interrupted_save(self) -> list[str]:
        """Bring the files and the manifest to what the last committed save meant: ``last.pt``
        the newest epoch, ``best.pt`` the best recorded epoch, old epoch files pruned. Returns
        what it changed (empty when the directory was consistent, the usual case)."""
        self.wait()
        epochs = [e for e in self.entries.values() if is_epoch_file(e.name) and (self.dir / e.name).exists()]
        if not epochs:  # a run stopped inside its first epoch: at most a step file to tidy
            stray = self._unlisted_step_files()
            self._remove(stray)
            return stray
        newest = max(epochs, key=lambda e: (e.step, e.epoch))
        changed = self._ensure_alias(LAST, newest)
        best = self.best_recorded()
        if best is not None:
            if best.name != BEST:
                changed += self._ensure_alias(BEST, best)
            if self.entries.get(BEST) is not None and self.entries[BEST].sha256 == best.sha256:
                wanted = Best(self.best_metric, self._value(best), best.epoch)
                if self.best_record != wanted:
                    self.best_record = wanted
                    changed.append("best")
        doomed = self._plan_prune(newest.epoch)
        if changed or doomed:
            self._write_manifest()
        doomed += self._unlisted_older_epoch_files() + self._unlisted_step_files()
        self._remove(doomed)
        changed += doomed
        if changed:
            log.warning("completed an interrupted checkpoint save: %s (last = epoch %d, best = %s)",
                        ", ".join(changed), newest.epoch, self.best)
        return changed

    def _ensure_alias(self, alias: str, target: CheckpointEntry) -> list[str]:
        """Point ``alias`` at ``target``'s epoch file unless it already holds those bytes.
        Hashes only when the alias is not a link to the target (a copy, or a stale file), and
        never replaces an alias with a source that fails verification."""
        path, src = self.dir / alias, self.dir / target.name
        current = self.entries.get(alias)
        if current is not None and current.epoch == target.epoch and current.sha256 != target.sha256:
            # Not a save left behind but other bytes for the same epoch (damage, tampering):
            # left to the loader, which verifies, refuses and says so.
            return []
        if path.exists() and current is not None and current.sha256 == target.sha256:
            if os.path.samefile(path, src) or sha256_file(path) == target.sha256:
                return []
        if sha256_file(src) != target.sha256:
            log.warning("cannot point %s at %s: it does not match the manifest", alias, target.name)
            return []
        self._link(target.name, alias)
        self.entries[alias] = dataclasses.replace(target, name=alias)
        return [alias]

    # -- loading ----------------------------------------------------------------------------
    def candidates(self) -> list[CheckpointEntry]:
        """Manifest entries, newest first: a step file (only kept while newer than every epoch
        file) before ``last.pt`` before an epoch file of the same step."""
        self.wait()
        return sorted(self.entries.values(),
                      key=lambda e: (e.step, is_step_file(e.name), e.batch or 0, e.name == LAST, e.name != BEST),
                      reverse=True)

    def load_named(self, name: str) -> tuple[dict[str, Any], CheckpointEntry]:
        """The manifest's checkpoint ``name``, verified (the one another process chose)."""
        for entry in self.candidates():
            if entry.name == name:
                return load_checkpoint_file(self.dir / name, expected_sha256=entry.sha256), entry
        raise CheckpointError(f"checkpoint {name} is not in {self.dir}'s manifest")

    def load_latest(self) -> tuple[dict[str, Any], CheckpointEntry] | None:
        """The newest checkpoint that verifies and loads; warn about each one skipped."""
        for entry in self.candidates():
            if entry.name == BEST:
                continue  # best is not necessarily the latest state to resume from
            path = self.dir / entry.name
            if not path.exists():
                log.warning("checkpoint %s listed in the manifest is missing; trying an older one", entry.name)
                continue
            try:
                state = load_checkpoint_file(path, expected_sha256=entry.sha256)
            except CheckpointError as exc:
                log.warning("%s; trying an older checkpoint", exc)
                continue
            return state, entry
        return None
