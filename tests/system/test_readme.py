"""The README's local commands work as written (run in a scratch directory)."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.training import ROOT

pytestmark = pytest.mark.slow


def readme_block(after: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split(after, 1)[1].split("```", 2)[1]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines() if line.strip()]


def test_readme_plain_cli_commands_work_as_written(tmp_path):
    commands = readme_block("The same training runs as a plain command, with no server:")
    assert commands[0] == "make install && . .venv/bin/activate"
    teacher_lines = [c for c in commands[1:] if c.startswith("teacher ")]
    assert len(teacher_lines) == len(commands) - 1
    # The last line trains resnet50 at 224 px (the global config's quick check): minutes on
    # 2 CPU cores, so it is only validated here (same code path as the demo line).
    assert "configs/teacher_global.yaml --debug --max-samples 500" in teacher_lines[-1]
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")  # what `. .venv/bin/activate` does
    for line in teacher_lines[:-1]:
        proc = subprocess.run(shlex.split(line), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    run = tmp_path / "volumes" / "runs" / "demo"
    report = json.loads((run / "analysis" / "report.json").read_text())
    assert report["verdict"] == "pass"
    assert (run / "analysis" / "loss.png").is_file()
    from common.config import load_config_file

    assert load_config_file(tmp_path / "configs" / "teacher_global.yaml")["model"]["arch"] == "resnet50"
