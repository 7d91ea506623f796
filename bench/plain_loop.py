"""The baseline for training throughput: a plain PyTorch loop written the way users write one.

Same data (an ImageFolder tree), transforms, model, optimizer, schedule and batch as the
`teacher train` config it is compared with; one eval pass and one ``torch.save`` checkpoint per
epoch; ``loss.item()`` every step. Nothing else: no metrics files, no integrity checks, no
verified manifest. It is the limit `teacher train` is measured against (bench/train_throughput.py).

On a GPU it is the usual AMP loop: ``--amp bf16`` (torch.autocast) or ``--amp fp16`` (autocast
and a GradScaler), ``--channels-last`` (model and batches), ``--pin-memory`` (with
``non_blocking`` copies), ``--persistent-workers`` and ``--prefetch N`` (DataLoader options, with
``--workers`` > 0). These are the settings `teacher train` derives from ``runtime.device``,
``runtime.amp`` and ``runtime.channels_last`` (worker/training/engine.py ``resolve_runtime``:
autocast around the forward pass, the loss in float32, a GradScaler only for fp16). The defaults
(CPU, fp32, none of the options) are the loop as it always was.

    python -m bench.plain_loop --data DIR --arch resnet18 --size 32 --epochs 3 --batch 64 --out DIR
    python -m bench.plain_loop --data DIR --arch resnet50 --size 224 --batch 128 --workers 12 --out DIR \\
        --device cuda --amp bf16 --channels-last --pin-memory --persistent-workers
"""
from __future__ import annotations

import argparse
import contextlib
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader
from torchvision.transforms import v2 as T

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--amp", choices=sorted(AMP_DTYPES), default="off", help="autocast dtype (fp16 adds a GradScaler)")
    ap.add_argument("--channels-last", action="store_true", help="model and input batches in channels_last")
    ap.add_argument("--pin-memory", action="store_true", help="DataLoader pin_memory, non_blocking copies")
    ap.add_argument("--persistent-workers", action="store_true", help="DataLoader persistent_workers (--workers > 0)")
    ap.add_argument("--prefetch", type=int, default=None, help="DataLoader prefetch_factor (--workers > 0)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if (args.persistent_workers or args.prefetch is not None) and args.workers == 0:
        ap.error("--persistent-workers and --prefetch need --workers > 0")
    device = torch.device(args.device)
    amp_dtype = AMP_DTYPES[args.amp]
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    tail = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)]
    train_tf = T.Compose([T.RandomResizedCrop(args.size, scale=(0.6, 1.0), antialias=True), T.RandomHorizontalFlip(), *tail])
    val_tf = T.Compose([T.Resize(args.size, antialias=True), T.CenterCrop(args.size), *tail])
    train_ds = torchvision.datasets.ImageFolder(str(args.data / "train"), train_tf)
    val_ds = torchvision.datasets.ImageFolder(str(args.data / "val"), val_tf)
    # DataLoader's own defaults when the flags are not given (prefetch_factor None: its default)
    loader_kw = {"num_workers": args.workers, "pin_memory": args.pin_memory,
                 "persistent_workers": args.persistent_workers, "prefetch_factor": args.prefetch}
    train = DataLoader(train_ds, batch_size=args.batch, shuffle=True, **loader_kw)
    val = DataLoader(val_ds, batch_size=args.batch, **loader_kw)
    model = getattr(torchvision.models, args.arch)(num_classes=len(train_ds.classes))
    model = model.to(device, memory_format=memory_format)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    total = args.epochs * len(train)
    warmup = int(0.5 * len(train))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()

    def to_device(images, targets):  # on the CPU, without channels_last, these return the tensors themselves
        return (images.to(device, non_blocking=args.pin_memory, memory_format=memory_format),
                targets.to(device, non_blocking=args.pin_memory))

    args.out.mkdir(parents=True, exist_ok=True)
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        for images, targets in train:
            images, targets = to_device(images, targets)
            with autocast():
                loss = F.cross_entropy(model(images), targets)
            opt.zero_grad()
            scaler.scale(loss).backward()  # a disabled scaler returns the loss as it is
            scaler.step(opt)  # and calls opt.step()
            scaler.update()
            sched.step()
            loss_sum += loss.item() * len(targets)
            seen += len(targets)
        train_s = time.perf_counter() - t0  # loss.item() waited for the last step on the device
        model.eval()
        correct = n = 0
        with torch.no_grad():
            for images, targets in val:
                images, targets = to_device(images, targets)
                with autocast():
                    correct += (model(images).argmax(1) == targets).sum().item()
                n += len(targets)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch},
                   args.out / f"epoch_{epoch}.pt")
        # img/s over the whole epoch (training, eval, save) as always; then the training pass alone
        print(f"epoch {epoch}: loss {loss_sum / seen:.4f} val top1 {100 * correct / n:.2f}% "
              f"{seen / (time.perf_counter() - t0):.1f} img/s, train {seen / train_s:.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
