"""Crashes and resume: an interrupted-and-resumed run equals an uninterrupted one, and a kill
in the middle of a checkpoint write never costs more than the epoch being written."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

from conftest import ROOT, run_teacher, write_config

pytestmark = pytest.mark.slow

TIMING_KEYS = {"epoch_time_s", "throughput", "time"}


def without_timing(obj):
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def history(run_dir: Path) -> dict:
    return json.loads((run_dir / "history.json").read_text())


def steps(run_dir: Path) -> list[dict]:
    return [without_timing(json.loads(l)) for l in (run_dir / "steps.jsonl").read_text().splitlines()]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def assert_same_run(a: Path, b: Path) -> None:
    assert without_timing(history(a)) == without_timing(history(b))
    assert steps(a) == steps(b)
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"weights differ at {k}"


@pytest.fixture(scope="module")
def resume_setup(tmp_path_factory: pytest.TempPathFactory, dataset_root: Path) -> dict:
    """A 3-epoch config with a smaller last batch (200 = 3*64 + 8), gradient accumulation with
    a shorter last window, clipping and augmentation, and its uninterrupted reference run."""
    from conftest import TINY_CONFIG
    import copy

    base = tmp_path_factory.mktemp("resume")
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["optim"].update(epochs=3, grad_accum_steps=3, grad_clip_norm=5.0)
    cfg["runtime"]["log_interval"] = 1
    cfg["data"].update(augment=True, max_samples=200)  # random crops/flips must replay identically too
    config = write_config(base / "cfg.yaml", cfg)
    env = {**os.environ, "TEACHER_DATA_ROOT": str(dataset_root), "TEACHER_RUNS_ROOT": str(base)}
    env.pop("TEACHER_FAULT", None)
    reference = base / "reference"
    run_teacher(["train", "--config", str(config), "--run-dir", str(reference)], env, check=True)
    return {"base": base, "config": config, "env": env, "reference": reference}


def test_killed_between_epochs_then_resumed_equals_uninterrupted(resume_setup):
    run_dir = resume_setup["base"] / "killed"
    env = {**resume_setup["env"], "TEACHER_FAULT": "kill_after_epoch:1"}
    proc = run_teacher(["train", "--config", str(resume_setup["config"]), "--run-dir", str(run_dir)], env)
    assert proc.returncode == -signal.SIGKILL
    assert len(history(run_dir)["epochs"]) == 1
    run_teacher(["train", "--resume", str(run_dir)], resume_setup["env"], check=True)
    assert_same_run(resume_setup["reference"], run_dir)


def test_killed_mid_epoch_then_resumed_equals_uninterrupted(resume_setup):
    """SIGKILL inside epoch 2, right after its first optimizer step was recorded (test-only
    fault ``kill_at_step``; 200 samples / 64 per batch / 3 batches per step = 2 steps an
    epoch): the partial epoch's step records are dropped on resume and the epoch is replayed
    exactly. (The service tests kill a training child from outside at an arbitrary point.)"""
    run_dir = resume_setup["base"] / "midepoch"
    env = {**resume_setup["env"], "TEACHER_FAULT": "kill_at_step:3"}
    proc = run_teacher(["train", "--config", str(resume_setup["config"]), "--run-dir", str(run_dir)], env)
    assert proc.returncode == -signal.SIGKILL
    partial = [s for s in steps(run_dir) if s["epoch"] == 2]
    assert partial and not any(s["final"] for s in partial), "the kill should land inside epoch 2"
    run_teacher(["train", "--resume", str(run_dir)], resume_setup["env"], check=True)
    assert_same_run(resume_setup["reference"], run_dir)
    # TensorBoard readers discard the interrupted epoch's events (purge_step on resume).
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={SCALARS: 0})
    acc.Reload()
    assert [int(e.value) for e in acc.Scalars("epoch")] == [1, 2, 3]
    steps_logged = [e.step for e in acc.Scalars("step/train_loss")]
    assert steps_logged == sorted(set(steps_logged)), "a step was logged twice"


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(resume_setup, caplog):
    from worker.training.checkpoints import CheckpointManager

    run_dir = resume_setup["base"] / "ckptkill"
    env = {**resume_setup["env"], "TEACHER_FAULT": "kill_in_checkpoint:2"}
    proc = run_teacher(["train", "--config", str(resume_setup["config"]), "--run-dir", str(run_dir)], env)
    assert proc.returncode == -signal.SIGKILL
    ck = run_dir / "checkpoints"
    assert list(ck.glob(".tmp-*")), "the fault should leave a half-written temp file"
    with caplog.at_level(logging.WARNING):
        mgr = CheckpointManager(ck, keep_last=2, every_epochs=1, best_metric="val.top1", best_mode="max")
        state, entry = mgr.load_latest()
    assert entry.epoch == 1 and state["epoch"] == 1
    assert not list(ck.glob(".tmp-*")) and "incomplete checkpoint temp file" in caplog.text
    run_teacher(["train", "--resume", str(run_dir)], resume_setup["env"], check=True)
    assert_same_run(resume_setup["reference"], run_dir)


def test_truncated_latest_checkpoint_falls_back_to_the_previous_good_one(resume_setup, tmp_path, caplog):
    from worker.training.checkpoints import CheckpointManager

    ck = tmp_path / "checkpoints"
    import shutil

    shutil.copytree(resume_setup["reference"] / "checkpoints", ck)
    for name in ("last.pt", "epoch_0003.pt"):  # both copies of the newest state
        data = (ck / name).read_bytes()
        (ck / name).write_bytes(data[: len(data) // 3])
    with caplog.at_level(logging.WARNING):
        mgr = CheckpointManager(ck, keep_last=2, every_epochs=1, best_metric="val.top1", best_mode="max")
        state, entry = mgr.load_latest()
    assert entry.name == "epoch_0002.pt" and state["epoch"] == 2
    assert "sha256 mismatch" in caplog.text


def test_resume_of_a_finished_run_changes_nothing(resume_setup, tmp_path):
    import shutil

    run_dir = tmp_path / "done"
    shutil.copytree(resume_setup["reference"], run_dir)
    run_teacher(["train", "--resume", str(run_dir)], resume_setup["env"], check=True)
    assert_same_run(resume_setup["reference"], run_dir)


def test_sigterm_stops_within_a_step_and_exits_resumable(resume_setup):
    """SIGTERM (delivered by the test-only fault at epoch 2's first optimizer step, so the
    moment is deterministic; the service tests send it from outside): the run stops after that
    step, exits 3, keeps epoch 1's checkpoint, and resumes to the uninterrupted result."""
    run_dir = resume_setup["base"] / "sigterm"
    proc = subprocess.Popen([sys.executable, "-m", "common.cli", "train", "--config", str(resume_setup["config"]),
                             "--run-dir", str(run_dir)], env={**resume_setup["env"], "TEACHER_FAULT": "sigterm_at_step:3"},
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 3, err
    assert "resume with: teacher train --resume" in err
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["status"] == "stopped"
    assert len(history(run_dir)["epochs"]) == 1  # the last checkpoint (epoch 1) is kept
    epoch2 = [s for s in steps(run_dir) if s["epoch"] == 2]
    assert [s["step"] for s in epoch2] == [3] and not epoch2[0]["final"]  # stopped right after step 3
    run_teacher(["train", "--resume", str(run_dir)], resume_setup["env"], check=True)
    assert_same_run(resume_setup["reference"], run_dir)
