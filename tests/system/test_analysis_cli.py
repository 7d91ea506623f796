"""``teacher analyze``: exit codes 0/1/2, report.json and PNGs, --json."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from common.analysis.cli import analyze
from common.analysis.synthetic import SyntheticRun, write_synthetic_run

REPO = Path(__file__).resolve().parents[2]
INCIDENT_LOG = "Epoch 1 [Train]: loss=9.1600, top1=0.02%, top5=0.09%\nEpoch 2 [Train]: loss=8.7400, top1=0.61%, top5=2.40%\n"


@pytest.fixture()
def healthy(tmp_path: Path) -> Path:
    write_synthetic_run(tmp_path / "run", SyntheticRun(epochs=3))
    return tmp_path / "run"


def incident(tmp_path: Path) -> list[str]:
    (tmp_path / "history.json").write_text(json.dumps({"train_loss": [0.0, 0.0], "val_loss": [9.5393, 9.5393]}))
    (tmp_path / "console.log").write_text(INCIDENT_LOG)
    return [str(tmp_path / "history.json"), str(tmp_path / "console.log")]


def test_healthy_run_dir_exits_0_and_writes_into_run_dir(healthy: Path) -> None:
    result = CliRunner().invoke(analyze, [str(healthy)])
    assert result.exit_code == 0, result.output
    assert "verdict: PASS" in result.output
    out = healthy / "analysis"
    assert json.loads((out / "report.json").read_text())["verdict"] == "pass"
    assert {"loss.png", "accuracy.png", "lr.png", "throughput.png", "step_loss.png"} <= {p.name for p in out.iterdir()}


def test_incident_exits_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(analyze, [*incident(tmp_path), "--num-classes", "9500", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1, result.output
    assert "FAIL    dead_metric" in result.output and "FAIL    cross_source" in result.output


@pytest.mark.parametrize("args, message", [
    (["/definitely/not/here"], "no such file"),
    (["{bad}"], "unknown file format"),
    (["--pattern", "(x", "{log}"], "not a valid regex"),
])
def test_bad_input_exits_2_with_a_message(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "blob.dat").write_bytes(b"\x00\x00binary")
    (tmp_path / "a.log").write_text("epoch 1 loss 1.0\n")
    args = [a.format(bad=tmp_path / "blob.dat", log=tmp_path / "a.log") for a in args]
    result = CliRunner().invoke(analyze, [*args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert message in result.output


def test_json_flag_prints_the_report_on_stdout(healthy: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(analyze, [str(healthy), "--json", "--no-plots", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0
    start = result.stdout.index('{\n  "format"')
    assert json.loads(result.stdout[start:])["verdict"] == "pass"


def test_real_subprocess_exit_codes(tmp_path: Path, healthy: Path) -> None:
    teacher = REPO / ".venv" / "bin" / "teacher"
    cmd = [str(teacher)] if teacher.exists() else [sys.executable, "-m", "common.apps.cli"]
    env = dict(os.environ, MPLBACKEND="Agg")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cmd, "analyze", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)

    failed = run(*incident(tmp_path), "--num-classes", "9500", "--json", "--no-plots")
    assert failed.returncode == 1, failed.stderr
    assert json.loads(failed.stdout)["verdict"] == "fail"
    assert (tmp_path / "analysis" / "report.json").exists()  # default --out for file inputs
    assert run(str(healthy), "--no-plots").returncode == 0
    missing = run(str(tmp_path / "missing.json"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_a_keras_tensorboard_log_is_analysed_as_a_user_runs_it(tmp_path: Path) -> None:
    """TF2's Keras callback writes ``train/`` and ``validation/`` event files of tensor-valued
    scalars (built here from TensorBoard's protos, as tf.summary.scalar writes them); before
    common/analysis/tb_events.py the analysis found no metrics in them."""
    from tensorboard.compat.proto import event_pb2, summary_pb2

    from tests.support.tensorboard import event_file, tf2_scalar

    logs = tmp_path / "logs"
    for split, worse in (("train", 0.0), ("validation", 0.2)):
        events = [event_pb2.Event(wall_time=1.0, file_version="brain.Event:2")]
        for epoch in range(6):
            events.append(event_pb2.Event(wall_time=2.0 + epoch, step=epoch, summary=summary_pb2.Summary(value=[
                tf2_scalar("epoch_loss", 2.2 * 0.8 ** epoch + worse, metadata=epoch == 0, content=True),
                tf2_scalar("epoch_accuracy", 0.2 + 0.1 * epoch - worse / 4, metadata=epoch == 0, content=True)])))
        (logs / split).mkdir(parents=True)
        data = event_file(events)
        cut = 5 if split == "validation" else 0  # the validation file's last record cut off
        (logs / split / "events.out.tfevents.1700000000.host.1.v2").write_bytes(data[:len(data) - cut])
    teacher = REPO / ".venv" / "bin" / "teacher"
    cmd = [str(teacher)] if teacher.exists() else [sys.executable, "-m", "common.apps.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")} | {"MPLBACKEND": "Agg"}
    done = subprocess.run([*cmd, "analyze", str(logs), "--json", "--no-plots", "--num-classes", "10"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    (source,) = report["sources"]
    assert source["kind"] == "tensorboard"
    assert {"train.loss", "val.loss", "train.top1", "val.top1"} <= set(source["metrics"]), source
    assert any("ends inside a record" in note for note in source["notes"]), source["notes"]
