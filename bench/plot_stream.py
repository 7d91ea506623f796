"""Plotting a long step stream: naive (all points, list of dicts) vs ours (numpy columns read in
chunks, min/max downsampling).

Timing is split into reading (parsing JSON lines dominates both) and drawing (where
downsampling pays). Each variant runs in its own subprocess so that peak RSS (ru_maxrss) is its own; a second
subprocess per variant measures the Python-heap peak with tracemalloc (it slows the run, so
wall time comes from the first). Size: BENCH_POINTS (default 2,000,000 records).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_POINTS = 2_000_000
# The stated bound: drawing a 2,000,000-point stream our way grows the process's peak RSS by at
# most this much (numpy columns + one figure). Checked and reported here, never in a test.
MEMORY_BOUND_MB = 512
STEPS_PER_EPOCH = 10_000


def generate(path: Path, n: int) -> None:
    """A steps.jsonl with n train records, running sums per epoch, and a few loss spikes."""
    with path.open("w", encoding="utf-8") as handle:
        loss_sum = 0.0
        lines = []
        for i in range(1, n + 1):
            epoch = (i - 1) // STEPS_PER_EPOCH + 1
            batch = (i - 1) % STEPS_PER_EPOCH + 1
            if batch == 1:
                loss_sum = 0.0
            loss = 3.0 / (1 + i / 2e5) + (25.0 if i % 400_009 == 0 else 0.0)
            loss_sum += loss * 64
            lines.append(f'{{"split": "train", "epoch": {epoch}, "batch": {batch}, "step": {i}, "samples": {batch * 64}, '
                         f'"loss_sum": {loss_sum:.4f}, "correct1": 0, "correct5": 0, "lr": 0.1, "throughput": 500.0, '
                         f'"time": {i}, "final": {"true" if batch == STEPS_PER_EPOCH else "false"}}}\n')
            if len(lines) >= 50_000:
                handle.writelines(lines)
                lines.clear()
        handle.writelines(lines)


def plot_naive(src: Path, out: Path) -> tuple[int, float]:
    """What a script would do: every record as a dict, every point drawn.
    Returns (points, seconds spent reading)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = time.perf_counter()
    with src.open(encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    steps, losses = [], []
    prev_epoch, prev_sum, prev_n = None, 0.0, 0
    for r in records:
        if r["split"] != "train":
            continue
        if r["epoch"] != prev_epoch:
            prev_epoch, prev_sum, prev_n = r["epoch"], 0.0, 0
        losses.append((r["loss_sum"] - prev_sum) / (r["samples"] - prev_n))
        steps.append(r["step"])
        prev_sum, prev_n = r["loss_sum"], r["samples"]
    read_s = time.perf_counter() - start
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(steps, losses, lw=0.6)
    fig.savefig(out)
    plt.close(fig)
    return len(steps), read_s


def plot_ours(src: Path, out: Path) -> tuple[int, float]:
    from common.analysis.plots import plot_step_loss
    from common.analysis.steps_reader import read_steps_jsonl

    start = time.perf_counter()
    stream = read_steps_jsonl(src).steps["step.train_loss"]
    read_s = time.perf_counter() - start
    plot_step_loss(stream, [], out)
    return len(stream), read_s


VARIANTS = {"naive": plot_naive, "ours": plot_ours}


def measure(variant: str, src: Path, out: Path, trace: bool) -> dict:
    """Runs inside the child process."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  (import cost is not what we measure)
    import numpy  # noqa: F401

    import common.analysis.plots  # noqa: F401

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    points, read_s = VARIANTS[variant](src, out)
    wall = time.perf_counter() - start
    result = {"variant": variant, "points": points, "wall_s": round(wall, 3), "read_s": round(read_s, 3),
              "draw_s": round(wall - read_s, 3),
              "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "maxrss_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024, 1)}
    if trace:
        result["tracemalloc_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        tracemalloc.stop()
    return result


def run_child(variant: str, src: Path, out: Path, trace: bool) -> dict:
    cmd = [sys.executable, "-m", "bench.plot_stream", "--child", variant, "--input", str(src), "--out", str(out)]
    if trace:
        cmd.append("--trace")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(points: int | None = None) -> dict:
    n = points or int(os.environ.get("BENCH_POINTS", DEFAULT_POINTS))
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "steps.jsonl"
        generate(src, n)
        results = {}
        for variant in VARIANTS:
            timed = run_child(variant, src, RESULTS / f"plot_stream_{variant}.png", trace=False)
            traced = run_child(variant, src, Path(tmp) / f"{variant}_traced.png", trace=True)
            timed["tracemalloc_peak_mb"] = traced["tracemalloc_peak_mb"]
            results[variant] = timed
    naive, ours = results["naive"], results["ours"]
    summary = {
        "benchmark": "plot_stream", "points": n, "naive": naive, "ours": ours,
        "ratios_naive_over_ours": {
            key: round(naive[key] / ours[key], 2) if ours[key] else None
            for key in ("wall_s", "read_s", "draw_s", "maxrss_growth_mb", "tracemalloc_peak_mb")
        },
    }
    summary["memory_bound_mb"] = MEMORY_BOUND_MB
    summary["within_memory_bound"] = ours["maxrss_growth_mb"] <= MEMORY_BOUND_MB
    (RESULTS / "plot_stream.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", choices=sorted(VARIANTS))
    parser.add_argument("--input", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--points", type=int, default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.input, args.out, args.trace)))
    else:
        print(json.dumps(run(args.points), indent=2))


if __name__ == "__main__":
    main()
