"""Strict JSON and atomic files: what a reader sees is always complete and always parseable."""
from __future__ import annotations

import json
import math

import pytest

from common.atomic import atomic_write_json, remove_stale_temp_files
from common.config import apply_overrides
from tests.support.training import TINY_CONFIG, run_teacher, write_config
from worker.training.artifacts import RunFiles, sanitize


def strict_load(text: str):
    def reject(token):
        raise AssertionError(f"non-JSON token {token}")

    return json.loads(text, parse_constant=reject)


def test_nonfinite_values_become_null_with_a_flag():
    flags: dict[str, str] = {}
    clean = sanitize({"train": {"loss": math.nan, "top1": 50.0}, "val": {"loss": math.inf, "x": -math.inf}}, flags)
    assert clean == {"train": {"loss": None, "top1": 50.0}, "val": {"loss": None, "x": None}}
    assert flags == {"train.loss": "nan", "val.loss": "inf", "val.x": "-inf"}


def test_step_records_are_strict_json(tmp_path):
    files = RunFiles(tmp_path)
    files.append_step({"epoch": 1, "loss_sum": math.nan, "samples": 3})
    rec = strict_load((tmp_path / "steps.jsonl").read_text())
    assert rec == {"epoch": 1, "loss_sum": None, "samples": 3, "nonfinite": {"loss_sum": "nan"}}


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "history.json"
    atomic_write_json(path, {"ok": 1})
    with pytest.raises(ValueError):
        atomic_write_json(path, {"bad": math.nan})  # strict JSON refuses NaN before writing
    assert strict_load(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]
    (tmp_path / ".tmp-history.json.abc").write_text("{half")
    assert [p.name for p in remove_stale_temp_files(tmp_path)] == [".tmp-history.json.abc"]


def test_truncate_steps_keeps_only_records_up_to_the_checkpoint(tmp_path):
    files = RunFiles(tmp_path)
    for epoch, step in ((1, 4), (1, 8), (2, 12), (2, 16)):
        files.append_step({"epoch": epoch, "step": step})
    with (tmp_path / "steps.jsonl").open("a") as fh:
        fh.write('{"epoch": 2, "st')  # a line cut short by a crash
    assert files.truncate_steps(last_step=8, last_epoch=1) == 3
    assert [json.loads(l)["step"] for l in (tmp_path / "steps.jsonl").read_text().splitlines()] == [4, 8]


@pytest.mark.slow
def test_a_diverging_run_records_null_and_flags_and_fails_integrity(dataset_root, runs_root, teacher_env, tmp_path):
    """lr=100 makes the model diverge: validation loss turns NaN. The history stays strict
    JSON (null + flag), and the live report fails on the non-finite value."""
    cfg = apply_overrides(TINY_CONFIG, {"optim.optimizer": "sgd", "optim.lr": 100, "optim.warmup_epochs": 0,
                                        "data.max_samples": 256, "runtime.log_interval": 1})
    run_dir = runs_root / "diverge"
    run_teacher(["train", "--config", str(write_config(tmp_path / "c.yaml", cfg)), "--run-dir", str(run_dir)],
                teacher_env, check=True)
    history = strict_load((run_dir / "history.json").read_text())
    flagged = [e for e in history["epochs"] if e["nonfinite"]]
    assert flagged, "expected a non-finite metric"
    for e in flagged:
        for name, what in e["nonfinite"].items():
            split, metric = name.split(".")
            assert e[split][metric] is None and what in ("nan", "inf", "-inf")
    progress = strict_load((run_dir / "progress.json").read_text())
    assert progress["integrity"]["verdict"] == "fail" and "nonfinite" in progress["integrity"]["failed"]
