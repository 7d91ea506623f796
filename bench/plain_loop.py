"""The baseline for training throughput: a plain PyTorch loop written the way users write one.

Same data (an ImageFolder tree), transforms, model, optimizer, schedule and batch as the
`teacher train` config it is compared with; one eval pass and one ``torch.save`` checkpoint per
epoch; ``loss.item()`` every step. Nothing else: no metrics files, no integrity checks, no
verified manifest. It is the limit `teacher train` is measured against (bench/train_throughput.py).

    python -m bench.plain_loop --data DIR --arch resnet18 --size 32 --epochs 3 --batch 64 --out DIR
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader
from torchvision.transforms import v2 as T

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    tail = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)]
    train_tf = T.Compose([T.RandomResizedCrop(args.size, scale=(0.6, 1.0), antialias=True), T.RandomHorizontalFlip(), *tail])
    val_tf = T.Compose([T.Resize(args.size, antialias=True), T.CenterCrop(args.size), *tail])
    train_ds = torchvision.datasets.ImageFolder(str(args.data / "train"), train_tf)
    val_ds = torchvision.datasets.ImageFolder(str(args.data / "val"), val_tf)
    train = DataLoader(train_ds, batch_size=args.batch, shuffle=True, num_workers=args.workers)
    val = DataLoader(val_ds, batch_size=args.batch, num_workers=args.workers)
    model = getattr(torchvision.models, args.arch)(num_classes=len(train_ds.classes))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    total = args.epochs * len(train)
    warmup = int(0.5 * len(train))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    args.out.mkdir(parents=True, exist_ok=True)
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        for images, targets in train:
            loss = F.cross_entropy(model(images), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(targets)
            seen += len(targets)
        model.eval()
        correct = n = 0
        with torch.no_grad():
            for images, targets in val:
                correct += (model(images).argmax(1) == targets).sum().item()
                n += len(targets)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch},
                   args.out / f"epoch_{epoch}.pt")
        print(f"epoch {epoch}: loss {loss_sum / seen:.4f} val top1 {100 * correct / n:.2f}% "
              f"{seen / (time.perf_counter() - t0):.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
