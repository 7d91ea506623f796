"""The chaos soak (bench/soak.py): its plan and its invariant checks on their own (fast), and a
short seeded soak against real processes (slow): ~8 jobs, ~3 minutes of faults, zero invariant
violations. The seed is random unless TEACHER_SOAK_SEED is set; a failure prints it and the
command that replays it (`make soak ARGS="..."`)."""
from __future__ import annotations

import json
import os
import random
import shlex
from pathlib import Path
from typing import Any

import pytest

from bench.soak import FAULT_KINDS, Options, make_plan, parse_args, run, run_violations, summary


# ----------------------------------------------------------------------- the plan
def test_the_plan_is_a_function_of_the_seed_and_within_the_configured_bounds():
    opts = Options(minutes=3, jobs=8, seed=11)
    jobs, faults = make_plan(opts)
    assert make_plan(Options(minutes=3, jobs=8, seed=11)) == (jobs, faults)
    assert make_plan(Options(minutes=3, jobs=8, seed=12)) != (jobs, faults)
    # --jobs does not move the fault schedule
    assert make_plan(Options(minutes=3, jobs=20, seed=11))[1] == faults

    assert len(jobs) == 8 and len({j.name for j in jobs}) == 8
    assert [j.submit_at for j in jobs] == sorted(j.submit_at for j in jobs)
    assert all(0 <= j.submit_at <= opts.submit_fraction * 180 for j in jobs)
    assert all(j.epochs in (2, 3) for j in jobs)
    assert all(j.after is None or j.after < j.index for j in jobs)  # a parent is submitted first
    assert all(j.submit_at <= t <= 180 for j in jobs for t in j.replays)
    assert all(j.idempotency_key for j in jobs if j.replays)

    assert {f.kind for f in faults} <= set(FAULT_KINDS)
    assert all(4 <= f.gap_s <= 12 and 1 <= f.restart_after_s <= 5 and 0 <= f.pick < 1 for f in faults)
    assert sum(f.gap_s + f.restart_after_s for f in faults) >= 180  # the schedule covers the window


def test_over_many_seeds_every_fault_kind_idempotent_replays_and_chains_occur():
    kinds: set[str] = set()
    replays = chains = 0
    for seed in range(20):
        jobs, faults = make_plan(Options(minutes=3, jobs=8, seed=seed))
        kinds |= {f.kind for f in faults}
        replays += sum(bool(j.replays) for j in jobs)
        chains += sum(j.after is not None for j in jobs)
    assert kinds == set(FAULT_KINDS)
    assert replays > 20 and chains > 20


def test_the_replay_command_reproduces_the_options():
    opts = Options(minutes=3, jobs=8, seed=42, settle_minutes=6, stale_after_s=20)
    make_cmd, python_cmd = opts.replay_commands()
    assert make_cmd == 'make soak ARGS="--minutes 3 --jobs 8 --seed 42 --settle-minutes 6 --stale-after-s 20"'
    assert python_cmd.endswith("-m bench.soak " + opts.replay_args())
    assert parse_args(shlex.split(opts.replay_args())) == opts


