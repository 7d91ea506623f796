"""Benchmark: `teacher train` against the plain PyTorch loop (bench/plain_loop.py), whole processes.

Same generated data, transforms, model, optimizer, schedule and batch; alternating pairs
(plain, teacher), ``--reps`` of them; the figure is the throughput ratio (plain wall time /
teacher wall time: 1.0 = as fast as the plain loop), median and spread, with user and system
CPU of each side. Two configs:

* ``small``: resnet18 at 32 px, 1,200 training images, 3 epochs, AdamW, batch 64 (issue 14's);
* ``big-checkpoint``: resnet50 at 32 px, 240 training images, 3 epochs: a ~95 MB checkpoint
  each epoch against a few seconds of training, where checkpoint I/O weighs most;
* ``resnet50-224``: resnet50 at 224 px (generated at 256 px), 24 classes x 192 training images
  (4,608: 36 full batches of 128, and 384 validation images, 3 batches, so that a compiled run
  has no smaller last batch to recompile for), 3 epochs, DataLoader workers: every CPU but two, at
  most 12. Meant for a GPU (``--device cuda``); runs only when ``--only resnet50-224`` names it.

Besides the whole-process ratio, each pair gives the ratio of the steady training passes
(epochs 2 and later: teacher's history.json ``train.throughput`` against the plain loop's
``train ... img/s``), which leaves out the fixed costs (imports, set-up, checkpoints, export).

``--device cuda`` runs both sides on the GPU: teacher with ``--set runtime.device=cuda --set
runtime.amp=<--amp> --set runtime.channels_last=on|off``, the plain loop with ``--device cuda
--amp <--amp> [--channels-last] --pin-memory`` (teacher pins memory on CUDA) and the DataLoader
options teacher's loader uses (persistent workers where num_workers > 0). ``--smoke`` shrinks the
chosen configs to a few seconds on a CPU (to test the bench, not to measure).

With ``--compile`` each rep also runs ``teacher train`` with ``runtime.compile: true``
(torch.compile, TorchInductor) on the same config, right after the uncompiled one: the figures
are its first (compiling) training step and evaluation batch, its epoch 1 (which holds every
compile: the first step, the smaller last batch's recompile with a dynamic batch dimension, and
evaluation's) and the throughput of the later, steady epochs, against the uncompiled run's.
``--compile-cache cold`` (the default) gives each compiled run an empty TorchInductor cache (a
fresh host, or a new architecture or image size); ``warm`` shares one across the bench's runs,
filled by the uncounted first rep (a host that compiled this model before).

    python -m bench.train_throughput [--reps 3] [--only small] [--compile [--compile-cache cold|warm]]
    python -m bench.train_throughput --device cuda --amp bf16 --channels-last --only resnet50-224 --reps 2
"""
from __future__ import annotations

import argparse
import contextlib
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
# Defaults of a config: 12 classes of 32-px images at 32 px, batch 64, no DataLoader workers.
BASE = {"classes": 12, "val_per_class": 15, "data_size": 32, "image_size": 32, "batch": 64, "workers": 0}
CONFIGS = {
    "small": {"arch": "resnet18", "train_per_class": 100, "epochs": 3},
    "big-checkpoint": {"arch": "resnet50", "train_per_class": 20, "epochs": 3},
    "resnet50-224": {"arch": "resnet50", "train_per_class": 192, "epochs": 3, "classes": 24, "val_per_class": 16,
                     "data_size": 256, "image_size": 224, "batch": 128, "workers": "auto"},
}
DEFAULT_CONFIGS = ("small", "big-checkpoint")  # what runs without --only (resnet50-224 is for a GPU)
SMOKE = {"arch": "resnet18", "train_per_class": 8, "val_per_class": 4, "classes": 4, "data_size": 40, "image_size": 32, "batch": 16,
         "epochs": 2}
PLAIN_TRAIN_RE = re.compile(r"^epoch (\d+): .* train ([0-9.]+) img/s", re.M)


def loader_workers(spec: dict) -> int:
    """``auto``: every CPU but two (the training process and its pin-memory thread), at most 12."""
    if spec["workers"] == "auto":
        return max(1, min(12, (os.cpu_count() or 1) - 2))
    return int(spec["workers"])


def steady_ratio(plain: dict, teacher: dict) -> float | None:
    """Teacher's steady training pass over the plain loop's (medians of epochs 2+), or None
    with a single epoch."""
    p, t = plain.get("train_throughput", [])[1:], teacher.get("train_throughput", [])[1:]
    return statistics.median(t) / statistics.median(p) if p and t else None


