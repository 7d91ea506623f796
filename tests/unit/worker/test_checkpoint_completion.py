"""Checkpoint directory layout and repair, in-process and fast: ``last.pt``/``best.pt`` are hard
links to the immutable epoch files (one copy on disk per kept epoch), and a save that a crash
cut short is completed on the next start. (The SIGKILL at the exact moment, through the real
CLI, is in tests/system/test_resume.py.)"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from worker.training.checkpoints import CheckpointManager, sha256_file


def _state(epoch: int) -> dict:
    return {"format": "teacher-checkpoint/1", "model": {"w": torch.full((256,), float(epoch))}, "epoch": epoch}


def _manager(directory: Path, keep_last: int = 2, every_epochs: int = 1) -> CheckpointManager:
    return CheckpointManager(directory, keep_last=keep_last, every_epochs=every_epochs,
                             best_metric="val.top1", best_mode="max")


def _save(ckpts: CheckpointManager, epoch: int, top1: float) -> None:
    ckpts.save(_state(epoch), epoch=epoch, step=4 * epoch, metrics={"val.top1": top1})


def _manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def assert_manifest_verifies(directory: Path) -> dict:
    """Every name the manifest lists exists with its recorded sha256 and size, and every .pt
    file on disk is listed."""
    manifest = _manifest(directory)
    for e in manifest["checkpoints"]:
        path = directory / e["name"]
        assert sha256_file(path) == e["sha256"] and path.stat().st_size == e["size"], e["name"]
    assert sorted(p.name for p in directory.glob("*.pt")) == sorted(e["name"] for e in manifest["checkpoints"])
    return manifest


def _epoch_of(path: Path) -> int:
    return torch.load(path, weights_only=True)["epoch"]


def _inode(path: Path) -> int:
    return os.stat(path).st_ino


def test_last_and_best_are_hard_links_one_copy_per_kept_epoch(tmp_path):
    ck = tmp_path / "checkpoints"
    ckpts = _manager(ck)
    for epoch, top1 in ((1, 10.0), (2, 30.0), (3, 20.0)):
        _save(ckpts, epoch, top1)
    assert _inode(ck / "last.pt") == _inode(ck / "epoch_0003.pt")
    assert _inode(ck / "best.pt") == _inode(ck / "epoch_0002.pt")
    assert not (ck / "epoch_0001.pt").exists()
    assert len({_inode(p) for p in ck.glob("*.pt")}) == 2  # epochs 2 and 3: one copy each
    manifest = assert_manifest_verifies(ck)
    assert manifest["best"] == {"metric": "val.top1", "value": 30.0, "epoch": 2}

    # Epoch 2's file is pruned now; best.pt, another name for the same inode, keeps its bytes.
    best_sha = sha256_file(ck / "best.pt")
    _save(ckpts, 4, 15.0)
    assert not (ck / "epoch_0002.pt").exists()
    assert sha256_file(ck / "best.pt") == best_sha and _epoch_of(ck / "best.pt") == 2
    assert _inode(ck / "last.pt") == _inode(ck / "epoch_0004.pt")
    assert len({_inode(p) for p in ck.glob("*.pt")}) == 3  # kept epochs 3, 4 and the best (2)
    assert all(os.stat(ck / n).st_nlink == 1 for n in ("best.pt", "epoch_0003.pt"))
    assert_manifest_verifies(ck)
    assert _manager(ck).complete_interrupted_save() == []  # a consistent directory is left alone


def test_replacing_last_never_writes_into_an_older_epoch_file(tmp_path):
    ck = tmp_path / "checkpoints"
    ckpts = _manager(ck, keep_last=3)
    _save(ckpts, 1, 10.0)
    before = sha256_file(ck / "epoch_0001.pt")
    _save(ckpts, 2, 5.0)
    _save(ckpts, 3, 1.0)
    assert sha256_file(ck / "epoch_0001.pt") == before and _epoch_of(ck / "epoch_0001.pt") == 1
    assert _inode(ck / "best.pt") == _inode(ck / "epoch_0001.pt")
    assert _epoch_of(ck / "last.pt") == 3 and not list(ck.glob(".tmp-*"))


def test_a_filesystem_without_hard_links_gets_copies(tmp_path, monkeypatch):
    def no_link(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dst))

    monkeypatch.setattr(os, "link", no_link)
    ck = tmp_path / "checkpoints"
    ckpts = _manager(ck)
    _save(ckpts, 1, 10.0)
    _save(ckpts, 2, 20.0)
    assert _inode(ck / "last.pt") != _inode(ck / "epoch_0002.pt")
    assert sha256_file(ck / "last.pt") == sha256_file(ck / "epoch_0002.pt") == sha256_file(ck / "best.pt")
    assert_manifest_verifies(ck)
    assert not list(ck.glob(".tmp-*"))
    assert _manager(ck).complete_interrupted_save() == []  # a verified copy is not rewritten


def test_a_save_cut_short_by_an_older_version_is_completed(tmp_path):
    """The incident's directory, as the previous code left it when killed after writing
    epoch_0003.pt and the manifest: last/best still epoch 2 (copies), epoch_0001 not pruned,
    the manifest naming epoch 2 as best although epoch 3 is better."""
    ck = tmp_path / "checkpoints"
    ckpts = _manager(ck, keep_last=5)
    for epoch, top1 in ((1, 60.0), (2, 65.0), (3, 68.3)):
        _save(ckpts, epoch, top1)
    manifest = _manifest(ck)
    by_name = {e["name"]: e for e in manifest["checkpoints"]}
    for alias in ("last.pt", "best.pt"):
        (ck / alias).unlink()
        shutil.copyfile(ck / "epoch_0002.pt", ck / alias)
        by_name[alias] = {**by_name["epoch_0002.pt"], "name": alias}
    manifest.update(best={"metric": "val.top1", "value": 65.0, "epoch": 2}, checkpoints=list(by_name.values()))
    (ck / "manifest.json").write_text(json.dumps(manifest))

    changed = _manager(ck, keep_last=2).complete_interrupted_save()
    assert set(changed) == {"last.pt", "best.pt", "best", "epoch_0001.pt"}
    assert _inode(ck / "best.pt") == _inode(ck / "last.pt") == _inode(ck / "epoch_0003.pt")
    assert sorted(p.name for p in ck.glob("epoch_*.pt")) == ["epoch_0002.pt", "epoch_0003.pt"]
    manifest = assert_manifest_verifies(ck)
    assert manifest["best"] == {"metric": "val.top1", "value": 68.3, "epoch": 3}
    best = next(e for e in manifest["checkpoints"] if e["name"] == "best.pt")
    assert best["epoch"] == 3 and best["sha256"] == sha256_file(ck / "epoch_0003.pt")


def test_completion_keeps_a_best_whose_epoch_file_was_pruned_and_never_links_a_corrupt_file(tmp_path):
    ck = tmp_path / "checkpoints"
    ckpts = _manager(ck)
    for epoch, top1 in ((1, 50.0), (2, 10.0), (3, 20.0)):
        _save(ckpts, epoch, top1)
    assert not (ck / "epoch_0001.pt").exists() and _epoch_of(ck / "best.pt") == 1
    assert _manager(ck).complete_interrupted_save() == []

    # last.pt lost and the newest epoch file damaged: nothing is linked to bad bytes.
    (ck / "last.pt").unlink()
    (ck / "epoch_0003.pt").unlink()
    (ck / "epoch_0003.pt").write_bytes(b"garbage")
    assert _manager(ck).complete_interrupted_save() == []
    assert not (ck / "last.pt").exists() and _epoch_of(ck / "best.pt") == 1


@pytest.mark.parametrize("mode,values,best_epoch", [("max", (1.0, 3.0, 3.0), 2), ("min", (3.0, 1.0, 1.0), 2),
                                                    ("max", (None, 2.0, 1.0), 2)])
def test_best_recorded_is_the_first_best_epoch_by_the_configured_metric(tmp_path, mode, values, best_epoch):
    ck = tmp_path / "checkpoints"
    ckpts = CheckpointManager(ck, keep_last=5, every_epochs=1, best_metric="val.loss", best_mode=mode)
    for epoch, value in enumerate(values, start=1):
        ckpts.save(_state(epoch), epoch=epoch, step=epoch, metrics={"val.loss": value})
    assert ckpts.best_recorded().epoch == best_epoch
    assert _epoch_of(ck / "best.pt") == best_epoch


def test_default_run_dirs_never_collide(tmp_path, monkeypatch):
    """RUNS_ROOT/<name>, then <name>-<UTC stamp>, then -2, -3 within the same second; each one
    created (claimed) when it is chosen."""
    import time

    from worker.training import cli

    monkeypatch.setenv("TEACHER_RUNS_ROOT", str(tmp_path))
    monkeypatch.setattr(time, "gmtime", lambda *a: time.struct_time((2025, 1, 2, 3, 4, 5, 3, 2, 0)))
    dirs = [cli.default_run_dir("demo") for _ in range(4)]
    assert [d.name for d in dirs] == ["demo", "demo-20250102-030405", "demo-20250102-030405-2", "demo-20250102-030405-3"]
    assert all(d.is_dir() and d.parent == tmp_path for d in dirs)


# ------------------------------------------------------------------------ step (mid-epoch) files
def _save_step(ckpts: CheckpointManager, epoch: int, step: int, batch: int) -> str:
    return ckpts.save_step({**_state(epoch), "position": {"batch": batch}}, epoch=epoch, step=step, batch=batch)


def test_a_step_file_replaces_the_previous_one_and_is_the_resume_point(tmp_path):
    ck = tmp_path / "checkpoints"
    ckpts = _manager(ck)
    _save(ckpts, 1, 10.0)  # step 4
    assert _save_step(ckpts, 1, 5, 1) == "step_00000005.pt"
    _save_step(ckpts, 1, 6, 2)
    manifest = assert_manifest_verifies(ck)
    steps = [e for e in manifest["checkpoints"] if e["name"].startswith("step_")]
    assert [(e["name"], e["epoch"], e["step"], e["batch"]) for e in steps] == [("step_00000006.pt", 1, 6, 2)]
    state, entry = _manager(ck).load_latest()
    assert entry.name == "step_00000006.pt" and state["position"] == {"batch": 2}
    # last.pt and best.pt stay epoch checkpoints
    assert _epoch_of(ck / "last.pt") == 1 and manifest["best"]["epoch"] == 1


def test_a_step_file_at_an_epoch_files_step_wins(tmp_path):
    """A stop inside the first accumulation window after an epoch: no optimizer step since, so
    the step file has the epoch file's step; it is newer (it holds the batches done)."""
    ck = tmp_path / "checkpoints"
    ckpts = _manager(ck)
    _save(ckpts, 1, 10.0)  # step 4
    _save_step(ckpts, 1, 4, 1)
    _, entry = _manager(ck).load_latest()
    assert entry.name == "step_00000004.pt"
    from common.rundir import Manifest
    assert Manifest.read(ck / "manifest.json").resume_point().name == "step_00000004.pt"


