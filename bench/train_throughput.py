"""Benchmark: `teacher train` against the plain PyTorch loop (bench/plain_loop.py), whole processes.

Same generated data, transforms, model, optimizer, schedule and batch; alternating pairs
(plain, teacher), ``--reps`` of them; the figure is the throughput ratio (plain wall time /
teacher wall time: 1.0 = as fast as the plain loop), median and spread, with user and system
CPU of each side. Two configs:

* ``small``: resnet18 at 32 px, 1,200 training images, 3 epochs, AdamW, batch 64 (issue 14's);
* ``big-checkpoint``: resnet50 at 32 px, 240 training images, 3 epochs: a ~95 MB checkpoint
  each epoch against a few seconds of training, where checkpoint I/O weighs most.

    python -m bench.train_throughput [--reps 3] [--only small]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CONFIGS = {
    "small": {"arch": "resnet18", "train_per_class": 100, "epochs": 3},
    "big-checkpoint": {"arch": "resnet50", "train_per_class": 20, "epochs": 3},
}


def _timed(argv: list[str], env: dict[str, str]) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": wall, "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime}


def bench_config(name: str, spec: dict, work: Path, reps: int) -> dict:
    from worker.training.synthetic import SyntheticSpec, make_dataset

    data_root = work / name / "data"
    make_dataset(data_root / "synthetic", SyntheticSpec(train_per_class=spec["train_per_class"]))
    cfg = {
        "name": f"bench-{name}", "model": {"arch": spec["arch"]},
        "data": {"format": "imagefolder", "root": "synthetic", "image_size": 32, "augment": True},
        "optim": {"epochs": spec["epochs"], "batch_size": 64, "optimizer": "adamw", "lr": 0.001, "weight_decay": 0.05,
                  "scheduler": "cosine", "warmup_epochs": 0.5, "seed": 0},
        "runtime": {"device": "cpu", "num_workers": 0},
    }
    config = work / name / "config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    env.update(TEACHER_DATA_ROOT=str(data_root), TEACHER_RUNS_ROOT=str(work / name), TEACHER_LOG_FORMAT="text")
    plain = [sys.executable, "-m", "bench.plain_loop", "--data", str(data_root / "synthetic"), "--arch", spec["arch"],
             "--size", "32", "--epochs", str(spec["epochs"]), "--batch", "64"]
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "teacher": []}
    for n in range(reps + 1):  # the first pair warms caches and is not counted
        p = _timed([*plain, "--out", str(work / name / f"plain-{n}")], env)
        t = _timed([sys.executable, "-m", "common.apps.cli", "train", "--config", str(config),
                    "--run-dir", str(work / name / f"teacher-{n}")], env)
        if n:
            runs["plain"].append(p)
            runs["teacher"].append(t)
    ratios = [p["wall_s"] / t["wall_s"] for p, t in zip(runs["plain"], runs["teacher"])]
    med = {side: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "user_s", "sys_s")} for side, rs in runs.items()}
    return {"config": spec, "runs": runs, "median": med,
            "throughput_ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", choices=sorted(CONFIGS))
    args = ap.parse_args()
    out = {"bench": "train_throughput", "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "reps": args.reps}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for name, spec in CONFIGS.items():
            if args.only in (None, name):
                out[name] = bench_config(name, spec, Path(tmp), args.reps)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_throughput.json").write_text(json.dumps(out, indent=2))
    print("| config | teacher throughput / plain loop (median [min, max]) | wall s plain / teacher | user s | sys s |")
    print("|---|---|---|---|---|")
    for name in CONFIGS:
        if name in out:
            r, m = out[name]["throughput_ratio"], out[name]["median"]
            print(f"| {name} | {r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}] | {m['plain']['wall_s']:.1f} / "
                  f"{m['teacher']['wall_s']:.1f} | {m['plain']['user_s']:.1f} / {m['teacher']['user_s']:.1f} | "
                  f"{m['plain']['sys_s']:.1f} / {m['teacher']['sys_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
