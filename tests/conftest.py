"""Shared fixtures: a generated, learnable dataset on disk and small configs that train in
seconds on a CPU. Nothing is downloaded."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
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


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root (use as TEACHER_DATA_ROOT) holding ``synthetic/``: 12 classes, 60 train and
    15 val images per class, imagefolder layout plus ``manifest.csv`` (path,label,split,region)."""
    from worker.training.synthetic import SyntheticSpec, make_dataset

    root = tmp_path_factory.mktemp("datasets")
    make_dataset(root / "synthetic", SyntheticSpec())
    return root


@pytest.fixture
def tiny_config() -> dict[str, Any]:
    """A raw (unvalidated) config dict; ``data.root`` is ``synthetic`` under ``dataset_root``."""
    return copy.deepcopy(TINY_CONFIG)


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture
def teacher_env(dataset_root: Path, runs_root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for running ``teacher`` in a subprocess (and in-process via monkeypatch)."""
    monkeypatch.setenv("TEACHER_DATA_ROOT", str(dataset_root))
    monkeypatch.setenv("TEACHER_RUNS_ROOT", str(runs_root))
    env = dict(os.environ)
    env.pop("TEACHER_FAULT", None)
    return env


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


PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


@pytest.fixture
def pg_database() -> Iterator[str]:
    """The name of a fresh, uniquely named database on the local PostgreSQL (127.0.0.1:5432,
    trust auth), dropped afterwards; the test is skipped when there is no server."""
    import uuid

    from sqlalchemy import create_engine, text

    name = f"teacher_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not usable: {exc}")
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_database_url(pg_database: str) -> str:
    """The SQLAlchemy URL of :func:`pg_database`."""
    return f"{PG_SERVER}/{pg_database}"
