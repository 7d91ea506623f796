"""The layers import downwards only (pyproject.toml [tool.importlinter], docs/architecture.md).

`make test` runs `lint-imports` itself (make lint); these tests show that the check passes on the
tree and that it really fails when a contract is broken, on a copy of the tree with one import
added."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first: the copy's packages, not the editable install's, are the ones analysed.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    for name in ("api", "worker", "common"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_tree_keeps_every_contract(tree_copy: Path) -> None:
    r = lint(tree_copy)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("worker/tasks.py", "import api.errors", "worker never imports api"),
    ("api/health.py", "import torch", "api never imports worker or torch"),
    ("api/health.py", "import worker.supervisor", "api never imports worker or torch"),
    ("common/store/jobs.py", "import worker.supervisor", "common (outside common.apps) imports neither api nor worker"),
    ("common/settings.py", "import common.apps.cli", "nothing imports the applications"),
    ("worker/training/metrics.py", "import flask", "training code knows nothing of Flask"),
])
def test_breaking_a_contract_fails_the_check(tree_copy: Path, module: str, line: str, contract: str) -> None:
    path = tree_copy / module
    original = path.read_text()
    path.write_text(original + f"\n{line}  # a deliberate violation\n")
    try:
        r = lint(tree_copy)
    finally:
        path.write_text(original)
    assert r.returncode != 0, r.stdout
    assert f"{contract}" in r.stdout and "BROKEN" in r.stdout, r.stdout
