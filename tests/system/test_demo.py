"""`make demo` from nothing: generated data, the local stack (private Redis, gunicorn API, one
CPU worker, SQLite job store), the demo job over HTTP, a loadable best checkpoint, plots and a
passing integrity report."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from tests.support.training import ROOT

pytestmark = pytest.mark.slow


def test_make_demo_runs_the_main_job_end_to_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    env.update(
        TEACHER_DATA_ROOT=str(tmp_path / "datasets"),
        TEACHER_JOBS_ROOT=str(tmp_path / "jobs"),
        TEACHER_RUNS_ROOT=str(tmp_path / "runs"),
        TEACHER_DATABASE_URL=f"sqlite:///{tmp_path / 'state' / 'teacher.db'}",
        TORCH_HOME=str(tmp_path / "torch"),
    )
    proc = subprocess.run(["make", "-s", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "verdict: pass" in out

    best = Path(re.search(r"best checkpoint: (\S+)", out).group(1))
    report = Path(re.search(r"report:\s+(\S+)", out).group(1))
    plots = [Path(p) for p in re.search(r"plots:\s+(.+)", out).group(1).split(", ")]
    run_dir = Path(re.search(r"run directory:\s+(\S+)", out).group(1))
    assert best.is_file() and str(best).startswith(str(tmp_path))

    # The downloaded checkpoint loads with plain torch/torchvision and reproduces the recorded
    # validation accuracy on the generated val split.
    state = torch.load(best, weights_only=True)
    model = torchvision.models.get_model(state["config"]["model"]["arch"], num_classes=len(state["class_names"]))
    model.load_state_dict(state["model"])
    recorded = json.loads((run_dir / "history.json").read_text())["epochs"][state["epoch"] - 1]["val"]
    assert recorded["top1"] > 60.0  # 12 classes: chance is 8.3%
    from worker.training.engine import evaluate_checkpoint

    again = evaluate_checkpoint(best, data_root=tmp_path / "datasets")
    assert again["samples"] == recorded["samples"] and again["top1"] == pytest.approx(recorded["top1"], abs=1e-9)
    report_data = json.loads(report.read_text())
    assert report_data["verdict"] == "pass"
    assert {p.name for p in plots} >= {"loss.png", "accuracy.png"}
    for p in plots:
        with Image.open(p) as im:
            assert im.size[0] > 200 and len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 10