def test_the_next_epoch_checkpoint_removes_step_files(tmp_path):
    ck = tmp_path / "checkpoints"
    ckpts = _manager(ck)
    _save(ckpts, 1, 10.0)
    _save_step(ckpts, 1, 6, 2)
    _save(ckpts, 2, 20.0)  # step 8
    manifest = assert_manifest_verifies(ck)
    assert not list(ck.glob("step_*.pt"))
    assert _manager(ck).load_latest()[1].name == "last.pt"
    assert {e["name"] for e in manifest["checkpoints"]} == {"epoch_0001.pt", "epoch_0002.pt", "last.pt", "best.pt"}


def test_a_corrupt_step_file_falls_back_to_the_epoch_checkpoint(tmp_path, caplog):
    ck = tmp_path / "checkpoints"
    ckpts = _manager(ck)
    _save(ckpts, 1, 10.0)
    name = _save_step(ckpts, 1, 6, 2)
    data = (ck / name).read_bytes()
    (ck / name).write_bytes(data[: len(data) // 2])
    _, entry = _manager(ck).load_latest()
    assert entry.name == "last.pt" and entry.epoch == 1
    assert "sha256 mismatch" in caplog.text


def test_unlisted_step_files_are_removed_at_start(tmp_path):
    """A step file on disk that the manifest does not list (its save was killed before the
    commit, or after an epoch save's commit but before it removed the file) is never used."""
    ck = tmp_path / "checkpoints"
    ckpts = _manager(ck)
    _save_step(ckpts, 0, 2, 2)  # inside epoch 1: no epoch file yet
    shutil.copy(ck / "step_00000002.pt", ck / "step_00000003.pt")  # never committed
    assert _manager(ck).complete_interrupted_save() == ["step_00000003.pt"]
    _save(ckpts, 1, 10.0)
    shutil.copy(ck / "epoch_0001.pt", ck / "step_00000005.pt")
    assert "step_00000005.pt" in _manager(ck).complete_interrupted_save()
    assert_manifest_verifies(ck)


def test_step_checkpoints_are_due_by_steps_or_minutes_and_skipped_when_the_grace_is_too_short(tmp_path):
    from common.config import CheckpointConfig
    from worker.training.engine import StepCheckpoints, StopFlag

    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731
    steps = StepCheckpoints(_manager(tmp_path), CheckpointConfig(1, 2, "val.top1", every_minutes=1.0, every_steps=5),
                            grace_s=10.0, clock=clock)
    assert [s for s in range(1, 12) if steps.due(s)] == [5, 10]
    now[0] += 61
    assert steps.due(3)  # a minute since the last checkpoint
    steps.wrote(4.0)  # a write took 4 s; the period restarts
    assert not steps.due(3)
    stop = StopFlag()
    assert steps.fits(stop)  # no signal time: try
    stop.at = now[0]
    now[0] += 3.0  # 7 s of grace left: 4 s + margin fits
    assert steps.fits(stop)
    now[0] += 2.5  # 4.5 s left: does not
    assert not steps.fits(stop)
    off = StepCheckpoints(_manager(tmp_path), CheckpointConfig(1, 2, "val.top1", every_minutes=0.0, every_steps=0),
                          grace_s=10.0, clock=clock)
    now[0] += 10_000
    assert not any(off.due(s) for s in range(1, 100))


def test_a_second_step_file_at_the_same_step_gets_its_own_name(tmp_path):
    """A periodic save at step 6 and then a stop inside the next accumulation window (still
    step 6, batch later): the listed file is never rewritten in place, so a kill in the middle
    of the second write leaves the first one verifiable."""
    ck = tmp_path / "checkpoints"
    ckpts = _manager(ck)
    _save(ckpts, 1, 10.0)
    first = _save_step(ckpts, 1, 6, 2)
    second = _save_step(ckpts, 1, 6, 3)
    assert (first, second) == ("step_00000006.pt", "step_00000006-000003.pt")
    manifest = assert_manifest_verifies(ck)
    assert [e["name"] for e in manifest["checkpoints"] if e["name"].startswith("step_")] == [second]
    assert _manager(ck).load_latest()[1].name == second
