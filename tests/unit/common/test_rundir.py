"""common.rundir: the run directory's names and typed records. Each record read from a file
and written back gives the same JSON; a missing file reads as None, a corrupt one raises."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from common import rundir
from common.analysis.synthetic import write_synthetic_run
from common.rundir import (Best, CheckpointEntry, History, JobPaths, Manifest, Metric, Progress, RunFileCorrupt,
                           RunPaths, RunStatus, StepRecord)


def _load(path: Path):
    return json.loads(path.read_text())


def test_names_of_a_run_and_a_job_directory(tmp_path):
    run = RunPaths(tmp_path)
    assert run.manifest == tmp_path / "checkpoints" / "manifest.json"
    assert run.best == tmp_path / "checkpoints" / "best.pt"
    assert run.epoch_checkpoint(3).name == "epoch_0003.pt" and rundir.epoch_of_file("epoch_0003.pt") == 3
    assert rundir.epoch_of_file("best.pt") is None
    job = JobPaths.of(tmp_path, "a" * 32)
    assert (job.config, job.log, job.run) == (tmp_path / ("a" * 32) / "config.yaml",
                                             tmp_path / ("a" * 32) / "child.log", tmp_path / ("a" * 32) / "run")
    assert job.manifest == job.files.manifest == job.run / "checkpoints" / "manifest.json"
    with pytest.raises(LookupError):
        JobPaths.of(tmp_path, "../etc")


def test_metric_names_have_one_spelling_and_a_tensorboard_tag():
    assert [m.value for m in Metric] == ["train.loss", "train.top1", "train.top5", "val.loss", "val.top1", "val.top5"]
    assert (Metric.VAL_TOP1.split, Metric.VAL_TOP1.key) == ("val", "top1")
    assert rundir.metric_name("val", "top1") == "val.top1"
    assert rundir.tb_tag("val.top1") == "val/top1"


def test_history_of_a_synthetic_run_round_trips(tmp_path):
    write_synthetic_run(tmp_path)
    history = History.read(tmp_path / "history.json")
    assert history is not None and len(history.epochs) == 6
    assert history.to_json() == _load(tmp_path / "history.json")
    last = history.last
    assert last.value("val.top1") == _load(tmp_path / "history.json")["epochs"][-1]["val"]["top1"]
    assert set(last.metrics()) == {m.value for m in Metric}


def test_steps_of_a_synthetic_run_round_trip(tmp_path):
    write_synthetic_run(tmp_path)
    lines = (tmp_path / "steps.jsonl").read_text().splitlines()
    records = rundir.read_steps(tmp_path / "steps.jsonl")
    assert [r.to_json() for r in records] == [json.loads(line) for line in lines]


def test_steps_ignore_an_incomplete_last_line_but_not_a_bad_one_in_the_middle(tmp_path):
    path = tmp_path / "steps.jsonl"
    rec = StepRecord("train", 1, 4, 4, 9.0, 3, 5, 8, 0.1, 100.0, 1.5, False)
    rundir.append_step(path, rec)
    with path.open("a") as fh:
        fh.write('{"split": "tr')
    assert rundir.read_steps(path) == [rec]
    with path.open("a") as fh:
        fh.write("\n")
    rundir.append_step(path, rec)
    with pytest.raises(RunFileCorrupt, match="line 2"):
        rundir.read_steps(path)
    assert rundir.read_steps(tmp_path / "none.jsonl") is None


def test_a_step_record_with_nan_is_strict_json_with_a_flag(tmp_path):
    path = tmp_path / "steps.jsonl"
    rundir.append_step(path, StepRecord("train", 1, 4, 4, math.nan, 3, 5, 8, 0.1, None, 1.5, False))
    obj = json.loads(path.read_text(), parse_constant=lambda t: pytest.fail(f"non-JSON token {t}"))
    assert obj["loss_sum"] is None and obj["nonfinite"] == {"loss_sum": "nan"}
    assert StepRecord.from_json(obj).nonfinite == {"loss_sum": "nan"}


def _entry(name: str, epoch: int) -> CheckpointEntry:
    return CheckpointEntry(name, epoch, epoch * 10, 123, "ab" * 32, {"val.top1": 50.0 + epoch, "val.loss": None}, 1.5)


def test_manifest_round_trips_and_finds_entries(tmp_path):
    manifest = Manifest("val.top1", Best("val.top1", 52.0, 2), [_entry("epoch_0002.pt", 2), _entry("last.pt", 2)])
    path = tmp_path / "checkpoints" / "manifest.json"
    manifest.write(path)
    assert _load(path) == {"format": "teacher-checkpoints/1", "best_metric": "val.top1",
                           "best": {"metric": "val.top1", "value": 52.0, "epoch": 2},
                           "checkpoints": [e.to_json() for e in manifest.checkpoints]}
    again = Manifest.read(path)
    assert again == manifest and again.sha256_of("last.pt") == "ab" * 32 and again.entry("best.pt") is None
    assert again.entry("last.pt").kind == "last" and again.entry("epoch_0002.pt").kind == "epoch"
    assert again.entry("last.pt").value("val.loss") is None


def test_progress_round_trips_with_only_the_keys_it_had(tmp_path):
    path = tmp_path / "progress.json"
    minimal = {"status": "failed", "error": "ConfigError: bad", "updated_at": 3.0}
    path.write_text(json.dumps(minimal))
    progress = Progress.read(path)
    assert progress.status is RunStatus.FAILED and progress.finished and progress.to_json() == minimal
    full = {"status": "running", "phase": "train", "epoch": 1, "epochs": 2, "batch": 4, "batches": 12, "step": 4,
            "total_steps": 24, "percent": 16.67, "throughput": 400.0, "eta_s": None, "latest": {"train.loss": 2.1},
            "integrity": None, "updated_at": 5.0, "someday": {"new": 1}}
    path.write_text(json.dumps(full))
    progress = Progress.read(path)
    assert progress.extra == {"someday": {"new": 1}} and progress.to_json() == full


def test_progress_written_by_code_has_every_key_and_flags_nonfinite(tmp_path):
    path = tmp_path / "progress.json"
    rundir.write_progress(path, Progress(RunStatus.RUNNING, phase=rundir.Phase.VAL, throughput=math.inf,
                                         latest={"train.loss": math.nan}), now=7.0)
    obj = _load(path)
    assert obj["status"] == "running" and obj["phase"] == "val" and obj["updated_at"] == 7.0
    assert obj["eta_s"] is None and obj["integrity"] is None and "error" not in obj
    assert obj["nonfinite"] == {"throughput": "inf", "latest.train.loss": "nan"}


@pytest.mark.parametrize("reader, name", [(Progress.read, "progress.json"), (History.read, "history.json"),
                                          (Manifest.read, "manifest.json"), (rundir.read_config, "config.yaml")])
def test_a_missing_file_is_none_and_a_corrupt_one_raises(tmp_path, reader, name):
    path = tmp_path / name
    assert reader(path) is None
    path.write_text("{half" if name.endswith(".json") else "a: [1,")
    with pytest.raises(RunFileCorrupt) as err:
        reader(path)
    assert err.value.path == path


@pytest.mark.parametrize("reader, text", [(Progress.read, '{"status": "sleeping"}'),
                                          (Progress.read, '[1, 2]'),
                                          (History.read, '{"epochs": [{"epoch": 1}]}'),
                                          (Manifest.read, '{"checkpoints": [{"name": "last.pt", "epoch": "x"}]}')])
def test_a_file_of_the_wrong_shape_is_corrupt(tmp_path, reader, text):
    path = tmp_path / "file.json"
    path.write_text(text)
    with pytest.raises(RunFileCorrupt):
        reader(path)


def test_config_round_trips(tmp_path):
    cfg = {"name": "tiny", "optim": {"epochs": 2, "lr": 0.001}, "init_from": None}
    rundir.write_config(tmp_path / "config.yaml", cfg)
    assert rundir.read_config(tmp_path / "config.yaml") == cfg


@pytest.mark.slow
def test_every_record_the_real_trainer_writes_round_trips(dataset_root, runs_root, teacher_env, tmp_path):
    """A real `teacher train` run: each file read as its record and written back is the same
    JSON, and the records agree with each other (last.pt is the last epoch, best is the best)."""
    from tests.support.training import TINY_CONFIG, run_teacher, write_config

    run = RunPaths(runs_root / "real")
    run_teacher(["train", "--config", str(write_config(tmp_path / "c.yaml", TINY_CONFIG)), "--run-dir", str(run.dir)],
                teacher_env, check=True)
    progress, history, manifest = Progress.read(run.progress), History.read(run.history), Manifest.read(run.manifest)
    assert progress.to_json() == _load(run.progress) and progress.status is RunStatus.SUCCEEDED
    assert history.to_json() == _load(run.history)
    assert manifest.to_json() == _load(run.manifest)
    steps = rundir.read_steps(run.steps)
    assert [s.to_json() for s in steps] == [json.loads(line) for line in run.steps.read_text().splitlines()]
    assert rundir.read_config(run.config)["name"] == "tiny"
    assert [e.epoch for e in history.epochs] == [1, 2]
    assert manifest.entry(rundir.LAST).epoch == 2 and manifest.entry(rundir.LAST).metrics == history.last.metrics()
    assert progress.best == manifest.best and progress.latest == history.last.metrics()
    best = max(history.epochs, key=lambda e: (e.value(Metric.VAL_TOP1), -e.epoch))
    assert manifest.best.epoch == best.epoch == manifest.entry(rundir.BEST).epoch
    export = rundir.ExportMeta.read(run.export / rundir.EXPORT_META)
    assert export.to_json() == _load(run.export / rundir.EXPORT_META)
    assert export.epoch == manifest.best.epoch and export.source.checkpoint == rundir.BEST
    finals = [s for s in steps if s.final and s.split == "val"]
    assert [(s.epoch, s.samples) for s in finals] == [(e.epoch, e.val.samples) for e in history.epochs]


def test_a_hand_made_manifest_without_created_at_reads_and_writes_back_as_it_was(tmp_path):
    path = tmp_path / "manifest.json"
    raw = {"format": "teacher-checkpoints/1", "best_metric": "val.top1", "best": None,
           "checkpoints": [{"name": "best.pt", "epoch": 1, "step": 3, "size": 5, "sha256": "ab", "metrics": {}}]}
    path.write_text(json.dumps(raw))
    manifest = Manifest.read(path)
    assert manifest.entry("best.pt").created_at is None and manifest.to_json() == raw


def test_read_object_gives_a_file_as_written(tmp_path):
    path = tmp_path / "history.json"
    assert rundir.read_object(path) is None
    path.write_text('{"epochs": [{"epoch": 1, "val": {"top1": 50.0}}]}')
    assert rundir.read_object(path) == {"epochs": [{"epoch": 1, "val": {"top1": 50.0}}]}
    with pytest.raises(RunFileCorrupt):
        History.read(path)  # not a history the trainer writes
    path.write_text("[]")
    with pytest.raises(RunFileCorrupt, match="JSON object"):
        rundir.read_object(path)


def test_progress_keys_are_written_in_the_order_the_trainer_always_wrote_them(tmp_path):
    path = tmp_path / "progress.json"
    done = Progress(RunStatus.SUCCEEDED, phase=rundir.Phase.DONE, latest={}, best=Best("val.top1", 50.0, 2))
    rundir.write_progress(path, done, now=1.0)
    keys = list(_load(path))
    assert keys[keys.index("latest"):] == ["latest", "best", "integrity", "updated_at"]
    failed = Progress.from_json({**_load(path), "status": "failed", "error": "x"})
    rundir.write_progress(path, failed, now=2.0)
    assert list(_load(path))[-2:] == ["updated_at", "error"]