def _spread(xs: list[float]) -> dict[str, float] | None:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)} if xs else None


def _timed(argv: list[str], env: dict[str, str]) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        done.check_returncode()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": wall, "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime,
            "stdout": done.stdout}


def plain_figures(timed: dict) -> dict:
    """The plain loop's run: its timings and each epoch's training-pass throughput (its stdout)."""
    out = {k: v for k, v in timed.items() if k != "stdout"}
    out["train_throughput"] = [float(m[2]) for m in PLAIN_TRAIN_RE.finditer(timed["stdout"])]
    return out


def teacher_figures(timed: dict, run_dir: Path) -> dict:
    return {**{k: v for k, v in timed.items() if k != "stdout"}, **run_figures(run_dir)}


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


def device_args(device: str, amp: str, channels_last: bool, workers: int) -> tuple[list[str], list[str]]:
    """The extra arguments of (teacher train, the plain loop): the DataLoader options teacher's
    loader uses (none without workers: the CPU configs' runs as they always were), and on CUDA
    the same AMP, memory format and pinned memory on both sides."""
    loader = ["--persistent-workers"] if workers and teacher_persistent_workers(workers) else []
    if device == "cpu":
        return [], loader
    teacher = ["--set", "runtime.device=cuda", "--set", f"runtime.amp={amp}",
               "--set", f"runtime.channels_last={'on' if channels_last else 'off'}"]
    plain = ["--device", "cuda", "--amp", amp, *(["--channels-last"] if channels_last else []), "--pin-memory", *loader]
    return teacher, plain


def teacher_persistent_workers(workers: int) -> bool:
    """Whether teacher's loader keeps its ``workers`` between epochs (worker/training/data.py
    build_loader; constructing a DataLoader starts no worker), so the plain loop's gets the same."""
    from worker.training import data

    return data.build_loader([0], data.EpochSampler(1, shuffle=False, seed=0), batch_size=1, num_workers=workers,
                             pin_memory=False, seed=0).persistent_workers


