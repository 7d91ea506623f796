"""Model initialisation (regional from global, local-only pretrained weights) and the live
integrity check that stops a run whose metrics are broken."""
from __future__ import annotations

import json
import signal

import pytest
import torch

from common.config import apply_overrides
from tests.support.training import TINY_CONFIG, run_teacher, write_config
from worker.training.models import ModelError, build_model, cached_pretrained_path, load_matching, load_pretrained


def test_head_is_rebuilt_when_the_class_count_differs():
    torch.manual_seed(0)
    global_model = build_model("resnet18", 12)
    regional = build_model("resnet18", 3)
    fresh_fc = regional.fc.weight.clone()
    skipped = load_matching(regional, global_model.state_dict(), source="global")
    assert skipped == ["fc.bias", "fc.weight"]
    assert torch.equal(regional.conv1.weight, global_model.conv1.weight)
    assert torch.equal(regional.layer4[1].bn2.running_var, global_model.layer4[1].bn2.running_var)
    assert torch.equal(regional.fc.weight, fresh_fc)


def test_unrelated_checkpoint_is_an_error():
    with pytest.raises(ModelError, match="no tensor"):
        load_matching(build_model("resnet18", 3), {"x": torch.zeros(1)}, source="junk")


def test_pretrained_weights_come_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    source = build_model("resnet18", 1000)  # stands in for the downloaded ImageNet weights
    path = cached_pretrained_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(source.state_dict(), path)
    model = build_model("resnet18", 12)
    assert load_pretrained(model, "resnet18") == ["fc.bias", "fc.weight"]
    assert torch.equal(model.conv1.weight, source.conv1.weight)


@pytest.mark.slow
def test_regional_teacher_starts_from_the_global_best_checkpoint(dataset_root, runs_root, teacher_env, tmp_path):
    """`init_from` (relative to the runs root) + a csv region filter: 3 of the 12 classes."""
    global_cfg = apply_overrides(TINY_CONFIG, {"optim.epochs": 1})
    run_teacher(["train", "--config", str(write_config(tmp_path / "g.yaml", global_cfg)),
                 "--run-dir", str(runs_root / "global")], teacher_env, check=True)
    regional_cfg = apply_overrides(TINY_CONFIG, {
        "name": "regional", "optim.epochs": 1, "init_from": "global/checkpoints/best.pt",
        "data.format": "csv", "data.filter": {"column": "region", "values": ["north"]},
    })
    run_teacher(["train", "--config", str(write_config(tmp_path / "r.yaml", regional_cfg)),
                 "--run-dir", str(runs_root / "regional")], teacher_env, check=True)
    history = json.loads((runs_root / "regional" / "history.json").read_text())
    assert history["num_classes"] == 3
    assert history["class_names"] == ["red_circle", "red_square", "red_triangle"]
    assert history["dataset_sizes"] == {"train": 180, "val": 45}
    log = (runs_root / "regional" / "train.log").read_text()
    assert "initialised from global/checkpoints/best.pt; 2 tensor(s) kept fresh (head rebuilt): fc.bias, fc.weight" in log


def test_init_from_outside_the_runs_root_is_refused(dataset_root, runs_root, teacher_env, tmp_path):
    (runs_root / "link").symlink_to(tmp_path, target_is_directory=True)
    cfg = apply_overrides(TINY_CONFIG, {"init_from": "link/evil.pt"})
    proc = run_teacher(["train", "--config", str(write_config(tmp_path / "c.yaml", cfg)),
                        "--run-dir", str(runs_root / "x")], teacher_env)
    assert proc.returncode == 2 and "init_from" in proc.stderr and "outside its root" in proc.stderr


def test_malicious_pickle_checkpoint_is_rejected(dataset_root, runs_root, teacher_env, tmp_path):
    """A checkpoint that would run code when unpickled: weights_only loading refuses it."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    (runs_root / "evil").mkdir()
    torch.save({"model": Evil()}, runs_root / "evil" / "best.pt")
    cfg = apply_overrides(TINY_CONFIG, {"init_from": "evil/best.pt"})
    proc = run_teacher(["train", "--config", str(write_config(tmp_path / "c.yaml", cfg)),
                        "--run-dir", str(runs_root / "x")], teacher_env)
    assert proc.returncode == 2 and "cannot be loaded safely" in proc.stderr  # bad input: not retried
    assert not marker.exists()


@pytest.mark.slow
def test_broken_metric_recording_is_flagged_after_the_first_epoch_and_stops_the_run(dataset_root, runs_root, teacher_env, tmp_path):
    """Test-only fault: the history gets the incident's zeros while the console and step stream
    keep the truth. With integrity.on_fail=stop the run ends failed after epoch 1."""
    cfg = apply_overrides(TINY_CONFIG, {"optim.epochs": 3, "integrity.on_fail": "stop"})
    run_dir = runs_root / "broken"
    proc = run_teacher(["train", "--config", str(write_config(tmp_path / "c.yaml", cfg)), "--run-dir", str(run_dir)],
                       {**teacher_env, "TEACHER_FAULT": "zero_train_metrics"})
    assert proc.returncode == 1
    assert "integrity check failed" in proc.stderr and "cross_source" in proc.stderr and "dead_metric" in proc.stderr
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["epochs"]) == 1  # flagged after the first epoch; no further training
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["status"] == "failed" and "integrity check failed" in progress["error"]


@pytest.mark.slow
def test_broken_metric_recording_with_on_fail_warn_is_reported_but_trains_on(dataset_root, runs_root, teacher_env, tmp_path):
    cfg = apply_overrides(TINY_CONFIG, {"optim.epochs": 1})
    run_dir = runs_root / "warned"
    run_teacher(["train", "--config", str(write_config(tmp_path / "c.yaml", cfg)), "--run-dir", str(run_dir)],
                {**teacher_env, "TEACHER_FAULT": "zero_train_metrics"}, check=True)
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["status"] == "succeeded"
    assert progress["integrity"]["verdict"] == "fail" and "cross_source" in progress["integrity"]["failed"]
