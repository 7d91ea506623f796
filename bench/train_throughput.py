"""Benchmark: `teacher train` against the plain PyTorch loop (bench/plain_loop.py), whole processes.

Same generated data, transforms, model, optimizer, schedule and batch; alternating pairs
(plain, teacher), ``--reps`` of them; the figure is the throughput ratio (plain wall time /
teacher wall time: 1.0 = as fast as the plain loop), median and spread, with user and system
CPU of each side. Two configs:

* ``small``: resnet18 at 32 px, 1,200 training images, 3 epochs, AdamW, batch 64 (issue 14's);
* ``big-checkpoint``: resnet50 at 32 px, 240 training images, 3 epochs: a ~95 MB checkpoint
  each epoch against a few seconds of training, where checkpoint I/O weighs most.

With ``--compile`` each rep also runs ``teacher train`` with ``runtime.compile: true``
(torch.compile, TorchInductor) on the same config, right after the uncompiled one: the figures
are its first (compiling) training step and evaluation batch, its epoch 1 (which holds every
compile: the first step, the smaller last batch's recompile with a dynamic batch dimension, and
evaluation's) and the throughput of the later, steady epochs, against the uncompiled run's.
``--compile-cache cold`` (the default) gives each compiled run an empty TorchInductor cache (a
fresh host, or a new architecture or image size); ``warm`` shares one across the bench's runs,
filled by the uncounted first rep (a host that compiled this model before).

    python -m bench.train_throughput [--reps 3] [--only small] [--compile [--compile-cache cold|warm]]
"""
from __future__ import annotations

import argparse
import json
import os
import re
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


FIRST_RE = re.compile(r"the first (training step|evaluation batch) took ([0-9.]+)s \(compiling\)")


def run_figures(run_dir: Path) -> dict:
    """What a teacher run recorded: each epoch's training throughput and time, and, compiled,
    the logged seconds of its first training step and evaluation batch."""
    epochs = json.loads((run_dir / "history.json").read_text())["epochs"]
    first = {m[1].split()[0]: float(m[2]) for m in FIRST_RE.finditer((run_dir / "train.log").read_text())}
    return {"train_throughput": [e["train"]["throughput"] for e in epochs], "epoch_s": [e["epoch_time_s"] for e in epochs],
            **({"first_step_s": first["training"], "first_eval_batch_s": first["evaluation"]} if first else {})}


def compile_summary(runs: dict[str, list[dict[str, float]]]) -> dict:
    """Compiled against uncompiled, pair by pair (medians): steady epochs are 2 and later."""
    def steady(r: dict) -> float:
        return statistics.median(r["train_throughput"][1:])

    pairs = list(zip(runs["teacher"], runs["compiled"]))
    return {
        "first_step_s": statistics.median(c["first_step_s"] for _, c in pairs),
        "first_eval_batch_s": statistics.median(c["first_eval_batch_s"] for _, c in pairs),
        "epoch1_s": {"teacher": statistics.median(t["epoch_s"][0] for t, _ in pairs),
                     "compiled": statistics.median(c["epoch_s"][0] for _, c in pairs)},
        "steady_throughput": {"teacher": statistics.median(steady(t) for t, _ in pairs),
                              "compiled": statistics.median(steady(c) for _, c in pairs)},
        "steady_ratio": {"median": statistics.median(steady(c) / steady(t) for t, c in pairs),
                         "min": min(steady(c) / steady(t) for t, c in pairs),
                         "max": max(steady(c) / steady(t) for t, c in pairs)},
        # The fastest steady epoch of each side: on a shared machine other work only ever adds
        # time, so the best epochs are the least disturbed estimate.
        "steady_best_ratio": max(x for c in runs["compiled"] for x in c["train_throughput"][1:])
        / max(x for t in runs["teacher"] for x in t["train_throughput"][1:]),
        "wall_ratio": statistics.median(t["wall_s"] / c["wall_s"] for t, c in pairs),
    }