def bench_config(name: str, spec: dict, work: Path, reps: int, compile_cache: str | None = None, *,
                 device: str = "cpu", amp: str = "off", channels_last: bool = False) -> dict:
    from worker.training.synthetic import SyntheticSpec, make_dataset

    spec = {**BASE, **spec}
    workers = loader_workers(spec)
    data_root = work / name / "data"
    make_dataset(data_root / "synthetic", SyntheticSpec(num_classes=spec["classes"], train_per_class=spec["train_per_class"],
                                                        val_per_class=spec["val_per_class"], image_size=spec["data_size"]))
    cfg = {
        "name": f"bench-{name}", "model": {"arch": spec["arch"]},
        "data": {"format": "imagefolder", "root": "synthetic", "image_size": spec["image_size"], "augment": True},
        "optim": {"epochs": spec["epochs"], "batch_size": spec["batch"], "optimizer": "adamw", "lr": 0.001,
                  "weight_decay": 0.05, "scheduler": "cosine", "warmup_epochs": 0.5, "seed": 0},
        "runtime": {"device": "cpu", "num_workers": workers},
    }
    config = work / name / "config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    compiled_config = work / name / "config-compiled.yaml"
    cfg["runtime"]["compile"] = True
    compiled_config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    env.update(TEACHER_DATA_ROOT=str(data_root), TEACHER_RUNS_ROOT=str(work / name), TEACHER_LOG_FORMAT="text")
    teacher_dev, plain_dev = device_args(device, amp, channels_last, workers)
    plain = [sys.executable, "-m", "bench.plain_loop", "--data", str(data_root / "synthetic"), "--arch", spec["arch"],
             "--size", str(spec["image_size"]), "--epochs", str(spec["epochs"]), "--batch", str(spec["batch"]),
             *(["--workers", str(workers)] if workers else []), *plain_dev]
    runs: dict[str, list[dict]] = {"plain": [], "teacher": [], **({"compiled": []} if compile_cache else {})}
    for n in range(reps + 1):  # the first pair (or triple) warms caches and is not counted
        p = _timed([*plain, "--out", str(work / name / f"plain-{n}")], env)
        t_dir = work / name / f"teacher-{n}"
        t = _timed([sys.executable, "-m", "common.apps.cli", "train", "--config", str(config), "--run-dir", str(t_dir),
                    *teacher_dev], env)
        c = None
        if compile_cache and (n or compile_cache == "warm"):  # a cold cache needs no warm-up run
            cache = work / name / ("inductor-cache" if compile_cache == "warm" else f"inductor-cache-{n}")
            c_dir = work / name / f"compiled-{n}"
            c = _timed([sys.executable, "-m", "common.apps.cli", "train", "--config", str(compiled_config),
                        "--run-dir", str(c_dir), *teacher_dev], {**env, "TORCHINDUCTOR_CACHE_DIR": str(cache)})
        if n:
            runs["plain"].append(plain_figures(p))
            runs["teacher"].append(teacher_figures(t, t_dir))
            if c is not None:
                runs["compiled"].append(teacher_figures(c, c_dir))
    ratios = [p["wall_s"] / t["wall_s"] for p, t in zip(runs["plain"], runs["teacher"])]
    steady = [r for r in (steady_ratio(p, t) for p, t in zip(runs["plain"], runs["teacher"])) if r is not None]
    med = {side: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "user_s", "sys_s")} for side, rs in runs.items()}
    out = {"config": {**spec, "workers": workers}, "device": device,
           **({"amp": amp, "channels_last": channels_last} if device != "cpu" else {}),
           "teacher_args": teacher_dev, "plain_args": plain[3:], "runs": runs, "median": med,
           "throughput_ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
           "steady_train_ratio": _spread(steady)}
    if compile_cache:
        out["compile"] = {"cache": compile_cache, **compile_summary(runs)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", choices=sorted(CONFIGS), help=f"one config (default: {', '.join(DEFAULT_CONFIGS)})")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off", help="with --device cuda: both sides' AMP")
    ap.add_argument("--channels-last", action="store_true", help="with --device cuda: both sides in channels_last")
    ap.add_argument("--smoke", action="store_true", help="tiny versions of the configs (tests the bench; no figures)")
    ap.add_argument("--out", type=Path, help="the JSON file (default: bench/results/train_throughput[_compile].json)")
    ap.add_argument("--work", type=Path, help="keep the data, configs and runs in this folder (default: a temporary one); "
                                              "<work>/<config>/config-compiled.yaml is the same config compiled")
    ap.add_argument("--compile", action="store_true", help="also run teacher with runtime.compile: true")
    ap.add_argument("--compile-cache", choices=("cold", "warm"), default="cold",
                    help="compiled runs: an empty TorchInductor cache each (cold) or one shared (warm)")
    args = ap.parse_args()
    if args.device == "cpu" and (args.amp != "off" or args.channels_last):
        ap.error("--amp and --channels-last are for --device cuda (teacher makes them no-ops on the CPU)")
    out = {"bench": "train_throughput", "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "reps": args.reps,
           "device": args.device, **({"smoke": True} if args.smoke else {}),
           "loadavg_before": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None}
    if args.device == "cuda":
        import torch

        out["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    with contextlib.ExitStack() as stack:
        if args.work:
            args.work.mkdir(parents=True, exist_ok=True)
        tmp = args.work or stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-train-"))
        for name, spec in CONFIGS.items():
            if (args.only or name in DEFAULT_CONFIGS) and args.only in (None, name):
                spec = {**spec, **SMOKE} if args.smoke else spec
                out[name] = bench_config(name, spec, Path(tmp), args.reps, args.compile_cache if args.compile else None,
                                         device=args.device, amp=args.amp, channels_last=args.channels_last)
    out["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    target = args.out or RESULTS / ("train_throughput_compile.json" if args.compile else "train_throughput.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=2))
    print("| config | teacher throughput / plain loop (median [min, max]) | wall s plain / teacher | user s | sys s | "
          "steady training pass teacher / plain (median [min, max]) |")
    print("|---|---|---|---|---|---|")
    for name in CONFIGS:
        if name in out:
            r, m, s = out[name]["throughput_ratio"], out[name]["median"], out[name]["steady_train_ratio"]
            print(f"| {name} | {r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}] | {m['plain']['wall_s']:.1f} / "
                  f"{m['teacher']['wall_s']:.1f} | {m['plain']['user_s']:.1f} / {m['teacher']['user_s']:.1f} | "
                  f"{m['plain']['sys_s']:.1f} / {m['teacher']['sys_s']:.1f} | "
                  + (f"{s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}] |" if s else "n/a |"))
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
