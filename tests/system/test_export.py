"""`teacher export`: a weights-only model.pt plus model.json that a fresh process with nothing but
torch, torchvision and PIL turns back into the recorded validation metrics."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.training import TINY_CONFIG, run_teacher, write_config

pytestmark = pytest.mark.slow

# Runs in a fresh interpreter, outside the repository, and may import only torch, torchvision
# and PIL: it is what a user of the export would write, guided by model.json alone.
CONSUMER = r'''
import json, sys
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2 as T

export_dir, val_dir = Path(sys.argv[1]), Path(sys.argv[2])
meta = json.loads((export_dir / "model.json").read_text())
model = torchvision.models.get_model(meta["arch"], weights=None, num_classes=meta["num_classes"])
model.load_state_dict(torch.load(export_dir / meta["model_file"], weights_only=True))
model.eval()

def step(s):
    if s["op"] == "resize":
        return T.Resize(s["size"], interpolation=T.InterpolationMode(s["interpolation"]),
                        antialias=s["antialias"], max_size=s["max_size"])
    if s["op"] == "center_crop":
        return T.CenterCrop(s["size"])
    if s["op"] == "to_image":
        return T.ToImage()
    if s["op"] == "to_dtype":
        return T.ToDtype(getattr(torch, s["dtype"]), scale=s["scale"])
    if s["op"] == "normalize":
        return T.Normalize(s["mean"], s["std"])
    raise SystemExit("unknown step " + s["op"])

pre = meta["preprocessing"]
transform = T.Compose([step(s) for s in pre["steps"]])
samples = [(p, label) for label, name in enumerate(meta["class_names"])
           for p in sorted((val_dir / name).iterdir()) if p.suffix.lower() == ".png"]
correct, loss_sum = 0, 0.0
with torch.no_grad():
    for i in range(0, len(samples), 64):
        batch = samples[i:i + 64]
        x = torch.stack([transform(Image.open(p).convert(pre["color_mode"])) for p, _ in batch])
        y = torch.tensor([label for _, label in batch])
        logits = model(x)
        correct += int((logits.argmax(1) == y).sum())
        loss_sum += float(torch.nn.functional.cross_entropy(logits.double(), y, reduction="sum"))
project = sorted(m for m in sys.modules if m.split(".")[0] in ("worker", "common", "api"))
print(json.dumps({"samples": len(samples), "correct": correct, "top1": 100.0 * correct / len(samples),
                  "loss": loss_sum / len(samples), "project_modules": project}))
'''


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, dataset_root: Path) -> dict:
    """The demo's recipe (resnet18, 32 px, AdamW, no augmentation) for 2 epochs on the shared
    generated dataset: 12 classes, 720 train / 180 val images."""
    base = tmp_path_factory.mktemp("export")
    cfg = copy.deepcopy(TINY_CONFIG)
    config = write_config(base / "cfg.yaml", cfg)
    env = {**os.environ, "TEACHER_DATA_ROOT": str(dataset_root), "TEACHER_RUNS_ROOT": str(base / "runs")}
    env.pop("TEACHER_FAULT", None)
    run_dir = base / "runs" / "tiny"
    run_teacher(["train", "--config", str(config), "--run-dir", str(run_dir)], env, check=True)
    return {"base": base, "env": env, "run_dir": run_dir, "val_dir": dataset_root / "synthetic" / "val"}


def test_export_reproduces_recorded_val_top1_in_a_fresh_process(trained_run, tmp_path):
    run_dir = trained_run["run_dir"]
    out = tmp_path / "export"
    proc = run_teacher(["export", str(run_dir), "--out", str(out)], trained_run["env"], check=True)
    assert "verified against its manifest" in proc.stderr
    meta = json.loads((out / "model.json").read_text())

    # Only weights in model.pt, and the digests are the real ones.
    weights = torch.load(out / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    best = run_dir / "checkpoints" / "best.pt"
    assert meta["sha256"] == hashlib.sha256((out / "model.pt").read_bytes()).hexdigest()
    assert meta["source"]["sha256"] == hashlib.sha256(best.read_bytes()).hexdigest()
    assert meta["source"]["verified_against_manifest"] is True
    assert (out / "model.pt").stat().st_size < 0.6 * best.stat().st_size  # no optimizer state
    history = json.loads((run_dir / "history.json").read_text())
    manifest = json.loads((run_dir / "checkpoints" / "manifest.json").read_text())
    recorded = history["epochs"][meta["epoch"] - 1]["val"]
    assert meta["epoch"] == manifest["best"]["epoch"]
    assert meta["metrics"]["val.top1"] == recorded["top1"]
    assert meta["class_names"] == history["class_names"] and meta["num_classes"] == 12
    assert meta["arch"] == "resnet18" and meta["image_size"] == 32
    assert meta["source"]["run_name"] == "tiny" and meta["source"]["checkpoint"] == "best.pt"
    pre = meta["preprocessing"]
    assert (pre["mean"], pre["std"]) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert pre["resize"] == [32] and pre["crop"] == [32, 32] and pre["interpolation"] == "bilinear"
    assert [s["op"] for s in pre["steps"]] == ["resize", "center_crop", "to_image", "to_dtype", "normalize"]

    consumer = tmp_path / "consumer"
    consumer.mkdir()
    (consumer / "use_export.py").write_text(CONSUMER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEACHER_", "PYTHONPATH"))}
    result = subprocess.run([sys.executable, "use_export.py", str(out), str(trained_run["val_dir"])],
                            cwd=consumer, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    fresh = json.loads(result.stdout)
    assert fresh["project_modules"] == []
    assert fresh["samples"] == recorded["samples"] == 180
    # Exactly the recorded top-1 (the same count of correct samples), and the loss to float
    # precision: wrong normalisation or resizing would move the loss even where top-1 held.
    assert fresh["correct"] == round(recorded["top1"] * recorded["samples"] / 100)
    assert fresh["top1"] == pytest.approx(recorded["top1"], abs=1e-9)
    assert recorded["top1"] > 100 / 12 * 2  # clearly learned: the comparison means something
    assert fresh["loss"] == pytest.approx(recorded["loss"], rel=1e-5)


def test_export_refuses_a_checkpoint_that_fails_its_manifest(trained_run, tmp_path):
    run_copy = tmp_path / "run"
    shutil.copytree(trained_run["run_dir"], run_copy)
    best = run_copy / "checkpoints" / "best.pt"
    data = bytearray(best.read_bytes())
    data[len(data) // 2] ^= 0xFF
    best.write_bytes(bytes(data))
    out = tmp_path / "export"
    proc = run_teacher(["export", str(best), "--out", str(out)], trained_run["env"])
    assert proc.returncode == 1 and "sha256 mismatch" in proc.stderr
    assert not out.exists()  # nothing written from a corrupt source


def test_export_bad_input_is_exit_2(trained_run, tmp_path):
    env = trained_run["env"]
    proc = run_teacher(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")], env)
    assert proc.returncode == 2 and "no such checkpoint or run directory" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_teacher(["export", str(empty), "--out", str(tmp_path / "o")], env)
    assert proc.returncode == 2 and "no best.pt" in proc.stderr
    proc = run_teacher(["export", str(trained_run["run_dir"])], env)
    assert proc.returncode == 2 and "--out" in proc.stderr


def test_preprocessing_is_read_from_the_eval_transform(monkeypatch):
    """model.json describes whatever validation really applies; a step it cannot describe is
    an error, never silently dropped."""
    from torchvision.transforms import v2 as T

    from worker.training import data as data_mod
    from worker.training.export import ExportError, inference_preprocessing

    pre = inference_preprocessing(224)
    assert pre["resize"] == [224] and pre["crop"] == [224, 224]
    real = data_mod.build_transforms
    monkeypatch.setattr(data_mod, "build_transforms",
                        lambda size, **kw: T.Compose([*real(size, **kw).transforms, T.Grayscale()]))
    with pytest.raises(ExportError, match="Grayscale"):
        inference_preprocessing(224)


def test_export_takes_a_job_id_or_unique_prefix(trained_run, tmp_path):
    jobs = tmp_path / "jobs"
    job_id = "abcdef12" + "0" * 24
    shutil.copytree(trained_run["run_dir"], jobs / job_id / "run", symlinks=True)
    shutil.copytree(trained_run["run_dir"], jobs / ("abcdef34" + "0" * 24) / "run", symlinks=True)
    env = {**trained_run["env"], "TEACHER_JOBS_ROOT": str(jobs)}
    proc = run_teacher(["export", job_id[:8], "--out", str(tmp_path / "o")], env)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "o" / "model.json").read_text())
    assert meta["source"]["verified_against_manifest"] is True
    proc = run_teacher(["export", "abcdef", "--out", str(tmp_path / "o2")], env)
    assert proc.returncode == 2 and "ambiguous" in proc.stderr
