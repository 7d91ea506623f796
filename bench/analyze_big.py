"""Benchmark: `teacher analyze` on big logs, time and peak memory, against TensorBoard's own loader.

* a TensorBoard event file with ``--steps`` steps (default 1,000,000) of ``train/loss`` and
  ``train/lr``, plus per-epoch ``val/loss`` and ``val/top1``: `teacher analyze --no-plots` against
  ``EventAccumulator(size_guidance={SCALARS: 0}).Reload()`` reading every scalar, the baseline;
* a console log of ``--console-mb`` MB (default 200) in the pytorch/examples format
  (``Epoch: [e][ i/n] ... Loss ... Acc@1 ...`` lines and `` * Acc@1 ... Acc@5 ...`` summaries):
  `teacher analyze --no-plots` alone (there is no standard loader to compare with).

Each side runs in its own process (peak RSS is that process's ``ru_maxrss``), alternating,
``--reps`` times; median wall time and peak memory. ``--only console`` (or ``tensorboard``) writes and
measures one part only (the console part needs no TensorBoard install). The 1-minute load average
before and after is printed and saved: the machine may be shared.

    python -m bench.analyze_big [--steps 1000000] [--console-mb 200] [--reps 2] [--only console|tensorboard]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# Runs a module (or a script, ``run_path``) as __main__ and prints its peak RSS (kB) last on stderr.
_PEAK = ("import resource, runpy, sys\n"
         "sys.argv = sys.argv[1:]\n"
         "try:\n    runpy.{run}\n"
         "except SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
         "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
         "sys.exit(code)\n")
PEAK_MODULE = _PEAK.format(run="run_module(sys.argv[0], run_name='__main__', alter_sys=True)")
PEAK_SCRIPT = _PEAK.format(run="run_path(sys.argv[0], run_name='__main__')")
_ACCUMULATOR = ("import sys\n"
                "from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator\n"
                "acc = EventAccumulator(sys.argv[1], size_guidance={SCALARS: 0}); acc.Reload()\n"
                "n = sum(len(acc.Scalars(t)) for t in acc.Tags()['scalars'])\n"
                "print(n, 'scalars')\n")


def write_events(path: Path, steps: int, epochs: int = 100) -> None:
    """An event file as SummaryWriter writes one, built from the protos directly (fast)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    def event(step: int, tag: str, value: float) -> bytes:
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
        return event_pb2.Event(wall_time=1.7e9 + step * 0.01, step=step, summary=summary).SerializeToString()

    per_epoch = max(1, steps // epochs)
    with open(path, "wb") as fh:
        w = RecordWriter(fh)
        w.write(event_pb2.Event(wall_time=1.7e9, file_version="brain.Event:2").SerializeToString())
        for step in range(1, steps + 1):
            w.write(event(step, "step/train_loss", 9.0 * 0.999999 ** step))
            w.write(event(step, "step/lr", 0.1))
            if step % per_epoch == 0:
                w.write(event(step, "val/loss", 9.0 * 0.99 ** (step // per_epoch)))
                w.write(event(step, "val/top1", min(90.0, step // per_epoch * 1.0)))
        w.flush()


def write_console(path: Path, megabytes: int, batches: int = 5005) -> None:
    target = megabytes * 1_000_000
    with open(path, "w") as fh:
        epoch = 0
        while fh.tell() < target:
            for i in range(0, batches, 10):
                loss = 6.9 * 0.97 ** epoch
                fh.write(f"Epoch: [{epoch}][{i:4d}/{batches}]\tTime  0.512 ( 0.530)\tData  0.001 ( 0.002)\t"
                         f"Loss {loss:.4e} ({loss:.4e})\tAcc@1  {epoch:6.2f} ({epoch:6.2f})\tAcc@5  {min(99, 3 * epoch):6.2f} "
                         f"({min(99, 3 * epoch):6.2f})\n")
            fh.write(f" * Acc@1 {min(76.0, epoch * 1.5):.3f} Acc@5 {min(93.0, epoch * 2.5):.3f}\n")
            epoch += 1


def measure(argv: list[str]) -> dict[str, float]:
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak = next((int(line.split()[1]) for line in reversed(done.stderr.splitlines()) if line.startswith("PEAK_KB")), 0)
    if done.returncode not in (0, 1):  # 1: the report's verdict is fail (fine for a benchmark)
        raise RuntimeError(f"{argv} exited {done.returncode}: {done.stderr[-2000:]}")
    return {"wall_s": wall, "peak_mb": peak / 1024, "rc": done.returncode}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--console-mb", type=int, default=200)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--only", choices=PARTS, help="run one part (default: both)")
    args = ap.parse_args()
    parts = (args.only,) if args.only else PARTS
    out: dict[str, object] = {"bench": "analyze_big", "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                              "loadavg_before": os.getloadavg()[0], "parts": list(parts)}
    with tempfile.TemporaryDirectory(prefix="bench-analyze-") as tmp:
        runs = run_parts(Path(tmp), parts, args, out)
    out["runs"] = runs
    out["loadavg_after"] = os.getloadavg()[0]
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall_s", "peak_mb")} for k, v in runs.items()}
    out["median"] = med
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"analyze_big{'_' + args.only if args.only else ''}.json").write_text(json.dumps(out, indent=2))
    print_table(out, med, args)
    return 0


PARTS = ("tensorboard", "console")


def run_parts(work: Path, parts: tuple[str, ...], args: argparse.Namespace,
              out: dict[str, object]) -> dict[str, list[dict[str, float]]]:
    """Writes the inputs of the chosen parts, then measures each side ``args.reps`` times, alternating."""
    py = sys.executable
    sides: dict[str, list[str]] = {}
    if "tensorboard" in parts:
        tb = work / "tb"
        tb.mkdir()
        write_events(tb / "events.out.tfevents.1700000000.bench", args.steps)
        out["steps"] = args.steps
        out["event_file_mb"] = (tb / "events.out.tfevents.1700000000.bench").stat().st_size / 1e6
        script = work / "accumulator.py"
        script.write_text(_ACCUMULATOR)
        sides["teacher_tb"] = [py, "-c", PEAK_MODULE, "common.apps.cli", "analyze", "--no-plots",
                               "--num-classes", "1000", "--out", str(work / "a"), str(tb)]
        sides["event_accumulator"] = [py, "-c", PEAK_SCRIPT, str(script), str(tb)]
    if "console" in parts:
        console = work / "console.log"
        write_console(console, args.console_mb)
        out["console_mb"] = args.console_mb
        sides["teacher_console"] = [py, "-c", PEAK_MODULE, "common.apps.cli", "analyze", "--no-plots",
                                    "--num-classes", "1000", "--out", str(work / "c"), str(console)]
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
    for _ in range(args.reps):
        for key, argv in sides.items():
            runs[key].append(measure(argv))
    return runs


def print_table(out: dict[str, object], med: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print(f"| input | reader | wall s (median of {args.reps}) | peak RSS MB |")
    print("|---|---|---|---|")
    if "teacher_tb" in med:
        print(f"| TensorBoard, {args.steps:,} steps ({out['event_file_mb']:.0f} MB) | teacher analyze | "
              f"{med['teacher_tb']['wall_s']:.1f} | {med['teacher_tb']['peak_mb']:.0f} |")
        print(f"| same | EventAccumulator (baseline) | {med['event_accumulator']['wall_s']:.1f} | "
              f"{med['event_accumulator']['peak_mb']:.0f} |")
    if "teacher_console" in med:
        print(f"| console log, {args.console_mb} MB | teacher analyze | {med['teacher_console']['wall_s']:.1f} | "
              f"{med['teacher_console']['peak_mb']:.0f} |")
    print(f"load average (1 min) before {out['loadavg_before']:.2f}, after {out['loadavg_after']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
