"""The training side's test helpers: small configs and the real `teacher` CLI in a subprocess."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"

# Small and fast: 12 classes of 32x32 images, resnet18, AdamW. Learns to >60% val top-1
# (chance 8.3%) in 2 epochs on 2 CPU cores.
TINY_CONFIG: dict[str, Any] = {
    "name": "tiny",
    "model": {"arch": "resnet18"},
    "data": {"format": "imagefolder", "root": "synthetic", "image_size": 32, "augment": False},
    "optim": {"epochs": 2, "batch_size": 64, "optimizer": "adamw", "lr": 0.001, "weight_decay": 0.05,
              "scheduler": "cosine", "warmup_epochs": 0.5, "seed": 0},
    "runtime": {"device": "cpu", "num_workers": 0, "log_interval": 4},
    "checkpoint": {"every_epochs": 1, "keep_last": 2, "best_metric": "val.top1"},
}


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_teacher(args: list[str], env: dict[str, str], *, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    """The real CLI in a separate process, as a user (or the worker) runs it."""
    proc = subprocess.run([sys.executable, "-m", "common.apps.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"teacher {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc

