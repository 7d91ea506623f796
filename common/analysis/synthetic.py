"""Write a small, self-consistent run directory in our format (docs/run-directory.md).

Used by the tests, the benchmark and anyone who wants to see what a healthy report looks like.
Values are built from integer sums the way the trainer does it, so history.json, steps.jsonl
and train.log agree exactly (to the printed decimals for the log).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass
class SyntheticRun:
    epochs: int = 6
    num_classes: int = 12
    train_size: int = 960
    val_size: int = 240
    batch_size: int = 32
    log_interval: int = 10
    lr: float = 0.05
    val_loss_start: float = 2.4
    val_loss_end: float = 0.3

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.train_size / self.batch_size)

    def loss(self, split: str, epoch: int) -> float:
        """Geometric decay from start to end; training a little below validation."""
        t = (epoch - 1) / max(1, self.epochs - 1)
        val = self.val_loss_start * (self.val_loss_end / self.val_loss_start) ** t
        return val * (0.92 if split == "train" else 1.0)

    def accuracy(self, split: str, epoch: int, k: int) -> float:
        """Rises from near chance towards 95% (top-1) / 99% (top-5)."""
        t = epoch / self.epochs
        chance = min(k, self.num_classes) / self.num_classes
        ceiling = 0.95 if k == 1 else 0.99
        return chance + (ceiling - chance) * (1 - math.exp(-3 * t)) * (1.02 if split == "train" else 1.0)


def epoch_record(spec: SyntheticRun, split: str, epoch: int) -> dict:
    n = spec.train_size if split == "train" else spec.val_size
    loss_sum = round(spec.loss(split, epoch) * n, 3)
    c1 = min(n, round(spec.accuracy(split, epoch, 1) * n))
    c5 = max(c1, min(n, round(spec.accuracy(split, epoch, 5) * n)))
    return {"samples": n, "loss_sum": loss_sum, "correct1": c1, "correct5": c5}


def lr_at(spec: SyntheticRun, epoch: int) -> float:
    return spec.lr * 0.5 * (1 + math.cos(math.pi * epoch / spec.epochs))


def write_synthetic_run(run_dir: Path, spec: SyntheticRun | None = None) -> SyntheticRun:
    """Write config.yaml, history.json, steps.jsonl and train.log for a healthy run."""
    spec = spec or SyntheticRun()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(
        f"name: synthetic\nmodel:\n  arch: resnet18\n  num_classes: {spec.num_classes}\n"
        f"optim:\n  epochs: {spec.epochs}\n  batch_size: {spec.batch_size}\n  lr: {spec.lr}\n", encoding="utf-8")
    history = {"format": "teacher-history/1", "accuracy_unit": "percent", "num_classes": spec.num_classes,
               "class_names": [f"c{i}" for i in range(spec.num_classes)],
               "dataset_sizes": {"train": spec.train_size, "val": spec.val_size}, "epochs": []}
    steps_lines: list[str] = []
    log_lines: list[str] = []
    for epoch in range(1, spec.epochs + 1):
        step_end = epoch * spec.steps_per_epoch
        lr = lr_at(spec, epoch)
        throughput = 400.0 + epoch
        metrics = {}
        for split in ("train", "val"):
            final = epoch_record(spec, split, epoch)
            steps_lines.extend(step_records(spec, split, epoch, final, lr, throughput))
            n = final["samples"]
            metrics[split] = {"loss": final["loss_sum"] / n, "top1": 100 * final["correct1"] / n,
                              "top5": 100 * final["correct5"] / n, "samples": n}
        metrics["train"]["throughput"] = throughput
        history["epochs"].append({"epoch": epoch, "step": step_end, "lr": lr, "epoch_time_s": 2.4,
                                  **metrics, "nonfinite": {}})
        tr, va = metrics["train"], metrics["val"]
        prefix = f"2026-11-26 01:{epoch:02d}:00 INFO "  # as worker/training's logging formatter writes it
        log_lines.append(f"{prefix}Epoch {epoch}/{spec.epochs} [Train]: loss={tr['loss']:.4f}, top1={tr['top1']:.2f}%, "
                         f"top5={tr['top5']:.2f}%, samples={tr['samples']}, lr={lr:.6f}, {throughput:.1f} img/s")
        log_lines.append(f"{prefix}Epoch {epoch}/{spec.epochs} [Val]: loss={va['loss']:.4f}, top1={va['top1']:.2f}%, "
                         f"top5={va['top5']:.2f}%, samples={va['samples']}")
    (run_dir / "history.json").write_text(json.dumps(history, indent=1, allow_nan=False), encoding="utf-8")
    (run_dir / "steps.jsonl").write_text("\n".join(steps_lines) + "\n", encoding="utf-8")
    (run_dir / "train.log").write_text("\n".join(log_lines) + "\n", encoding="utf-8")
    return spec


def step_records(spec: SyntheticRun, split: str, epoch: int, final: dict, lr: float, throughput: float) -> list[str]:
    """Cumulative running sums at every log interval, ending in the exact final record."""
    n = final["samples"]
    batches = math.ceil(n / spec.batch_size)
    step0 = (epoch - 1) * spec.steps_per_epoch
    out = []
    marks = list(range(spec.log_interval, batches, spec.log_interval)) + [batches]
    for batch in marks:
        frac = min(1.0, batch * spec.batch_size / n)
        seen = n if batch == batches else batch * spec.batch_size
        record = {"split": split, "epoch": epoch, "batch": batch,
                  "step": step0 + (batch if split == "train" else spec.steps_per_epoch), "samples": seen,
                  "loss_sum": final["loss_sum"] if batch == batches else round(final["loss_sum"] * frac * 1.05, 3),
                  "correct1": final["correct1"] if batch == batches else int(final["correct1"] * frac),
                  "correct5": final["correct5"] if batch == batches else int(final["correct5"] * frac),
                  "lr": lr, "throughput": throughput, "time": 1764121212.5 + epoch, "final": batch == batches}
        out.append(json.dumps(record))
    return out
