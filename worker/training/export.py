"""``teacher export``: a training checkpoint turned into what someone needs to use the model.

A training checkpoint holds the optimizer, scheduler, scaler and RNG states, the config and the
whole history; to ship a model only the weights and the facts needed to run them are wanted.
The export is two files in one directory:

- ``model.pt``: the model's ``state_dict`` alone (tensors only, loadable with
  ``torch.load(path, weights_only=True)``);
- ``model.json``: the architecture and class names, the exact inference preprocessing (read
  from the evaluation transform of :mod:`worker.training.data`, so it cannot drift from what
  the recorded metrics were measured with), the source run and checkpoint, the recorded
  metrics, and the sha256 of ``model.pt`` and of the source checkpoint.

The source is verified against its run's manifest before anything is written, like every other
loader of checkpoints here; both files are written atomically. docs/checkpoints.md describes
the formats.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.transforms import v2 as T

from common import rundir
from common.config import ConfigError, TrainConfig, load_train_config
from common.rundir import EXPORT_FORMAT, ExportMeta, ExportSource, JsonObject  # noqa: F401 (EXPORT_FORMAT re-exported)

from . import data as data_mod
from .checkpoints import load_checkpoint_file, manifest_sha256, sha256_file, stage_checkpoint
from .models import build_model

CHECKPOINT_FORMAT = "teacher-checkpoint/1"
MODEL_FILE, META_FILE = rundir.EXPORT_MODEL, rundir.EXPORT_META
_REQUIRED_KEYS = ("model", "config", "class_names", "epoch", "step", "metrics")


class ExportError(ValueError):
    """The source cannot be exported: no such file or run, or not a teacher checkpoint (bad
    input; a file that fails verification raises :class:`CheckpointError` instead)."""


@dataclass(frozen=True)
class ExportInfo:
    out_dir: Path
    model_path: Path
    meta_path: Path
    sha256: str              # of model.pt
    source: Path             # the checkpoint exported
    source_sha256: str
    record: ExportMeta       # model.json

    @property
    def meta(self) -> JsonObject:
        """The content of model.json, as written."""
        return self.record.to_json()


def resolve_source(path: Path) -> Path:
    """The checkpoint that ``path`` names: a ``.pt`` file itself, or the ``best.pt`` of a run
    directory, of its ``checkpoints/`` folder, or of a job directory (``JOBS_ROOT/<id>/run``)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / rundir.BEST, rundir.RunPaths(path).best, rundir.JobPaths(path).files.best):
            if candidate.is_file():
                return candidate
        raise ExportError(f"{path}: no {rundir.BEST} in it (expected a checkpoint file, a run directory or a job directory)")
    raise ExportError(f"{path}: no such checkpoint or run directory")


def _interpolation_name(mode: Any) -> str:
    return str(getattr(mode, "value", mode)).lower()


def _size(value: Any) -> list[int]:
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _step(transform: Any) -> JsonObject:
    """One evaluation transform as data. An unknown transform is an error: an export that
    silently left out a preprocessing step would reproduce nothing."""
    if isinstance(transform, T.Resize):
        return {"op": "resize", "size": _size(transform.size), "interpolation": _interpolation_name(transform.interpolation),
                "antialias": bool(transform.antialias), "max_size": transform.max_size}
    if isinstance(transform, T.CenterCrop):
        return {"op": "center_crop", "size": _size(transform.size)}
    if isinstance(transform, T.ToImage):
        return {"op": "to_image"}
    if isinstance(transform, T.ToDtype):
        dtype = transform.dtype
        return {"op": "to_dtype", "dtype": str(dtype).removeprefix("torch."), "scale": bool(transform.scale)}
    if isinstance(transform, T.Normalize):
        return {"op": "normalize", "mean": [float(m) for m in transform.mean], "std": [float(s) for s in transform.std]}
    raise ExportError(f"cannot describe the evaluation transform {type(transform).__name__} in model.json")


