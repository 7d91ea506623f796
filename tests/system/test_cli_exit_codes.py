"""One exit-code rule for the whole `teacher` CLI, each failure mode run as a real subprocess:
2 for any usage or input error (nothing was done), 1 for a failed job, run or check.
(The HTTP client's server-side cases are in tests/system/test_client_exit_codes.py.)"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

from common.config import apply_overrides
from tests.support.training import TINY_CONFIG, run_teacher, write_config
USAGE, FAILED = 2, 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    clean.update(TEACHER_DATA_ROOT=str(tmp_path / "data"), TEACHER_RUNS_ROOT=str(tmp_path / "runs"),
                 TEACHER_STATE_ROOT=str(tmp_path / "state"),
                 TEACHER_DATABASE_URL=f"sqlite:///{tmp_path / 'state' / 'teacher.db'}",
                 # the client commands get a token and a server where nothing listens
                 TEACHER_TOKEN="tch_not_checked", TEACHER_URL=f"http://127.0.0.1:{free_port()}")
    return clean


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: {arch: resnet18\n")
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    good = write_config(tmp_path / "good.yaml", TINY_CONFIG)
    no_data = write_config(tmp_path / "nodata.yaml", apply_overrides(TINY_CONFIG, {"data.root": "nosuchdataset"}))
    # a checkpoint whose bytes do not match its manifest (corrupt, or tampered with)
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.save({"format": "teacher-checkpoint/1", "model": {}}, ckpts / "best.pt")
    (ckpts / "manifest.json").write_text(json.dumps({"checkpoints": [
        {"name": "best.pt", "epoch": 1, "step": 1, "size": 1, "sha256": "0" * 64, "metrics": {}, "created_at": 0}]}))
    history = tmp_path / "history.json"  # the incident: dead train loss, val loss stuck
    history.write_text(json.dumps({"loss": [0.0, 0.0, 0.0], "val_loss": [9.5393] * 3,
                                   "accuracy": [0.1] * 3, "val_accuracy": [0.001] * 3}))
    return {"bad_yaml": bad_yaml, "not_mapping": not_mapping, "good": good, "no_data": no_data,
            "corrupt": ckpts / "best.pt", "history": history}


CASES = [
    # (id, argv with {placeholders}, expected code, a word the message must contain)
    ("unknown command", ["frobnicate"], USAGE, "No such command"),
    ("unknown option", ["train", "--frobnicate"], USAGE, "No such option"),
    ("train: neither --config nor --resume", ["train"], USAGE, "exactly one of"),
    ("train: config file missing", ["train", "--config", "{tmp}/nope.yaml"], USAGE, "does not exist"),
    ("train: bad YAML", ["train", "--config", "{bad_yaml}"], USAGE, "not valid YAML"),
    ("train: not a mapping", ["train", "--config", "{not_mapping}"], USAGE, "mapping"),
    ("train: --set without =", ["train", "--config", "{good}", "--set", "optim.lr"], USAGE, "key=value"),
    ("train: schema error", ["train", "--config", "{good}", "--set", "optim.lr=-1"], USAGE, "optim.lr"),
    ("train: unknown key", ["train", "--config", "{good}", "--set", "optim.bogus=1"], USAGE, "optim.bogus"),
    ("train: no such dataset", ["train", "--config", "{no_data}", "--run-dir", "{tmp}/r"], USAGE, "data.root"),
    ("train: resume of no run", ["train", "--resume", "{tmp}/nothing"], USAGE, "no config.yaml"),
    ("make-data: dataset exists", ["make-data", "--out", "{dataset}"], USAGE, "already holds"),
    ("analyze: no such file", ["analyze", "{tmp}/nope.json"], USAGE, "no such file"),
    ("analyze: a check failed", ["analyze", "{history}", "--out", "{tmp}/a", "--num-classes", "9500"], FAILED, ""),
    ("evaluate: no such file", ["evaluate", "{tmp}/nope.pt"], USAGE, "does not exist"),
    ("evaluate: fails its manifest", ["evaluate", "{corrupt}"], FAILED, "sha256 mismatch"),
    ("export: no such source", ["export", "{tmp}/nope", "--out", "{tmp}/e"], USAGE, "no such checkpoint"),
    ("export: fails its manifest", ["export", "{corrupt}", "--out", "{tmp}/e"], FAILED, "sha256 mismatch"),
    ("submit: config file missing", ["submit", "{tmp}/nope.yaml"], USAGE, "no such file"),
    ("submit: bad YAML", ["submit", "{bad_yaml}"], USAGE, "not valid YAML"),
    ("submit: not a mapping", ["submit", "{not_mapping}"], USAGE, "mapping"),
    ("submit: --set without =", ["submit", "{good}", "--set", "optim.lr"], USAGE, "key=value"),
    ("submit: server unreachable", ["submit", "{good}"], FAILED, "cannot reach"),
    ("status: server unreachable", ["status"], FAILED, "cannot reach"),
    ("status: not a URL", ["status", "--url", "localhost-8000"], USAGE, "invalid server URL"),
    ("status: bad URL scheme", ["status", "--url", "ftp://127.0.0.1:1"], USAGE, "invalid server URL"),
    ("status: not a job id", ["status", "xyz"], USAGE, "not a job id"),
    ("status: prefix too short", ["status", "abcde"], USAGE, "at least its first 6"),
    ("logs: not a job id", ["logs", "../etc"], USAGE, "not a job id"),
    ("cancel: not a job id", ["cancel", "nope!"], USAGE, "not a job id"),
    ("download: not a job id", ["download", "12"], USAGE, "not a job id"),
    ("tokens revoke: nothing named", ["tokens", "revoke"], USAGE, "exactly one of"),
    ("tokens revoke: unknown token", ["tokens", "revoke", "99"], USAGE, "no live token"),
    ("tokens create: bad user name", ["tokens", "create", "--user", "a b/c"], USAGE, "--user"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_exit_code(case, env, files, tmp_path):
    _, argv, code, word = case
    dataset = tmp_path / "data" / "synthetic"
    dataset.mkdir(parents=True)
    (dataset / "manifest.csv").write_text("path,label,split\n")
    values = {"tmp": tmp_path, "dataset": dataset, **files}
    proc = run_teacher([a.format(**values) for a in argv], env, timeout=300)
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert word in proc.stderr, proc.stderr[-2000:]


def test_no_token_is_a_usage_error(env):
    env = {k: v for k, v in env.items() if k != "TEACHER_TOKEN"}
    for argv in (["status"], ["logs", "abcdef"], ["cancel", "abcdef"], ["download", "abcdef"], ["submit", "demo"]):
        proc = run_teacher(argv, env)
        assert proc.returncode == USAGE and "no token" in proc.stderr, (argv, proc.stderr)


@pytest.mark.slow
def test_failed_training_is_exit_1(dataset_root, env, tmp_path):
    """A run that starts and fails (here the live integrity check stops it) is 1, not 2."""
    cfg = apply_overrides(TINY_CONFIG, {"optim.epochs": 2, "integrity.on_fail": "stop"})
    proc = run_teacher(["train", "--config", str(write_config(tmp_path / "c.yaml", cfg)), "--run-dir",
                        str(tmp_path / "r"), "--max-samples", "48"],
                       {**env, "TEACHER_DATA_ROOT": str(dataset_root), "TEACHER_FAULT": "zero_train_metrics"})
    assert proc.returncode == FAILED and "integrity check failed" in proc.stderr, proc.stderr[-2000:]
