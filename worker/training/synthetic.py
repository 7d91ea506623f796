"""A small, learnable synthetic image dataset written to disk as real image files.

Demos and tests need data that (a) exists without any download, (b) goes through exactly the
same loading code as a user's dataset, and (c) a model can actually learn, so "accuracy far
above chance" is a meaningful assertion. Each class is a (shape, colour) pair drawn at a random
position, size and shade on a noisy background; classes are grouped into regions by colour so
a regional teacher can train on a subset of a global teacher's classes.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from common.atomic import atomic_write_text

SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar")
# colour name -> (RGB, region)
COLOURS = {
    "red": ((220, 40, 40), "north"),
    "green": ((40, 190, 60), "south"),
    "blue": ((50, 80, 230), "east"),
    "yellow": ((225, 210, 40), "west"),
}


@dataclass(frozen=True)
class SyntheticSpec:
    num_classes: int = 12
    train_per_class: int = 60
    val_per_class: int = 15
    image_size: int = 32
    seed: int = 0

    def class_names(self) -> list[str]:
        names = [f"{c}_{s}" for c in COLOURS for s in SHAPES]
        # Interleave so the first N classes cover several colours (regions) and shapes.
        ordered = sorted(names, key=lambda n: (SHAPES.index(n.split("_", 1)[1]), list(COLOURS).index(n.split("_", 1)[0])))
        if not 2 <= self.num_classes <= len(ordered):
            raise ValueError(f"num_classes must be between 2 and {len(ordered)}")
        return sorted(ordered[: self.num_classes])


def region_of(class_name: str) -> str:
    return COLOURS[class_name.split("_", 1)[0]][1]


def draw_sample(class_name: str, size: int, rng: np.random.Generator) -> Image.Image:
    colour_name, shape = class_name.split("_", 1)
    base = np.array(COLOURS[colour_name][0], dtype=float)
    colour = tuple(int(v) for v in np.clip(base + rng.normal(0, 18, 3), 0, 255))
    background = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
    img = Image.fromarray(background, "RGB")
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(r, size - r, 2)
    box = [cx - r, cy - r, cx + r, cy + r]
    w = max(2, int(r / 2.5))
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle(box, fill=colour)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "cross":
        d.rectangle([cx - r, cy - w / 2, cx + r, cy + w / 2], fill=colour)
        d.rectangle([cx - w / 2, cy - r, cx + w / 2, cy + r], fill=colour)
    elif shape == "ring":
        d.ellipse(box, outline=colour, width=w)
    elif shape == "bar":
        angle = rng.uniform(0, math.pi)
        dx, dy = r * math.cos(angle), r * math.sin(angle)
        d.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=colour, width=w)
    return img


def make_dataset(root: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> dict[str, int]:
    """Write ``root/{train,val}/<class>/<n>.png`` and ``root/manifest.csv``; return split sizes.

    The same files serve both formats: ``imagefolder`` reads the class folders, ``csv`` reads
    the manifest (columns path, label, split, region). Deterministic for a given spec.
    """
    root = Path(root)
    rng = np.random.default_rng(spec.seed)
    rows: list[tuple[str, str, str, str]] = []
    sizes = {"train": 0, "val": 0}
    for split, per_class in (("train", spec.train_per_class), ("val", spec.val_per_class)):
        for name in spec.class_names():
            for i in range(per_class):
                rel = f"{split}/{name}/{i:05d}.png"
                # Plain writes for the images (fsync per file would make generation slow);
                # the manifest, written atomically last, marks the dataset complete.
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                draw_sample(name, spec.image_size, rng).save(root / rel, format="PNG")
                rows.append((rel, name, split, region_of(name)))
                sizes[split] += 1
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "label", "split", "region"])
    writer.writerows(rows)
    atomic_write_text(root / "manifest.csv", out.getvalue())
    return sizes