# ----------------------------------------------------------------------- the run-directory checks
def write_run(run_dir: Path, *, epochs: int = 3, top1: tuple[float, ...] = (50.0, 70.0, 60.0),
              best_epoch: int | None = None, keep: tuple[int, ...] = (3,)) -> None:
    """A run directory in the trainer's format (history, steps, progress, checkpoints with their
    manifest), with small checkpoint states instead of real weights."""
    from worker.training.checkpoints import serialize, sha256_bytes

    ckpt = run_dir / "checkpoints"
    ckpt.mkdir(parents=True)
    best_epoch = best_epoch or 1 + max(range(epochs), key=lambda i: top1[i])
    history = {"epochs": [{"epoch": e, "train": {"loss": 1.0 / e, "top1": 40.0 + e}, "val": {"loss": 1.0, "top1": top1[e - 1]}}
                          for e in range(1, epochs + 1)]}
    (run_dir / "history.json").write_text(json.dumps(history))
    steps = [{"split": s, "epoch": e, "final": f} for e in range(1, epochs + 1) for s in ("train", "val") for f in (False, True)]
    (run_dir / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
    (run_dir / "progress.json").write_text(json.dumps({"status": "succeeded", "epoch": epochs}))
    entries = []
    for name, e in [(f"epoch_{k:04d}.pt", k) for k in keep] + [("last.pt", epochs), ("best.pt", best_epoch)]:
        data = serialize({"epoch": e, "model": {"w": __import__("torch").full((2,), float(e))}})
        (ckpt / name).write_bytes(data)
        entries.append({"name": name, "epoch": e, "step": 4 * e, "size": len(data), "sha256": sha256_bytes(data),
                        "metrics": {"val.top1": top1[e - 1]}, "created_at": 0.0})
    manifest = {"format": "teacher-checkpoints/1", "best_metric": "val.top1", "checkpoints": entries,
                "best": {"metric": "val.top1", "value": top1[best_epoch - 1], "epoch": best_epoch}}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


CONFIG: dict[str, Any] = {"checkpoint": {"best_metric": "val.top1", "keep_last": 1, "every_epochs": 1}}


def check(run_dir: Path, status: str = "succeeded", config: dict[str, Any] = CONFIG) -> list[str]:
    return [inv for inv, _ in run_violations(name="j", status=status, failure_reason="worker lost", epochs=3,
                                              config=config, run_dir=run_dir)]


def test_a_sound_run_directory_has_no_violation(tmp_path: Path):
    write_run(tmp_path / "run")
    assert check(tmp_path / "run") == []
    assert check(tmp_path / "run", status="cancelled") == []


def test_a_stale_best_is_found_even_when_the_manifest_agrees_with_the_file(tmp_path: Path):
    # issue 16, finding 1: killed between the manifest and the links; best.pt still at epoch 1
    write_run(tmp_path / "run", top1=(50.0, 70.0, 60.0), best_epoch=1)
    assert check(tmp_path / "run") == ["best_is_best"]


def test_a_last_that_is_not_the_last_epoch_and_an_unpruned_epoch_file_are_found(tmp_path: Path):
    write_run(tmp_path / "run", keep=(1, 3))
    assert check(tmp_path / "run") == ["pruned"]
    manifest_path = tmp_path / "run" / "checkpoints" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    next(e for e in manifest["checkpoints"] if e["name"] == "last.pt")["epoch"] = 2
    manifest_path.write_text(json.dumps(manifest))
    # last.pt now holds another epoch than its entry says, and the entry is not the last epoch
    assert sorted(check(tmp_path / "run")) == ["checkpoints_verify", "last_is_last", "pruned"]


def test_a_corrupt_or_missing_checkpoint_is_found_in_any_job(tmp_path: Path):
    write_run(tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    (tmp_path / "run" / "checkpoints" / "epoch_0003.pt").unlink()
    assert check(tmp_path / "run", status="cancelled") == ["checkpoints_verify", "checkpoints_verify"]


def test_an_epoch_twice_in_history_or_steps_is_found(tmp_path: Path):
    write_run(tmp_path / "run")
    with (tmp_path / "run" / "steps.jsonl").open("a") as fh:
        fh.write(json.dumps({"split": "val", "epoch": 2, "final": True}) + "\n")
    assert check(tmp_path / "run") == ["epochs_once"]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    history["epochs"].insert(2, history["epochs"][1])
    (tmp_path / "run" / "history.json").write_text(json.dumps(history))
    assert check(tmp_path / "run") == ["epochs_once", "epochs_once"]


def test_a_finished_run_marked_failed_and_a_stale_progress_are_found(tmp_path: Path):
    write_run(tmp_path / "run")
    assert check(tmp_path / "run", status="failed") == ["finished_not_failed"]
    (tmp_path / "run" / "progress.json").write_text(json.dumps({"status": "failed", "reason": "KeyboardInterrupt"}))
    assert check(tmp_path / "run", status="failed") == ["finished_not_failed"]  # history + last.pt say finished
    assert check(tmp_path / "run") == ["progress_final"]


def test_best_by_a_min_metric(tmp_path: Path):
    write_run(tmp_path / "run")  # val.loss is 1.0 in every epoch: any epoch is a best one
    assert check(tmp_path / "run", config={"checkpoint": {"best_metric": "val.loss", "keep_last": 1}}) == []
    # train.loss is 1/epoch: the last epoch is the best, not the manifest's epoch 2
    assert check(tmp_path / "run", config={"checkpoint": {"best_metric": "train.loss", "keep_last": 1}}) == ["best_is_best"]


# ----------------------------------------------------------------------- the short soak
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_short_chaos_soak_has_no_invariant_violations(tmp_path: Path):
    seed = int(os.environ.get("TEACHER_SOAK_SEED") or random.SystemRandom().randrange(1, 1_000_000))
    opts = Options(minutes=3, jobs=8, seed=seed, settle_minutes=6, workdir=tmp_path / "soak",
                   out=tmp_path / "soak-report.json")
    print(f"short soak, seed {seed}: replay with {opts.replay_commands()[0]}", flush=True)
    report = run(opts)
    assert report["faults"], "no fault was injected"
    assert report["ok"], summary(report, opts.out)
