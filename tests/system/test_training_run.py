"""End-to-end runs of the real ``teacher`` CLI on generated images: the demo learns, and every
artifact it leaves agrees with every other and with an independent re-evaluation."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

from tests.support.training import CONFIGS, run_teacher

pytestmark = pytest.mark.slow


def strict_json(path: Path):
    def reject(token: str):
        raise AssertionError(f"{path.name} contains the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=reject)


def final_step_records(run_dir: Path) -> dict[tuple[int, str], dict]:
    out = {}
    for line in (run_dir / "steps.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["final"]:
            key = (rec["epoch"], rec["split"])
            assert key not in out, f"epoch {key} recorded twice in the step stream"
            out[key] = rec
    return out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``teacher make-data`` then ``teacher train --config configs/demo.yaml``, as in the README."""
    base = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "TEACHER_DATA_ROOT": str(base / "datasets"), "TEACHER_RUNS_ROOT": str(base / "runs")}
    env.pop("TEACHER_FAULT", None)
    made = run_teacher(["make-data"], env, check=True)
    assert "720 train and 180 val" in made.stdout
    proc = run_teacher(["train", "--config", str(CONFIGS / "demo.yaml")], env, check=True)
    return {"dir": base / "runs" / "demo", "env": env, "proc": proc}


def test_demo_learns_far_above_chance(demo_run):
    history = strict_json(demo_run["dir"] / "history.json")
    epochs = history["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5, 6]
    assert history["num_classes"] == 12 and history["dataset_sizes"] == {"train": 720, "val": 180}
    # Chance is 100/12 = 8.3% top-1; the bar is 60%, more than 7x chance.
    assert epochs[-1]["val"]["top1"] > 60.0
    assert epochs[-1]["train"]["loss"] < 0.5 * math.log(12)
    for e in epochs:
        assert e["train"]["samples"] == 720 and e["val"]["samples"] == 180
        assert e["nonfinite"] == {}
        assert 0 <= e["val"]["top1"] <= e["val"]["top5"] <= 100
        assert e["train"]["throughput"] > 0 and e["epoch_time_s"] > 0
    progress = strict_json(demo_run["dir"] / "progress.json")
    assert progress["status"] == "succeeded" and progress["percent"] == 100.0
    # A healthy run passes the live integrity report with no warning at all.
    assert progress["integrity"] == {"verdict": "pass", "failed": [], "warnings": []}


def test_every_epoch_value_is_recomputable_from_the_step_stream(demo_run):
    history = strict_json(demo_run["dir"] / "history.json")
    finals = final_step_records(demo_run["dir"])
    assert set(finals) == {(e, s) for e in range(1, 7) for s in ("train", "val")}
    for e in history["epochs"]:
        for split in ("train", "val"):
            rec = finals[(e["epoch"], split)]
            assert rec["samples"] == e[split]["samples"]
            assert rec["loss_sum"] / rec["samples"] == pytest.approx(e[split]["loss"], rel=1e-12)
            assert 100 * rec["correct1"] / rec["samples"] == pytest.approx(e[split]["top1"], rel=1e-12)
            assert 100 * rec["correct5"] / rec["samples"] == pytest.approx(e[split]["top5"], rel=1e-12)
        assert finals[(e["epoch"], "train")]["step"] == e["step"]


def test_tensorboard_events_equal_the_history(demo_run):
    history = strict_json(demo_run["dir"] / "history.json")
    acc = EventAccumulator(str(demo_run["dir"] / "tb"), size_guidance={SCALARS: 0})
    acc.Reload()
    by_step = {e["step"]: e for e in history["epochs"]}
    epoch_events = acc.Scalars("epoch")
    assert [int(ev.value) for ev in epoch_events] == [1, 2, 3, 4, 5, 6]
    for split in ("train", "val"):
        for name in ("loss", "top1", "top5"):
            events = acc.Scalars(f"{split}/{name}")
            assert [ev.step for ev in events] == [e["step"] for e in history["epochs"]]
            for ev in events:  # TensorBoard stores float32
                assert ev.value == pytest.approx(by_step[ev.step][split][name], rel=1e-6)
    assert len(acc.Scalars("step/train_loss")) >= 6


def test_console_log_is_saved_and_matches(demo_run):
    log = (demo_run["dir"] / "train.log").read_text()
    history = strict_json(demo_run["dir"] / "history.json")
    last = history["epochs"][-1]
    assert f"Epoch 6/6 [Val]: loss={last['val']['loss']:.4f}, top1={last['val']['top1']:.2f}%" in log
    assert "Epoch 6/6 [Val]" in demo_run["proc"].stdout


def test_config_saved_beside_outputs_and_inside_checkpoints(demo_run):
    import yaml

    saved = yaml.safe_load((demo_run["dir"] / "config.yaml").read_text())
    assert saved["model"]["arch"] == "resnet18" and saved["runtime"]["log_interval"] == 5
    best = torch.load(demo_run["dir"] / "checkpoints" / "best.pt", weights_only=True)
    assert best["config"] == saved
    assert len(best["history"]["epochs"]) == best["epoch"]


def test_checkpoint_manifest_matches_files(demo_run):
    from worker.training.checkpoints import sha256_file

    ck = demo_run["dir"] / "checkpoints"
    manifest = strict_json(ck / "manifest.json")
    names = {e["name"] for e in manifest["checkpoints"]}
    # keep_last 2 with a checkpoint every epoch: the two newest epoch files, last and best.
    assert names == {"epoch_0005.pt", "epoch_0006.pt", "last.pt", "best.pt"}
    assert sorted(p.name for p in ck.glob("*.pt")) == sorted(names)
    for e in manifest["checkpoints"]:
        assert sha256_file(ck / e["name"]) == e["sha256"] and (ck / e["name"]).stat().st_size == e["size"]
    best_epoch = max(strict_json(demo_run["dir"] / "history.json")["epochs"], key=lambda e: e["val"]["top1"])
    assert manifest["best"]["epoch"] == best_epoch["epoch"]


def test_best_checkpoint_reevaluated_in_a_separate_process(demo_run):
    """A fresh model, loaded from best.pt in another process, reproduces the recorded val metrics."""
    best = demo_run["dir"] / "checkpoints" / "best.pt"
    proc = run_teacher(["evaluate", str(best)], demo_run["env"], check=True)
    result = json.loads(proc.stdout)
    recorded = strict_json(demo_run["dir"] / "history.json")["epochs"][result["epoch"] - 1]["val"]
    assert result["samples"] == recorded["samples"] == 180
    assert result["top1"] == pytest.approx(recorded["top1"], abs=1e-9)
    assert result["top5"] == pytest.approx(recorded["top5"], abs=1e-9)
    assert result["loss"] == pytest.approx(recorded["loss"], rel=1e-5)


def test_debug_max_samples_quick_check(dataset_root, teacher_env, tmp_path):
    """The original workflow's quick test: same code path, capped epochs and samples."""
    run_dir = tmp_path / "quick"
    proc = run_teacher(["train", "--config", str(CONFIGS / "demo.yaml"), "--debug", "--max-samples", "50",
                        "--run-dir", str(run_dir)], teacher_env, check=True)
    history = strict_json(run_dir / "history.json")
    assert len(history["epochs"]) == 2
    assert {e["train"]["samples"] for e in history["epochs"]} == {50}
    assert {e["val"]["samples"] for e in history["epochs"]} == {50}
    assert "DEBUG" in (run_dir / "train.log").read_text()
    # every batch is logged in debug mode: 50 samples / 64 per batch = 1 batch per epoch
    assert sum(1 for l in (run_dir / "steps.jsonl").read_text().splitlines() if '"train"' in l) == 2
    assert proc.returncode == 0


def test_existing_run_dir_is_refused_without_resume(dataset_root, teacher_env, tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("name: x\n")
    proc = run_teacher(["train", "--config", str(CONFIGS / "demo.yaml"), "--run-dir", str(run_dir)], teacher_env)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