def inference_preprocessing(image_size: int) -> JsonObject:
    """The exact evaluation preprocessing of a run trained at ``image_size``, read from the
    transform that validation used (:func:`worker.training.data.build_transforms`)."""
    compose = data_mod.build_transforms(image_size, train=False, augment=False)
    steps = [_step(t) for t in compose.transforms]
    by_op = {s["op"]: s for s in steps}
    return {
        # ImageListDataset opens every image with PIL and converts it to RGB before the steps.
        "color_mode": "RGB",
        "steps": steps,
        "resize": by_op.get("resize", {}).get("size"),
        "interpolation": by_op.get("resize", {}).get("interpolation"),
        "crop": by_op.get("center_crop", {}).get("size"),
        "mean": by_op.get("normalize", {}).get("mean"),
        "std": by_op.get("normalize", {}).get("std"),
        "input_layout": "NCHW",
    }


def _source_description(checkpoint: Path, cfg: TrainConfig, sha256: str, verified: bool) -> ExportSource:
    """Where the checkpoint came from, by name only: an export is shipped elsewhere, and an
    absolute path of the training host means nothing there (and should not leak)."""
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == rundir.CHECKPOINTS else None
    job_id = None
    if run_dir is not None and run_dir.name == rundir.JOB_RUN and rundir.is_job_id(run_dir.parent.name):
        job_id = run_dir.parent.name
    return ExportSource(checkpoint.name, cfg.name, run_dir.name if run_dir is not None else None, job_id,
                        sha256, verified)


def load_verified(checkpoint: Path) -> tuple[dict[str, Any], str, bool]:
    """The checkpoint's state, its sha256, and whether a manifest digest was checked."""
    expected = manifest_sha256(checkpoint)
    state = load_checkpoint_file(checkpoint, expected_sha256=expected)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ExportError(f"{checkpoint.name}: not a teacher checkpoint (format {state.get('format') if isinstance(state, dict) else None!r})")
    missing = [k for k in _REQUIRED_KEYS if k not in state]
    if missing:
        raise ExportError(f"{checkpoint.name}: not a complete teacher checkpoint (no {', '.join(missing)})")
    return state, expected or sha256_file(checkpoint), expected is not None


def _config(checkpoint: Path, raw: Any) -> TrainConfig:
    """The checkpoint's config, typed (it was validated when the run started)."""
    try:
        return load_train_config(raw)
    except ConfigError as exc:
        raise ExportError(f"{checkpoint.name}: not a complete teacher checkpoint (its config: {exc})") from None


def export_checkpoint(checkpoint_path: Path, out_dir: Path) -> ExportInfo:
    """Write ``model.pt`` and ``model.json`` for the checkpoint (or run directory) named."""
    source = resolve_source(Path(checkpoint_path))
    state, source_sha, verified = load_verified(source)
    cfg, class_names = _config(source, state["config"]), list(state["class_names"])
    arch, num_classes = cfg.model.arch, len(class_names)
    weights = {k: v.detach().cpu().contiguous() for k, v in state["model"].items()}
    # The weights must load, strictly, into the architecture model.json names: a consumer
    # rebuilds exactly that model. Built on the meta device, so that checking every key and
    # shape costs no allocation and no random initialisation of weights about to be replaced
    # (~0.3-0.8 s for a resnet50 on 2 cores, per export).
    with torch.device("meta"):
        skeleton = build_model(arch, num_classes)
    skeleton.load_state_dict(weights, strict=True, assign=True)
    out_dir = Path(out_dir)
    staged, size, digest = stage_checkpoint(weights, out_dir / MODEL_FILE)  # streamed: no second copy in memory
    try:
        image_size = cfg.data.image_size
        meta = ExportMeta(
            sha256=digest, size=size, arch=arch, num_classes=num_classes, class_names=class_names,
            build=f"torchvision.models.get_model({arch!r}, weights=None, num_classes={num_classes})",
            image_size=image_size, preprocessing=inference_preprocessing(image_size),
            source=_source_description(source, cfg, source_sha, verified),
            epoch=int(state["epoch"]), step=int(state["step"]), metrics=dict(state["metrics"]),
            best_metric=cfg.checkpoint.best_metric,
            torch_version=torch.__version__, torchvision_version=torchvision.__version__,
            exported_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), model_file=MODEL_FILE)
    except BaseException:
        staged.abandon()
        raise
    # model.pt first: a model.json on disk always describes a complete model.pt.
    with rundir.naming(out_dir / MODEL_FILE):
        staged.commit()
    meta.write(out_dir / META_FILE)
    return ExportInfo(out_dir, out_dir / MODEL_FILE, out_dir / META_FILE, digest, source, source_sha, meta)
