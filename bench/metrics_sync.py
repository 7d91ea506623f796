"""Benchmark: exact metric accounting on the device vs the common per-step ``.item()`` habit.

Both variants run the same forward/backward steps of a small CNN; the baseline adds
``loss.item()`` and an accuracy ``.item()`` every step (one host sync each), ours adds
:class:`MetricSums.update` and syncs once per log interval. Reported as a ratio of
images/second, measured side by side in one process. On a CPU the two are close (there is no
asynchronous device to wait for); on a GPU the per-step sync stalls the launch queue.

    python -m bench.metrics_sync [--device cuda] [--steps 200]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from worker.training.metrics import MetricSums, topk_correct


def run(device: str, steps: int, batch: int, size: int, variant: str, log_interval: int = 50) -> float:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=100).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 100, (batch,), device=device)
    sums = MetricSums(device)
    host_loss = host_correct = 0.0

    def step(i: int) -> None:
        nonlocal host_loss, host_correct
        logits = model(x)
        per_sample = F.cross_entropy(logits, y, reduction="none")
        per_sample.mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if variant == "item_per_step":
            host_loss += per_sample.sum().item()  # a device->host sync every step
            host_correct += topk_correct(logits.detach(), y, 1).sum().item()
        else:
            sums.update(per_sample, logits, y)
            if (i + 1) % log_interval == 0:
                sums.totals()  # one sync per interval

    for i in range(5):  # warm-up (cuDNN autotuning, allocator)
        step(i)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    sums.totals()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("bench/results/metrics_sync.json"))
    args = ap.parse_args()
    cuda = args.device == "cuda"
    steps = args.steps or (300 if cuda else 20)
    batch, size = (64, 32) if cuda else (16, 32)
    results = {}
    for rep in range(2):  # alternate to spread drift over both variants
        for variant in ("item_per_step", "device_sums"):
            results.setdefault(variant, []).append(run(args.device, steps, batch, size, variant))
    best = {k: max(v) for k, v in results.items()}
    out = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "images_per_s": best,
        "ratio_device_sums_over_item_per_step": best["device_sums"] / best["item_per_step"],
        "steps": steps, "batch": batch, "image_size": size,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
