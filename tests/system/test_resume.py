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

from tests.support.training import ROOT, run_teacher, write_config

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
    from tests.support.training import TINY_CONFIG
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
    # progress.json as written at that step's log interval carries epoch 1's integrity verdict
    # (issue 9 §2.1: it used to be null between epoch ends)
    progress = json.loads((run_dir / "progress.json").read_text())
    assert (progress["phase"], progress["epoch"], progress["step"]) == ("train", 2, 3)
    assert progress["integrity"]["verdict"] in ("pass", "warn", "fail"), progress
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


def test_sigkill_while_an_epoch_commits_in_the_background_resumes_from_the_one_before(resume_setup):
    """An epoch checkpoint is committed off the training thread while the next epoch trains.
    Test-only faults: epoch 2's commit is held with its file durable and renamed, before its
    manifest (``hold_commit:2``), and the process is SIGKILLed at epoch 3's first step
    (``kill_at_step:5``; 2 steps an epoch). Epoch 2 is in history.json but not in the
    manifest, so the resume point is epoch 1; the resume replays epochs 2 and 3 exactly."""
    run_dir = resume_setup["base"] / "commitkill"
    env = {**resume_setup["env"], "TEACHER_FAULT": "hold_commit:2,kill_at_step:5"}
    proc = run_teacher(["train", "--config", str(resume_setup["config"]), "--run-dir", str(run_dir)], env)
    assert proc.returncode == -signal.SIGKILL
    assert [e["epoch"] for e in history(run_dir)["epochs"]] == [1, 2]
    assert [s["step"] for s in steps(run_dir) if s["epoch"] == 3] == [5], "the kill should land inside epoch 3"
    ck = run_dir / "checkpoints"
    manifest = json.loads((ck / "manifest.json").read_text())
    assert {e["name"]: e["epoch"] for e in manifest["checkpoints"]} == {
        "epoch_0001.pt": 1, "last.pt": 1, "best.pt": 1}, manifest
    assert (ck / "epoch_0002.pt").exists(), "held after its rename: the file is there, unlisted"
    run_teacher(["train", "--resume", str(run_dir)], resume_setup["env"], check=True)
    assert "resumed from last.pt (epoch 1, step 2)" in (run_dir / "train.log").read_text()
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
    step, exits 3 with a step checkpoint of that moment, and resumes to the uninterrupted result."""
    run_dir = resume_setup["base"] / "sigterm"
    proc = subprocess.Popen([sys.executable, "-m", "common.apps.cli", "train", "--config", str(resume_setup["config"]),
                             "--run-dir", str(run_dir)], env={**resume_setup["env"], "TEACHER_FAULT": "sigterm_at_step:3"},
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 3, err
    assert "resume with: teacher train --resume" in err
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["status"] == "stopped"
    assert len(history(run_dir)["epochs"]) == 1  # epoch 2 is not recorded until it ends
    epoch2 = [s for s in steps(run_dir) if s["epoch"] == 2]
    assert [s["step"] for s in epoch2] == [3] and not epoch2[0]["final"]  # stopped right after step 3
    step_entry = _step_entry(run_dir)
    assert (step_entry["name"], step_entry["epoch"], step_entry["step"], step_entry["batch"]) == (
        "step_00000003.pt", 1, 3, 3)
    run_teacher(["train", "--resume", str(run_dir)], resume_setup["env"], check=True)
    assert_same_run(resume_setup["reference"], run_dir)
    assert "resumed from step_00000003.pt (epoch 1, step 3, batch 3 of epoch 2)" in (run_dir / "train.log").read_text()


# ------------------------------------------------------------- mid-epoch (step) checkpoints
def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "checkpoints" / "manifest.json").read_text())


def _step_entry(run_dir: Path) -> dict:
    entries = [e for e in _manifest(run_dir)["checkpoints"] if e["name"].startswith("step_")]
    assert len(entries) == 1, entries
    return entries[0]


def _stop_resume_chain(resume_setup, run_dir: Path, fault: str, stops: int, *, config: Path | None = None) -> list[dict]:
    """Train with ``fault`` (several SIGTERM points); after each stop (exit 3) resume, until the
    run finishes. Returns the step checkpoint each stop left (its manifest entry)."""
    env = {**resume_setup["env"], "TEACHER_FAULT": fault}
    args = ["train", "--config", str(config or resume_setup["config"]), "--run-dir", str(run_dir)]
    left = []
    for _ in range(stops):
        proc = run_teacher(args, env)
        assert proc.returncode == 3, proc.stderr
        left.append(_step_entry(run_dir))
        args = ["train", "--resume", str(run_dir)]
    run_teacher(args, env, check=True)
    return left


def _assert_resumed_mid_epoch(run_dir: Path, entry: dict) -> None:
    """The attempt after the stop started inside the epoch, at the step checkpoint: the step
    stream has each step once, and the log says where it resumed."""
    log_text = (run_dir / "train.log").read_text()
    assert (f"resumed from {entry['name']} (epoch {entry['epoch']}, step {entry['step']}, "
            f"batch {entry['batch']} of epoch {entry['epoch'] + 1})") in log_text, log_text[-2000:]
    train = [(s["epoch"], s["step"]) for s in steps(run_dir) if s["split"] == "train"]
    assert train == sorted(set(train)), "a step was recorded twice"


def test_stopped_at_random_points_and_resumed_equals_uninterrupted(resume_setup):
    """Three SIGTERMs at random micro-batches of a 3-epoch run (4 batches an epoch, windows of
    3: most points fall inside an accumulation window, so the step checkpoint carries the
    accumulated gradients), each resumed from the step checkpoint it left: history, step
    stream and final weights are identical to the uninterrupted run's, every epoch is recorded
    once, and no step checkpoint outlives the next epoch checkpoint."""
    import random

    seed = int(os.environ.get("TEACHER_TEST_STOP_SEED", random.randrange(1_000_000)))
    points = sorted(random.Random(seed).sample(range(1, 12), 3))  # batch 12 is the run's last
    run_dir = resume_setup["base"] / f"stops-{seed}"
    left = _stop_resume_chain(resume_setup, run_dir, ",".join(f"sigterm_at_batch:{b}" for b in points), 3)
    why = f"stop points {points} (TEACHER_TEST_STOP_SEED={seed})"
    assert [e["epoch"] * 4 + e["batch"] for e in left] == points, why
    assert_same_run(resume_setup["reference"], run_dir)
    assert [e["epoch"] for e in history(run_dir)["epochs"]] == [1, 2, 3], why
    for entry in left:
        if entry["batch"] < 4:  # a stop after an epoch's last batch resumes at its validation
            _assert_resumed_mid_epoch(run_dir, entry)
    assert not any(e["name"].startswith("step_") for e in _manifest(run_dir)["checkpoints"]), why
    assert not list((run_dir / "checkpoints").glob("step_*.pt")), why


def test_a_stop_inside_an_epochs_first_window_resumes_from_the_step_file(resume_setup):
    """SIGTERM after batch 5, the first of epoch 2 and inside its first window: no optimizer
    step since epoch 1's checkpoint, so the step file has the same step as epoch_0001.pt and
    must still win (it holds the accumulated gradient and the batch done)."""
    run_dir = resume_setup["base"] / "first-window"
    (entry,) = _stop_resume_chain(resume_setup, run_dir, "sigterm_at_batch:5", 1)
    assert (entry["epoch"], entry["step"], entry["batch"]) == (1, 2, 1)
    assert_same_run(resume_setup["reference"], run_dir)
    _assert_resumed_mid_epoch(run_dir, entry)


def test_a_stop_after_an_epochs_last_smaller_batch_resumes_at_its_validation(resume_setup):
    """SIGTERM after batch 4, epoch 1's last (8 samples: 200 = 3 x 64 + 8): the step file says
    all 4 batches are done, a position past the last sample (4 x 64 > 200). The resume trains
    nothing more of the epoch, validates it and goes on (review finding: it used to refuse to
    start, 'skip 256 outside the epoch's 200 positions', and fail every retry)."""
    run_dir = resume_setup["base"] / "last-batch"
    (entry,) = _stop_resume_chain(resume_setup, run_dir, "sigterm_at_batch:4", 1)
    assert (entry["epoch"], entry["batch"]) == (0, 4)
    assert_same_run(resume_setup["reference"], run_dir)


def test_resume_mid_epoch_with_dataloader_workers(resume_setup, tmp_path):
    """Two DataLoader worker processes: each sample's augmentation is seeded by (seed, epoch,
    index), so the run equals the in-process reference, stopped in the middle of epoch 2 or not."""
    import copy
    import yaml

    cfg = yaml.safe_load(resume_setup["config"].read_text())
    cfg = copy.deepcopy(cfg)
    cfg["runtime"]["num_workers"] = 2
    config = write_config(tmp_path / "workers.yaml", cfg)
    run_dir = resume_setup["base"] / "workers"
    (entry,) = _stop_resume_chain(resume_setup, run_dir, "sigterm_at_step:3", 1, config=config)
    assert (entry["epoch"], entry["step"], entry["batch"]) == (1, 3, 3)
    assert_same_run(resume_setup["reference"], run_dir)
    _assert_resumed_mid_epoch(run_dir, entry)


def test_sigkill_mid_epoch_resumes_from_the_last_periodic_step_checkpoint(resume_setup, tmp_path):
    """checkpoint.every_steps: 1 and a SIGKILL (no chance to write anything) right after step 4,
    in the middle of epoch 2: the resume starts from step_00000003.pt, the periodic checkpoint
    before the kill, replays step 4 and ends identical to the uninterrupted run."""
    import yaml

    cfg = yaml.safe_load(resume_setup["config"].read_text())
    cfg["checkpoint"]["every_steps"] = 1
    config = write_config(tmp_path / "every-step.yaml", cfg)
    run_dir = resume_setup["base"] / "periodic"
    env = {**resume_setup["env"], "TEACHER_FAULT": "kill_at_step:4"}
    proc = run_teacher(["train", "--config", str(config), "--run-dir", str(run_dir)], env)
    assert proc.returncode == -signal.SIGKILL
    entry = _step_entry(run_dir)  # periodic: after step 3 (step 4 ends epoch 2: its epoch checkpoint comes instead)
    assert (entry["name"], entry["epoch"], entry["batch"]) == ("step_00000003.pt", 1, 3)
    run_teacher(["train", "--resume", str(run_dir)], resume_setup["env"], check=True)
    assert_same_run(resume_setup["reference"], run_dir)
    _assert_resumed_mid_epoch(run_dir, entry)


# ------------------------------------------------------------- a save cut short after the manifest
def assert_checkpoints_consistent(run_dir: Path, *, keep_last: int = 2) -> dict:
    """What a finished save leaves: every name verifies against the manifest; last.pt is the
    newest epoch and best.pt the best recorded epoch by val.top1 (the first of equals), both
    hard links to the epoch file where it is kept; epoch files pruned to keep_last."""
    from worker.training.checkpoints import sha256_file

    ck = run_dir / "checkpoints"
    manifest = json.loads((ck / "manifest.json").read_text())
    entries = {e["name"]: e for e in manifest["checkpoints"]}
    for name, e in entries.items():
        assert sha256_file(ck / name) == e["sha256"] and (ck / name).stat().st_size == e["size"], name
    assert sorted(p.name for p in ck.glob("*.pt")) == sorted(entries)
    epochs = history(run_dir)["epochs"]
    last_epoch = epochs[-1]["epoch"]
    best_epoch = max(epochs, key=lambda e: (e["val"]["top1"], -e["epoch"]))["epoch"]
    kept = [f"epoch_{n:04d}.pt" for n in range(max(1, last_epoch - keep_last + 1), last_epoch + 1)]
    assert sorted(p.name for p in ck.glob("epoch_*.pt")) == kept
    assert entries["last.pt"]["epoch"] == last_epoch == torch.load(ck / "last.pt", weights_only=True)["epoch"]
    assert os.stat(ck / "last.pt").st_ino == os.stat(ck / f"epoch_{last_epoch:04d}.pt").st_ino
    assert manifest["best"]["epoch"] == entries["best.pt"]["epoch"] == best_epoch
    assert torch.load(ck / "best.pt", weights_only=True)["epoch"] == best_epoch
    best_file = ck / f"epoch_{best_epoch:04d}.pt"
    if best_file.exists():
        assert os.stat(ck / "best.pt").st_ino == best_file.stat().st_ino
        assert entries["best.pt"]["sha256"] == sha256_file(best_file)
    assert len({os.stat(p).st_ino for p in ck.glob("*.pt")}) == len(kept) + (not best_file.exists())
    return manifest


def _kill_after_manifest(resume_setup, name: str, epoch: int) -> Path:
    """Run with the test-only fault ``kill_after_manifest:EPOCH``: SIGKILL right after that
    epoch's file and the manifest are written, before the links and the pruning."""
    run_dir = resume_setup["base"] / name
    env = {**resume_setup["env"], "TEACHER_FAULT": f"kill_after_manifest:{epoch}"}
    proc = run_teacher(["train", "--config", str(resume_setup["config"]), "--run-dir", str(run_dir)], env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ck = run_dir / "checkpoints"
    listed = {e["name"] for e in json.loads((ck / "manifest.json").read_text())["checkpoints"]}
    assert f"epoch_{epoch:04d}.pt" in listed
    # the kill landed inside the save: last.pt still holds the previous epoch
    assert torch.load(ck / "last.pt", weights_only=True)["epoch"] == epoch - 1
    return run_dir


def test_killed_after_the_last_epochs_manifest_write_the_resume_completes_the_save(resume_setup):
    """The soak's incident (issue 16, item 1): killed after epoch 3's file and manifest, before
    last/best/pruning. The resume has no epoch left to train; it must still leave best.pt the
    best recorded epoch, last.pt epoch 3 and epoch_0001.pt pruned."""
    run_dir = _kill_after_manifest(resume_setup, "after-manifest-last", 3)
    assert (run_dir / "checkpoints" / "epoch_0001.pt").exists()  # not pruned yet
    proc = run_teacher(["train", "--resume", str(run_dir)], resume_setup["env"], check=True)
    assert "completed an interrupted checkpoint save" in proc.stdout
    assert "resumed from last.pt (epoch 3," in proc.stdout
    manifest = assert_checkpoints_consistent(run_dir)
    assert_same_run(resume_setup["reference"], run_dir)
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["status"] == "succeeded" and progress["best"] == manifest["best"]


def test_killed_after_a_middle_epochs_manifest_write_resumes_from_it_and_finishes_consistent(resume_setup):
    run_dir = _kill_after_manifest(resume_setup, "after-manifest-middle", 2)
    proc = run_teacher(["train", "--resume", str(run_dir)], resume_setup["env"], check=True)
    assert "completed an interrupted checkpoint save" in proc.stdout
    assert "resumed from last.pt (epoch 2," in proc.stdout
    assert_checkpoints_consistent(run_dir)
    assert_same_run(resume_setup["reference"], run_dir)


def test_an_uninterrupted_run_leaves_hard_links_and_one_copy_per_kept_epoch(resume_setup):
    assert_checkpoints_consistent(resume_setup["reference"])


# ------------------------------------------------------------- a second signal while stopping
def _wait_for_line(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        assert proc.poll() is None, f"the trainer exited ({proc.returncode}) before logging {text!r}"
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path} after {timeout}s")


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_while_stopping_keeps_the_stop_a_stop(resume_setup, second):
    """Issue 16, item 5: SIGTERM at epoch 2's first step (test-only fault), and the stop held
    open (test-only ``hold_stop``) until the test, having read "received SIGTERM" in the log,
    sends a second signal. Still a graceful stop: exit 3, progress 'stopped', resumable."""
    run_dir = resume_setup["base"] / f"twice-{second.name}"
    proc = subprocess.Popen([sys.executable, "-m", "common.apps.cli", "train", "--config", str(resume_setup["config"]),
                             "--run-dir", str(run_dir)],
                            env={**resume_setup["env"], "TEACHER_FAULT": "sigterm_at_step:3,hold_stop"},
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_line(run_dir / "train.log", "received SIGTERM: stopping after the current batch", proc, 300)
        proc.send_signal(second)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, err
    assert "Aborted!" not in err and "KeyboardInterrupt" not in err
    assert f"received {second.name} again: already stopping" in (run_dir / "train.log").read_text()
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["status"] == "stopped" and "error" not in progress, progress
    run_teacher(["train", "--resume", str(run_dir)], resume_setup["env"], check=True)
    assert_same_run(resume_setup["reference"], run_dir)
