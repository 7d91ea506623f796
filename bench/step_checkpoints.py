"""Benchmark: what step (mid-epoch) checkpoints cost the training throughput.

Three variants of the same `teacher train` run (resnet18 at 32 px, 720 generated images, batch
64, AdamW, 3 epochs, CPU), run as whole processes, alternating, ``--reps`` times each:

* ``off``: ``checkpoint.every_minutes: 0`` (epoch checkpoints only), the baseline;
* ``default``: the shipped default (``every_minutes: 30``). A run shorter than 30 minutes writes
  no step checkpoint, so this measures that the timer itself costs nothing;
* ``stress``: ``every_steps: 2`` (a step checkpoint every second optimizer step, ~5 per epoch),
  to measure what one write costs.

Reported: wall-time ratios to ``off`` (median and spread), the step checkpoints written and
their measured write time (from the run's log), and the overhead at the default period that
this implies: one write per 30 minutes of training, ``write_s / (1800 + write_s)``.

    python -m bench.step_checkpoints [--reps 3] [--epochs 3]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from common.config import apply_overrides
from tests.support.training import TINY_CONFIG

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# The tests' tiny config (tests/support/training.py), with augmentation, 3 epochs, a log line per 10 steps.
CONFIG = apply_overrides(TINY_CONFIG, {"name": "bench-step-ckpt", "data.augment": True, "optim.epochs": 3,
                                       "runtime.log_interval": 10})
VARIANTS = {"off": {"every_minutes": 0}, "default": {}, "stress": {"every_minutes": 0, "every_steps": 2}}
_WRITE = re.compile(r"step checkpoint step_\d+\.pt \(periodic\).* in ([0-9.]+)s")


def run_once(variant: str, work: Path, data_root: Path, epochs: int, n: int) -> dict[str, float]:
    cfg = copy.deepcopy(CONFIG)
    cfg["optim"]["epochs"] = epochs
    cfg["checkpoint"].update(VARIANTS[variant])
    config = work / f"{variant}.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_dir = work / f"{variant}-{n}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    env.update(TEACHER_DATA_ROOT=str(data_root), TEACHER_RUNS_ROOT=str(work), TEACHER_LOG_FORMAT="text")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "common.apps.cli", "train", "--config", str(config), "--run-dir", str(run_dir)],
                   env=env, cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    writes = [float(m.group(1)) for m in _WRITE.finditer((run_dir / "train.log").read_text())]
    return {"wall_s": wall, "step_checkpoints": len(writes), "write_s": statistics.median(writes) if writes else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    from worker.training.synthetic import SyntheticSpec, make_dataset

    with tempfile.TemporaryDirectory(prefix="bench-step-ckpt-") as tmp:
        work = Path(tmp)
        make_dataset(work / "data" / "synthetic", SyntheticSpec())
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
        run_once("off", work, work / "data", 1, -1)  # warm the page cache and imports; not counted
        for n in range(args.reps):
            for variant in VARIANTS:  # alternating: drift on a shared machine hits all alike
                runs[variant].append(run_once(variant, work, work / "data", args.epochs, n))
    base = [r["wall_s"] for r in runs["off"]]
    summary: dict[str, object] = {"bench": "step_checkpoints", "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                                  "reps": args.reps, "epochs": args.epochs, "runs": runs}
    for variant in ("default", "stress"):
        ratios = [r["wall_s"] / b for r, b in zip(runs[variant], base)]
        summary[f"{variant}_vs_off"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    stress = runs["stress"]
    write_s = statistics.median(r["write_s"] for r in stress)
    extra = statistics.median((r["wall_s"] - b) / max(r["step_checkpoints"], 1) for r, b in zip(stress, base))
    summary["write_s"] = write_s
    summary["extra_wall_s_per_checkpoint"] = extra
    summary["overhead_at_default_period"] = max(write_s, extra) / (1800.0 + max(write_s, extra))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "step_checkpoints.json").write_text(json.dumps(summary, indent=2))
    d, s = summary["default_vs_off"], summary["stress_vs_off"]
    print("| variant | wall time vs `off` (median [min, max]) | step checkpoints per run |")
    print("|---|---|---|")
    print(f"| default (every 30 min) | {d['median']:.3f} [{d['min']:.3f}, {d['max']:.3f}] | "  # type: ignore[index]
          f"{runs['default'][0]['step_checkpoints']:.0f} |")
    print(f"| stress (every 2 steps) | {s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}] | "  # type: ignore[index]
          f"{stress[0]['step_checkpoints']:.0f} |")
    print(f"\none step checkpoint: write {write_s:.2f} s, {extra:.2f} s of extra wall time; at the default period "
          f"(one per 30 min of training) that is {100 * summary['overhead_at_default_period']:.3f} % of throughput")  # type: ignore[operator]
    return 0


if __name__ == "__main__":
    sys.exit(main())
