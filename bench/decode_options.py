"""The input pipeline alone (no model): images/s out of a DataLoader for ImageNet-like JPEGs, by option.

Generates ``--images`` JPEGs of 500x375 (ImageNet's typical size) at quality 90 in a temporary
directory, smooth colour fields with texture and noise so that their size (~60-100 KB) and
decode cost are like photographs', and runs the training transform of
worker/training/data.py (``build_transforms(224, train=True, augment=True)``: RandomResizedCrop
224 with scale (0.6, 1), a flip, ToImage, ToDtype float32, Normalize) over them, batch ``--batch``,
in the key-seeded way teacher's dataset does it. Each variant runs two epochs in one DataLoader;
the figures are epoch 2's images/s (its start included) and steady images/s (after its first
batch), the time to the first batch of epochs 1 and 2 (worker start-up), and the gap between
epoch 1's last batch and epoch 2's first (what a training loop waits at each epoch boundary:
with fresh workers, shutting the old ones down and starting new ones).

Variants, side by side in one run (each repetition runs all of them, in a rotated order;
median and [min, max] over ``--reps``):

* ``pil``: PIL decodes (Image.open + convert RGB), as teacher's ImageListDataset; num_workers 0,
  2, 4, 8, ... up to the CPU count; persistent workers; prefetch_factor 2.
* ``tv-cpu``: ``torchvision.io.decode_jpeg`` on the CPU (a uint8 tensor), same transforms.
* at the most workers: ``persistent_workers`` off (epoch start cost) and prefetch_factor 4 and 8.
* ``tv-cuda`` (CUDA only): the workers read the files' bytes; the main process decodes the
  batch with ``decode_jpeg(list, device='cuda')`` and crops, flips and normalises on the GPU.
* ``pil-simd``: the ``pil`` variant under pillow-simd, when ``--simd-site DIR`` names a folder
  holding it (``pip install --target DIR pillow-simd``); it runs in a child interpreter with DIR
  first on its path, so the variant is timed in its own process.

Then the model's own consumption rate: ``--arch`` (resnet50) at 224 px, forward + backward +
AdamW step, images/s on the device (CUDA: bf16 autocast, channels_last, batch ``--model-batch``),
so the table says whether the input pipeline would be the bottleneck.

    python -m bench.decode_options [--images 384] [--reps 3] [--simd-site DIR] [--smoke]

JSON in bench/results/decode_options.json (or ``--out``), a markdown table on stdout.
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
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SIZE = 224


# ------------------------------------------------------------------------------------ the images
def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` 500x375 (or 375x500, one in four) JPEGs at quality 90."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = (500, 375) if i % 4 else (375, 500)
        base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        texture = Image.fromarray(rng.integers(0, 256, (h // 6, w // 6, 3), dtype=np.uint8)).resize((w, h), Image.BILINEAR)
        pixels = 0.75 * np.asarray(base, dtype=np.float32) + 0.25 * np.asarray(texture, dtype=np.float32)
        pixels += rng.normal(0, 6, pixels.shape)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


# -------------------------------------------------------------------------------- the datasets
class Jpegs(Dataset):
    """Keys are (index, seed), as teacher's EpochSampler yields them: the transform's randomness
    is seeded per sample (data.py ImageListDataset), so every variant does the same work."""

    def __init__(self, paths: list[Path], decode: str):
        from worker.training.data import build_transforms

        self.paths, self.decode = paths, decode
        self.transform = build_transforms(SIZE, train=True, augment=True)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, seed = key
        if self.decode == "tv-cuda":  # the bytes only; decoded in the main process, batched, on the GPU
            from torchvision.io import read_file

            return read_file(str(self.paths[i])), seed
        if self.decode == "tv-cpu":
            from torchvision.io import ImageReadMode, decode_jpeg, read_file

            image: Any = decode_jpeg(read_file(str(self.paths[i])), mode=ImageReadMode.RGB)
        else:
            with Image.open(self.paths[i]) as im:
                image = im.convert("RGB")
        outer = torch.get_rng_state()
        torch.default_generator.manual_seed(seed)
        try:
            return self.transform(image), i % 10
        finally:
            torch.set_rng_state(outer)


class Keys(torch.utils.data.Sampler):
    """The same (index, seed) keys every epoch, in a shuffled order."""

    def __init__(self, n: int):
        self.n, self.epoch = n, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch)).tolist()
        return iter([(i, 1_000_003 * self.epoch + i) for i in order])


def _bytes_collate(batch: list) -> tuple[list[torch.Tensor], list[int]]:
    return [b[0] for b in batch], [b[1] for b in batch]


class CudaBatch:
    """decode_jpeg on the GPU for a whole batch, then each image's crop and flip and the batch's
    normalisation there (the same transforms as the CPU variants, on uint8 CUDA tensors)."""

    def __init__(self):
        from torchvision.transforms import v2 as T

        from worker.training.data import MEAN, STD

        self.crop = T.Compose([T.RandomResizedCrop(SIZE, scale=(0.6, 1.0), antialias=True), T.RandomHorizontalFlip()])
        self.mean = torch.tensor(MEAN, device="cuda").view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device="cuda").view(1, 3, 1, 1)

    def __call__(self, batch: tuple[list[torch.Tensor], list[int]]) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        data, seeds = batch
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device="cuda")
        out = []
        for image, seed in zip(images, seeds):
            torch.default_generator.manual_seed(seed)
            out.append(self.crop(image))
        x = torch.stack(out).float().div_(255)
        x = (x - self.mean) / self.std
        torch.cuda.synchronize()
        return x


# ----------------------------------------------------------------------------------- measuring
def run_variant(paths: list[Path], v: dict, batch: int) -> dict[str, float]:
    """Two epochs of one DataLoader: times to first batches, the epoch-boundary gap, images/s."""
    ds = Jpegs(paths, v["decode"])
    kw: dict[str, Any] = {"num_workers": v["workers"]}
    if v["workers"]:
        kw.update(persistent_workers=v["persistent"], prefetch_factor=v["prefetch"])
    if v["decode"] == "tv-cuda":
        kw["collate_fn"] = _bytes_collate
    sampler = Keys(len(ds))
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, **kw)
    post = CudaBatch() if v["decode"] == "tv-cuda" else (lambda b: b)
    out: dict[str, float] = {}
    last_batch_at = 0.0
    for epoch in (1, 2):
        sampler.epoch = epoch
        t0 = time.perf_counter()
        first = None
        seen = 0
        for b in loader:
            post(b)
            now = time.perf_counter()
            if first is None:
                first = now
                if epoch == 2:
                    out["gap_s"] = now - last_batch_at
            seen += batch
            last_batch_at = now
        end = time.perf_counter()
        out[f"first_batch_s_{epoch}"] = first - t0
        if epoch == 2:
            n = len(ds)
            out["img_per_s"] = n / (end - t0)
            out["steady_img_per_s"] = (n - batch) / max(last_batch_at - first, 1e-9)
    del loader
    return out


def variants(cpus: int, cuda: bool, simd: bool) -> list[dict]:
    counts = sorted({0, cpus, *(2 ** k for k in range(1, 8) if 2 ** k <= cpus)})
    top = counts[-1]
    vs = [{"decode": d, "workers": w, "persistent": w > 0, "prefetch": 2} for d in ("pil", "tv-cpu") for w in counts]
    if top:
        vs.append({"decode": "pil", "workers": top, "persistent": False, "prefetch": 2})
        vs += [{"decode": "pil", "workers": top, "persistent": True, "prefetch": p} for p in (4, 8)]
    if cuda:
        vs += [{"decode": "tv-cuda", "workers": w, "persistent": True, "prefetch": 2} for w in sorted({min(2, cpus), min(4, cpus)})]
    if simd:
        vs += [{"decode": "pil-simd", "workers": w, "persistent": w > 0, "prefetch": 2} for w in (0, top) if w or not top]
    return vs


def name(v: dict) -> str:
    w = v["workers"]
    return f"{v['decode']} w{w}" + (f" {'persistent' if v['persistent'] else 'fresh'} prefetch {v['prefetch']}" if w else "")


def run_simd(folder: Path, v: dict, batch: int, simd_site: Path) -> dict[str, float]:
    """The ``pil`` variant in a child interpreter that imports PIL from pillow-simd."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(simd_site), str(ROOT)])}
    argv = [sys.executable, "-m", "bench.decode_options", "--child", str(folder), "--batch", str(batch),
            "--variant", json.dumps({**v, "decode": "pil"})]
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def model_rate(arch: str, device: str, batch: int, steps: int) -> dict[str, Any]:
    """Forward + backward + AdamW step on random 224-px batches: the images/s a training loop
    could consume at most."""
    import torchvision

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    model = getattr(torchvision.models, arch)(num_classes=1000).to(dev, memory_format=torch.channels_last if cuda else
                                                                   torch.contiguous_format)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, SIZE, SIZE, device=dev)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=dev)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3 if cuda else 1):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"arch": arch, "device": device, "batch": batch, "steps": steps,
            "amp": "bf16, channels_last" if cuda else "fp32", "img_per_s": batch * steps / seconds}


def spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=384, help="JPEGs (one epoch)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-workers", type=int, default=os.cpu_count() or 1, help="the largest num_workers tried")
    ap.add_argument("--simd-site", type=Path, help="a folder holding pillow-simd (pip install --target)")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--model-batch", type=int, default=None, help="default: 128 on CUDA, 8 on the CPU")
    ap.add_argument("--model-steps", type=int, default=None, help="default: 20 on CUDA, 3 on the CPU")
    ap.add_argument("--no-cuda", action="store_true", help="leave out the CUDA variants even where CUDA is there")
    ap.add_argument("--smoke", action="store_true", help="tiny: 32 images, 1 rep, resnet18 (tests the bench)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # a pillow-simd run: one variant over the parent's files
        paths = sorted(args.child.glob("*.jpg"))
        print(json.dumps({**run_variant(paths, json.loads(args.variant), args.batch), "pil": Image.__version__}))
        return 0
    if args.smoke:
        args.images, args.reps, args.batch, args.arch = 32, 1, 8, "resnet18"
        args.max_workers = min(args.max_workers, 2)
        args.model_steps = args.model_steps or 1
    cuda = torch.cuda.is_available() and not args.no_cuda
    device = "cuda" if cuda else "cpu"
    model_batch = args.model_batch or (128 if cuda else 8)
    model_steps = args.model_steps or (20 if cuda else 3)
    simd_site = args.simd_site if args.simd_site and args.simd_site.is_dir() else None
    out: dict[str, Any] = {
        "bench": "decode_options", "date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
        "torch": torch.__version__, "pil": Image.__version__, "device": device,
        "gpu": torch.cuda.get_device_name() if cuda else None, "images": args.images, "batch": args.batch,
        "reps": args.reps, "transform": "build_transforms(224, train=True, augment=True)",
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
    }
    if args.simd_site and simd_site is None:
        out["pil_simd"] = f"{args.simd_site} not found: variant left out"
    vs = variants(max(1, min(args.max_workers, os.cpu_count() or 1)), cuda, simd_site is not None)
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        paths = make_jpegs(folder, args.images)
        sizes = [p.stat().st_size for p in paths]
        out["jpeg"] = {"size": "500x375 (1 in 4 375x500)", "quality": 90, "kb_median": statistics.median(sizes) / 1024,
                       "made_in_s": time.perf_counter() - t0}
        runs: dict[str, list[dict]] = {name(v): [] for v in vs}
        for rep in range(args.reps):
            order = vs[rep % len(vs):] + vs[:rep % len(vs)]  # rotated: no variant always runs first
            for v in order:
                if v["decode"] == "pil-simd":
                    r = run_simd(folder, v, args.batch, simd_site)
                    out["pil_simd"] = r.pop("pil")
                else:
                    r = run_variant(paths, v, args.batch)
                runs[name(v)].append(r)
                print(f"rep {rep + 1}/{args.reps} {name(v)}: {r['img_per_s']:.0f} img/s", file=sys.stderr, flush=True)
    out["variants"] = {
        k: {**next(v for v in vs if name(v) == k),
            **{f: spread([r[f] for r in rs]) for f in ("img_per_s", "steady_img_per_s", "first_batch_s_1",
                                                       "first_batch_s_2", "gap_s")}, "runs": rs}
        for k, rs in runs.items()}
    out["model"] = model_rate(args.arch, device, model_batch, model_steps)
    best = max(out["variants"], key=lambda k: out["variants"][k]["img_per_s"]["median"])
    pipeline = out["variants"][best]["img_per_s"]["median"]
    out["verdict"] = {"best_variant": best, "pipeline_img_per_s": pipeline, "model_img_per_s": out["model"]["img_per_s"],
                      "input_bound": pipeline < out["model"]["img_per_s"],
                      "pipeline_over_model": pipeline / out["model"]["img_per_s"]}
    out["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    target = args.out or RESULTS / "decode_options.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=2))

    def cell(s: dict, f: str = ".0f") -> str:
        return f"{s['median']:{f}} [{s['min']:{f}}, {s['max']:{f}}]"

    print(f"{args.images} JPEGs 500x375 q90 ({out['jpeg']['kb_median']:.0f} KB median), batch {args.batch}, "
          f"{os.cpu_count()} CPUs, {args.reps} reps, median [min, max]\n")
    print("| variant | epoch 2 img/s | steady img/s | first batch s, epoch 1 | first batch s, epoch 2 | epoch gap s |")
    print("|---|---|---|---|---|---|")
    for k, r in out["variants"].items():
        print(f"| {k} | {cell(r['img_per_s'])} | {cell(r['steady_img_per_s'])} | {cell(r['first_batch_s_1'], '.3f')} | "
              f"{cell(r['first_batch_s_2'], '.3f')} | {cell(r['gap_s'], '.3f')} |")
    m, v = out["model"], out["verdict"]
    print(f"\nmodel: {m['arch']} at 224 px, forward+backward+AdamW, {m['amp']}, batch {m['batch']} on {m['device']}: "
          f"{m['img_per_s']:.1f} img/s. Best pipeline variant: {v['best_variant']} at {v['pipeline_img_per_s']:.0f} img/s "
          f"({v['pipeline_over_model']:.2f}x the model's rate): input {'IS' if v['input_bound'] else 'is not'} the bottleneck.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
