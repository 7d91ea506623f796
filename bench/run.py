"""Run every benchmark module and print its results: ``python -m bench.run [NAME ...]``.

Each module runs as ``python -m bench.<name>`` in its own process, so one benchmark's memory
and imports (torch, matplotlib) do not skew another's numbers. Each writes its JSON to
bench/results/ and prints it.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

# Modules that are not present (yet) are skipped with a note.
BENCHES: tuple[str, ...] = ("bench.plot_stream", "bench.metrics_sync", "bench.polls", "bench.train_throughput",
                             "bench.step_checkpoints", "bench.analyze_big", "bench.processes", "bench.ui_pages",
                             "bench.decode_options")
ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    selected = [b for b in BENCHES if not argv or b.split(".")[-1] in argv]
    if not selected:
        print(f"unknown benchmark(s) {argv}; available: {', '.join(b.split('.')[-1] for b in BENCHES)}", file=sys.stderr)
        return 2
    failed = []
    for name in selected:
        if importlib.util.find_spec(name) is None:
            print(f"== {name}: not present, skipped", flush=True)
            continue
        print(f"== {name}", flush=True)
        done = subprocess.run([sys.executable, "-m", name], cwd=ROOT)
        if done.returncode != 0:
            failed.append(name)
            print(f"== {name} failed with exit status {done.returncode}", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