def bench_config(name: str, spec: dict, work: Path, reps: int, compile_cache: str | None = None) -> dict:
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
    compiled_config = work / name / "config-compiled.yaml"
    cfg["runtime"]["compile"] = True
    compiled_config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    env.update(TEACHER_DATA_ROOT=str(data_root), TEACHER_RUNS_ROOT=str(work / name), TEACHER_LOG_FORMAT="text")
    plain = [sys.executable, "-m", "bench.plain_loop", "--data", str(data_root / "synthetic"), "--arch", spec["arch"],
             "--size", "32", "--epochs", str(spec["epochs"]), "--batch", "64"]
    runs: dict[str, list[dict]] = {"plain": [], "teacher": [], **({"compiled": []} if compile_cache else {})}
    for n in range(reps + 1):  # the first pair (or triple) warms caches and is not counted
        p = _timed([*plain, "--out", str(work / name / f"plain-{n}")], env)
        t_dir = work / name / f"teacher-{n}"
        t = _timed([sys.executable, "-m", "common.apps.cli", "train", "--config", str(config), "--run-dir", str(t_dir)], env)
        c = None
        if compile_cache and (n or compile_cache == "warm"):  # a cold cache needs no warm-up run
            cache = work / name / ("inductor-cache" if compile_cache == "warm" else f"inductor-cache-{n}")
            c_dir = work / name / f"compiled-{n}"
            c = _timed([sys.executable, "-m", "common.apps.cli", "train", "--config", str(compiled_config),
                        "--run-dir", str(c_dir)], {**env, "TORCHINDUCTOR_CACHE_DIR": str(cache)})
        if n:
            runs["plain"].append(p)
            runs["teacher"].append({**t, **run_figures(t_dir)})
            if c is not None:
                runs["compiled"].append({**c, **run_figures(c_dir)})
    ratios = [p["wall_s"] / t["wall_s"] for p, t in zip(runs["plain"], runs["teacher"])]
    med = {side: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "user_s", "sys_s")} for side, rs in runs.items()}
    out = {"config": spec, "runs": runs, "median": med,
           "throughput_ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}}
    if compile_cache:
        out["compile"] = {"cache": compile_cache, **compile_summary(runs)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", choices=sorted(CONFIGS))
    ap.add_argument("--compile", action="store_true", help="also run teacher with runtime.compile: true")
    ap.add_argument("--compile-cache", choices=("cold", "warm"), default="cold",
                    help="compiled runs: an empty TorchInductor cache each (cold) or one shared (warm)")
    args = ap.parse_args()
    out = {"bench": "train_throughput", "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "reps": args.reps,
           "loadavg_before": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for name, spec in CONFIGS.items():
            if args.only in (None, name):
                out[name] = bench_config(name, spec, Path(tmp), args.reps, args.compile_cache if args.compile else None)
    out["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("train_throughput_compile.json" if args.compile else "train_throughput.json")).write_text(
        json.dumps(out, indent=2))
    print("| config | teacher throughput / plain loop (median [min, max]) | wall s plain / teacher | user s | sys s |")
    print("|---|---|---|---|---|")
    for name in CONFIGS:
        if name in out:
            r, m = out[name]["throughput_ratio"], out[name]["median"]
            print(f"| {name} | {r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}] | {m['plain']['wall_s']:.1f} / "
                  f"{m['teacher']['wall_s']:.1f} | {m['plain']['user_s']:.1f} / {m['teacher']['user_s']:.1f} | "
                  f"{m['plain']['sys_s']:.1f} / {m['teacher']['sys_s']:.1f} |")
    if args.compile:
        print(f"\nruntime.compile: true against false ({args.compile_cache} TorchInductor cache; epochs 2+ are steady)\n")
        print("| config | first step s | first eval batch s | epoch 1 s teacher / compiled | steady img/s teacher / "
              "compiled | steady ratio compiled/teacher (median [min, max]) | best steady epochs compiled/teacher | "
              "wall ratio teacher/compiled |")
        print("|---|---|---|---|---|---|---|---|")
        for name in CONFIGS:
            if name in out:
                c = out[name]["compile"]
                r = c["steady_ratio"]
                print(f"| {name} | {c['first_step_s']:.1f} | {c['first_eval_batch_s']:.1f} | {c['epoch1_s']['teacher']:.1f} / "
                      f"{c['epoch1_s']['compiled']:.1f} | {c['steady_throughput']['teacher']:.1f} / "
                      f"{c['steady_throughput']['compiled']:.1f} | {r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}] | "
                      f"{c['steady_best_ratio']:.3f} | {c['wall_ratio']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
