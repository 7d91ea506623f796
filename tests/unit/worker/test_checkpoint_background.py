"""An epoch checkpoint committed off the training thread (``save(background=True)``): the
manifest never names bytes before they are durable, a failed commit surfaces at the next call
with the file's name and leaves the previous checkpoint as it was, and the directory ends up
exactly as synchronous saves leave it. (The kill in the window it opens, through the real CLI:
tests/system/test_resume.py, ``hold_commit``.)"""
from __future__ import annotations

import errno
import logging
import os
import threading
from pathlib import Path

import pytest
import torch

from common import faults
from .test_checkpoint_completion import _epoch_of, _manager, _manifest, _state, assert_manifest_verifies


class HeldCommit:
    """The commit of ``epoch`` stops before its manifest until released (a unit-test fake of
    the ``hold_commit`` fault, which holds until the process is killed); no other fault."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.reached, self.release = epoch, threading.Event(), threading.Event()

    def in_checkpoint_write(self, *args) -> None:
        pass

    def after_manifest(self, epoch: int) -> None:
        pass

    def in_commit(self, epoch: int) -> None:
        if epoch == self.epoch:
            self.reached.set()
            assert self.release.wait(30), "the test never released the commit"


@pytest.fixture
def held(monkeypatch):
    def hold(epoch: int) -> HeldCommit:
        fake = HeldCommit(epoch)
        monkeypatch.setattr(faults, "_current", fake)
        return fake
    return hold


def _entries(directory: Path) -> dict[str, tuple]:
    return {e["name"]: (e["epoch"], e["step"], e["sha256"], e["size"], e["metrics"])
            for e in _manifest(directory)["checkpoints"]}


def test_the_manifest_names_an_epoch_only_once_its_file_is_durable(tmp_path, held, monkeypatch):
    ck = tmp_path / "checkpoints"
    ckpts = _manager(ck)
    ckpts.save(_state(1), epoch=1, step=4, metrics={"val.top1": 10.0}, background=True)
    ckpts.wait()
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])

    hold = held(2)
    written = ckpts.save(_state(2), epoch=2, step=8, metrics={"val.top1": 30.0}, background=True)
    assert written == ["epoch_0002.pt", "last.pt", "best.pt"]
    assert hold.reached.wait(30)
    # Held after its fsync and rename, before its manifest: the resume point is still epoch 1.
    assert synced, "the epoch file is fsynced before the commit goes on"
    assert (ck / "epoch_0002.pt").exists()
    manifest = _manifest(ck)
    assert manifest["best"]["epoch"] == 1 and "epoch_0002.pt" not in _entries(ck)
    assert _epoch_of(ck / "last.pt") == 1
    restarted = _manager(ck)  # what a process started now (after a crash) would resume from
    assert restarted.load_latest()[1].epoch == 1

    hold.release.set()
    assert ckpts.best == {"metric": "val.top1", "value": 30.0, "epoch": 2}  # waits for the commit
    assert_manifest_verifies(ck)
    assert _epoch_of(ck / "last.pt") == _epoch_of(ck / "best.pt") == 2


def test_background_saves_leave_what_synchronous_saves_leave(tmp_path):
    runs = {}
    for background in (False, True):
        ck = tmp_path / f"bg-{background}"
        ckpts = _manager(ck, keep_last=2, every_epochs=2)
        for epoch, top1 in ((1, 10.0), (2, 50.0), (3, 20.0), (4, 40.0), (5, 60.0)):
            ckpts.save(_state(epoch), epoch=epoch, step=4 * epoch, metrics={"val.top1": top1}, background=background)
        step = ckpts.save_step({**_state(5), "position": {"batch": 1}}, epoch=5, step=21, batch=1)
        assert step == "step_00000021.pt"
        ckpts.wait()
        assert_manifest_verifies(ck)
        runs[background] = (_entries(ck), _manifest(ck)["best"], sorted(p.name for p in ck.iterdir()))
    assert runs[True] == runs[False]
    assert runs[True][1] == {"metric": "val.top1", "value": 60.0, "epoch": 5}


def test_a_failed_commit_raises_at_the_next_call_and_changes_nothing(tmp_path, monkeypatch, caplog):
    ck = tmp_path / "checkpoints"
    ckpts = _manager(ck)
    ckpts.save(_state(1), epoch=1, step=4, metrics={"val.top1": 10.0}, background=True)
    ckpts.wait()
    before = (_entries(ck), _manifest(ck)["best"])

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    ckpts.save(_state(2), epoch=2, step=8, metrics={"val.top1": 30.0}, background=True)  # returns: the write is cached
    with pytest.raises(OSError) as raised:
        ckpts.save(_state(3), epoch=3, step=12, metrics={"val.top1": 40.0}, background=True)
    assert raised.value.errno == errno.ENOSPC and Path(raised.value.filename).name == "epoch_0002.pt"
    monkeypatch.undo()
    assert (_entries(ck), _manifest(ck)["best"]) == before
    assert not list(ck.glob(".tmp-*")) and not (ck / "epoch_0002.pt").exists()
    assert_manifest_verifies(ck)
    ckpts.wait()  # the error is raised once

    # A run already failing for another reason logs a failed commit and keeps its own error.
    monkeypatch.setattr(os, "fsync", full_disk)
    ckpts.save(_state(2), epoch=2, step=8, metrics={"val.top1": 30.0}, background=True)
    with caplog.at_level(logging.ERROR):
        ckpts.settle()
    assert "the last epoch checkpoint's commit failed" in caplog.text and "No space left" in caplog.text
    monkeypatch.undo()
    assert _entries(ck) == before[0]


def test_a_step_checkpoint_and_a_load_wait_for_the_pending_commit(tmp_path, held):
    ck = tmp_path / "checkpoints"
    ckpts = _manager(ck)
    hold = held(1)
    ckpts.save(_state(1), epoch=1, step=4, metrics={"val.top1": 10.0}, background=True)
    assert hold.reached.wait(30)
    done = threading.Event()

    def step_save():
        ckpts.save_step({**_state(1), "position": {"batch": 2}}, epoch=1, step=6, batch=2)
        done.set()

    saver = threading.Thread(target=step_save)
    saver.start()
    assert not done.wait(0.3), "the step checkpoint must not be committed before the epoch it follows"
    hold.release.set()
    saver.join(30)
    assert done.is_set()
    assert set(_entries(ck)) == {"epoch_0001.pt", "last.pt", "best.pt", "step_00000006.pt"}
    state, entry = ckpts.load_latest()
    assert entry.name == "step_00000006.pt" and torch.equal(state["model"]["w"], _state(1)["model"]["w"])


def test_the_staged_write_keeps_no_temp_file_when_the_write_fails(tmp_path, monkeypatch):
    from common.atomic import stage_bytes

    def short_disk(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", short_disk)
    with pytest.raises(OSError):
        stage_bytes(tmp_path / "f.bin", b"x" * 100)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    staged = stage_bytes(tmp_path / "f.bin", b"abc")
    assert not (tmp_path / "f.bin").exists()  # not visible before the commit
    staged.commit()
    assert (tmp_path / "f.bin").read_bytes() == b"abc" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_checkpoint_is_streamed_to_disk_with_the_bytes_a_buffered_save_gives(tmp_path):
    """torch.save straight into the temp file, hashed on the way: the same bytes as saving to
    memory first (so the manifest's digest is the file's), invisible until committed."""
    from worker.training.checkpoints import serialize, sha256_bytes, sha256_file, stage_checkpoint

    state = {"model": {"w": torch.randn(1000, 100), "b": torch.arange(7)}, "epoch": 3, "history": {"x": [1.5]}}
    staged, size, sha = stage_checkpoint(state, tmp_path / "epoch_0003.pt")
    assert not (tmp_path / "epoch_0003.pt").exists()
    staged.commit()
    expected = serialize(state)
    assert (size, sha) == (len(expected), sha256_bytes(expected))
    assert sha256_file(tmp_path / "epoch_0003.pt") == sha and (tmp_path / "epoch_0003.pt").stat().st_size == size
    assert torch.equal(torch.load(tmp_path / "epoch_0003.pt", weights_only=True)["model"]["w"], state["model"]["w"])
