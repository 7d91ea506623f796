"""1 process against 2 (torchrun, gloo) for the same config and global batch: how close the
final metrics and weights are, and the wall time of each. The tests' tiny config (resnet18 at
32 px, AdamW, batch 64) on 720 generated images, 3 epochs, CPU.

BatchNorm makes the two differ beyond floating-point order: each of 2 processes normalises its
own 32 samples (docs/distributed.md). This measures by how much; the model-without-BatchNorm
case, where only the reduction order differs, is asserted in tests/unit/worker/test_distributed_loop.py.

    python -m bench.processes [--epochs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from common.config import apply_overrides
from tests.support.training import TINY_CONFIG

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def run(cfg: dict, base: Path, name: str) -> dict:
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "TEACHER_DATA_ROOT": str(base / "data"), "TEACHER_RUNS_ROOT": str(base / "runs")}
    env.pop("TEACHER_FAULT", None)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "common.apps.cli", "train", "--config", str(path), "--run-dir",
                    str(base / "runs" / name)], env=env, cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    history = json.loads((base / "runs" / name / "history.json").read_text())
    state = torch.load(base / "runs" / name / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    return {"wall_s": wall, "last": history["epochs"][-1], "weights": state["model"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        from worker.training.synthetic import SyntheticSpec, make_dataset

        make_dataset(base / "data" / "synthetic", SyntheticSpec())
        cfg = apply_overrides(TINY_CONFIG, {"optim.epochs": args.epochs, "runtime.log_interval": 10})
        one = run(cfg, base, "one")
        two = run(apply_overrides(cfg, {"resources.processes": 2}), base, "two")
    rel = {k: float((two["weights"][k].double() - v.double()).norm() / max(v.double().norm(), 1e-12))
           for k, v in one["weights"].items() if v.is_floating_point() and "running" not in k}
    out = {
        "config": "tests' TINY_CONFIG (resnet18 32 px, AdamW, global batch 64), 720 train / 180 val, "
                  f"{args.epochs} epochs, CPU",
        "wall_s": {"1": one["wall_s"], "2": two["wall_s"]},
        "final": {n: {s: {k: r["last"][s][k] for k in ("loss", "top1", "top5", "samples")} for s in ("train", "val")}
                  for n, r in (("1", one), ("2", two))},
        "weights_relative_difference": {"median": sorted(rel.values())[len(rel) // 2], "max": max(rel.values())},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "processes.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
