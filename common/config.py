"""The training-job config: one marshmallow schema for the YAML file and the API's job body.

The schema is the single source of truth for what a job may say. ``teacher train`` validates
its ``--config`` file with it, and the API validates the HTTP body with the same class (and
generates its OpenAPI document from it). Unknown keys are errors that name the key, numbers
have ranges, and every path is relative to a root it may not escape.

Two forms of a validated config: the mapping (``load_config_dict``; what config.yaml, a
checkpoint and the API store) and the typed :class:`TrainConfig` the trainer reads
(``load_train_config``: frozen dataclasses built by :class:`TypedTrainConfigSchema`'s
``post_load``). ``TrainConfig.to_dict()`` gives the mapping back, key order included.

This module must not import torch: the API process loads it.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import yaml
from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    pre_load,
    validate,
    validates,
    validates_schema,
)

# Architectures users may ask for. Each name is a torchvision classification builder
# (tests check every entry against ``torchvision.models.list_models()``); models that need a
# fixed input size or have auxiliary heads (ViT, Swin, MaxViT, Inception, GoogLeNet) are left out
# because the training loop assumes ``logits = model(images)`` for any image size >= 32.
ARCH_ALLOWLIST: frozenset[str] = frozenset(
    [f"resnet{n}" for n in (18, 34, 50, 101, 152)]
    + ["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]
    + [f"convnext_{s}" for s in ("tiny", "small", "base", "large")]
    + [f"efficientnet_b{i}" for i in range(8)]
    + ["efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l"]
    + ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"]
    + ["mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3"]
    + [f"regnet_{k}_{s}" for k in ("x", "y") for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")]
    + ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"]
    + ["densenet121", "densenet161", "densenet169", "densenet201"]
    + ["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
)

# Metrics the "best" checkpoint may be chosen by, and whether larger is better.
BEST_METRICS: dict[str, str] = {
    "val.top1": "max",
    "val.top5": "max",
    "val.loss": "min",
    "train.loss": "min",
    "train.top1": "max",
}

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"

_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ConfigError(ValueError):
    """A config failed validation. ``errors`` maps dotted field paths to messages."""

    def __init__(self, errors: Mapping[str, list[str]] | str):
        if isinstance(errors, str):
            errors = {"_schema": [errors]}
        self.errors = dict(errors)
        super().__init__(format_errors(self.errors))


class PathEscapeError(ConfigError):
    """A path in a config points outside the root it must stay under."""


def format_errors(errors: Mapping[str, Any]) -> str:
    return "; ".join(f"{field}: {' '.join(map(str, msgs))}" for field, msgs in errors.items())


def flatten_errors(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turn marshmallow's nested error dict into ``{"optim.lr": ["..."]}``."""
    out: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                out.update(flatten_errors(value, path))
            else:
                out[path] = [str(v) for v in (value if isinstance(value, list) else [value])]
    else:
        out[prefix or "_schema"] = [str(v) for v in (messages if isinstance(messages, list) else [messages])]
    return out


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class StrictInteger(fields.Integer):
    """An integer that is an integer: ``2.5``, ``64.9``, ``"3"`` and ``true`` are errors, not
    silently truncated or coerced (marshmallow's Integer turns 2.5 into 2, and a bool is an
    int in Python, so YAML's ``true`` would be 1)."""

    default_error_messages = {"invalid": "Not a valid integer: a whole number is required, not {input!r}"}

    def _validated(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid", input=value)
        return super()._validated(value)


class _NumberNotBool(fields.Float):
    """A float that refuses booleans (YAML's ``true`` is not 1.0). Strings stay accepted:
    PyYAML reads ``1e-3`` (no dot) as a string."""

    def _validated(self, value: Any) -> Any:
        if isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return super()._validated(value)


def _finite_float(**kwargs: Any) -> fields.Float:
    # allow_nan=False makes marshmallow reject NaN and +-inf with a clear message.
    return _NumberNotBool(allow_nan=False, **kwargs)


def relative_path_field(**kwargs: Any) -> fields.String:
    return fields.String(validate=validate_relative_path, **kwargs)


def validate_relative_path(value: str) -> None:
    """A path inside a config: relative, no '..', no backslashes or NUL. Symlinks are checked
    later, against the real filesystem, by :func:`confine`."""
    if not value or "\x00" in value or "\\" in value:
        raise ValidationError("must be a non-empty relative path without NUL or backslashes")
    p = PurePosixPath(value)
    if p.is_absolute():
        raise ValidationError("must be relative to its root, not absolute")
    if any(part == ".." for part in p.parts):
        raise ValidationError("must not contain '..'")


def confine(root: str | os.PathLike[str], relative: str, *, what: str = "path") -> Path:
    """Resolve ``relative`` under ``root`` following symlinks; refuse anything that escapes."""
    validate_relative_or_raise(relative, what)
    root_real = Path(root).resolve()
    target = (root_real / relative).resolve()
    if target != root_real and root_real not in target.parents:
        raise PathEscapeError({what: [f"'{relative}' resolves outside its root {root_real}"]})
    return target


def validate_relative_or_raise(relative: str, what: str) -> None:
    try:
        validate_relative_path(relative)
    except ValidationError as exc:
        raise PathEscapeError({what: [str(m) for m in exc.messages]}) from None


class ModelSchema(_Strict):
    arch = fields.String(required=True, metadata={"description": "torchvision architecture (allowlisted)"})
    num_classes = StrictInteger(
        load_default=None, allow_none=True, validate=validate.Range(min=2, max=100_000),
        metadata={"description": "number of classes; null derives it from the training data"},
    )
    pretrained = fields.Boolean(
        load_default=False,
        metadata={"description": "start from torchvision's default weights, read from the local TORCH_HOME cache only"},
    )

    @validates("arch")
    def _arch_allowed(self, value: str, **_: Any) -> None:
        if value not in ARCH_ALLOWLIST:
            raise ValidationError(
                f"unknown or unsupported architecture '{value}'; allowed: {', '.join(sorted(ARCH_ALLOWLIST))}"
            )


class FilterSchema(_Strict):
    column = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z_][A-Za-z0-9_]*$"))
    values = fields.List(fields.String(), required=True, validate=validate.Length(min=1, max=10_000))


class DataSchema(_Strict):
    format = fields.String(required=True, validate=validate.OneOf(["imagefolder", "csv"]))
    root = relative_path_field(required=True, metadata={"description": "dataset directory, relative to the data root"})
    manifest = relative_path_field(
        load_default="manifest.csv", metadata={"description": "csv format: manifest file relative to `root`"}
    )
    train_split = fields.String(load_default="train", validate=validate.Regexp(_SAFE_PART.pattern))
    val_split = fields.String(load_default="val", validate=validate.Regexp(_SAFE_PART.pattern))
    image_size = StrictInteger(load_default=224, validate=validate.Range(min=32, max=1024))
    max_samples = StrictInteger(
        load_default=None, allow_none=True, validate=validate.Range(min=1),
        metadata={"description": "use at most this many samples from each split (a seeded, class-stratified subset)"},
    )
    filter = fields.Nested(
        FilterSchema, load_default=None, allow_none=True,
        metadata={"description": "csv format: keep rows whose `column` is one of `values` (regional subsets)"},
    )
    augment = fields.Boolean(load_default=True, metadata={"description": "random crop and flip for training"})

    @validates_schema
    def _filter_needs_csv(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("filter") and data.get("format") != "csv":
            raise ValidationError("a filter needs format 'csv' (a manifest with the filter column)", "filter")


class OptimSchema(_Strict):
    epochs = StrictInteger(required=True, validate=validate.Range(min=1, max=10_000))
    batch_size = StrictInteger(required=True, validate=validate.Range(min=1, max=65_536))
    optimizer = fields.String(load_default="sgd", validate=validate.OneOf(["sgd", "adamw"]))
    lr = _finite_float(required=True, validate=validate.Range(min=0, max=100, min_inclusive=False))
    momentum = _finite_float(load_default=0.9, validate=validate.Range(min=0, max=1, max_inclusive=False))
    weight_decay = _finite_float(load_default=0.0, validate=validate.Range(min=0, max=1))
    scheduler = fields.String(load_default="cosine", validate=validate.OneOf(["cosine", "step", "none"]))
    warmup_epochs = _finite_float(load_default=0.0, validate=validate.Range(min=0, max=1000))
    step_size = StrictInteger(load_default=30, validate=validate.Range(min=1), metadata={"description": "step scheduler: epochs between decays"})
    gamma = _finite_float(load_default=0.1, validate=validate.Range(min=0, max=1, min_inclusive=False))
    label_smoothing = _finite_float(load_default=0.0, validate=validate.Range(min=0, max=1, max_inclusive=False))
    grad_accum_steps = StrictInteger(load_default=1, validate=validate.Range(min=1, max=1024))
    grad_clip_norm = _finite_float(load_default=None, allow_none=True, validate=validate.Range(min=0, min_inclusive=False))
    seed = StrictInteger(load_default=0, validate=validate.Range(min=0, max=2**31 - 1))


class OnOffString(fields.String):
    """A string choice where YAML 1.1 turns the words into booleans: ``amp: off`` arrives as
    ``False`` and ``channels_last: on`` as ``True``. Map them back instead of rejecting what
    the user wrote."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool):
            value = "on" if value else "off"
        return super()._deserialize(value, attr, data, **kwargs)


# torch.compile's modes (runtime.compile_mode).
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune")


class RuntimeSchema(_Strict):
    device = fields.String(load_default="auto", validate=validate.OneOf(["auto", "cpu", "cuda"]))
    amp = OnOffString(load_default="auto", validate=validate.OneOf(["auto", "bf16", "fp16", "off"]))
    channels_last = OnOffString(load_default="auto", validate=validate.OneOf(["auto", "on", "off"]))
    num_workers = StrictInteger(load_default=4, validate=validate.Range(min=0, max=64))
    log_interval = StrictInteger(load_default=50, validate=validate.Range(min=1, max=1_000_000))
    stall_timeout_s = StrictInteger(load_default=None, allow_none=True, validate=validate.Range(min=1, max=604_800),
                                    metadata={"description": "the job is killed and retried from its checkpoint when "
                                              "training makes no progress this long (default: TEACHER_STALL_TIMEOUT_S)"})
    sync_bn = fields.Boolean(load_default=False, metadata={
        "description": "several processes: convert BatchNorm layers to SyncBatchNorm (statistics over the global "
                       "batch, as on one device; costs a collective per BatchNorm layer)"})
    compile = fields.Boolean(load_default=False, error_messages={
        "invalid": "Not a valid boolean: use true or false (a torch.compile mode goes in runtime.compile_mode)"},
        metadata={"description": "torch.compile the model (TorchInductor): the first steps of training and of "
                                 "evaluation compile (minutes), later ones may run faster; checkpoints, exports and "
                                 "metrics are the same as without it"})
    compile_mode = fields.String(load_default="default", validate=validate.OneOf(COMPILE_MODES), metadata={
        "description": "with runtime.compile: torch.compile's mode (reduce-overhead adds CUDA graphs on a GPU, "
                       "max-autotune benchmarks kernels while compiling: longer compiles)"})

    @validates_schema
    def _mode_needs_compile(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("compile_mode", "default") != "default" and not data.get("compile"):
            raise ValidationError("a compile mode needs runtime.compile: true", "compile_mode")


class CheckpointSchema(_Strict):
    every_epochs = StrictInteger(load_default=1, validate=validate.Range(min=1, max=10_000))
    keep_last = StrictInteger(load_default=2, validate=validate.Range(min=1, max=1000))
    best_metric = fields.String(load_default="val.top1", validate=validate.OneOf(sorted(BEST_METRICS)))
    # Mid-epoch ("step") checkpoints, so a preemption costs minutes, not an epoch; 0 = off.
    # One is also written when a stop is requested (SIGTERM), if it fits in the grace period.
    every_minutes = fields.Float(load_default=30.0, allow_nan=False, validate=validate.Range(min=0, max=10_080), metadata={
        "description": "write a step checkpoint when this many minutes passed since the last checkpoint (0: off)"})
    every_steps = StrictInteger(load_default=0, validate=validate.Range(min=0, max=100_000_000), metadata={
        "description": "write a step checkpoint every this many optimizer steps (0: off)"})


MAX_PROCESSES = 64


class ResourcesSchema(_Strict):
    """What a job needs of its worker. One process by default, on the worker's GPU if it has
    one (``gpus: null``). ``gpus: N`` asks for N GPUs on one host (torchrun, NCCL); the job runs
    only on a worker that has N, and never on fewer. ``processes: N`` runs N CPU processes
    (torchrun, gloo): for CPU hosts and for tests."""

    gpus = StrictInteger(load_default=None, allow_none=True, validate=validate.Range(min=1, max=MAX_PROCESSES), metadata={
        "description": "GPUs on one host, one training process each (null: one process, on a GPU if the worker has one)"})
    processes = StrictInteger(load_default=1, validate=validate.Range(min=1, max=MAX_PROCESSES), metadata={
        "description": "CPU training processes (gloo backend); for GPUs use `gpus`"})

    @validates_schema
    def _one_kind(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("gpus") is not None and data.get("processes", 1) != 1:
            raise ValidationError("give either gpus (GPU processes) or processes (CPU processes), not both", "processes")


class IntegritySchema(_Strict):
    on_fail = fields.String(load_default="warn", validate=validate.OneOf(["warn", "stop"]))


class TrainConfigSchema(_Strict):
    name = fields.String(load_default="teacher", validate=validate.Regexp(_SAFE_PART.pattern, error="use letters, digits, '.', '_' and '-'"))
    model = fields.Nested(ModelSchema, required=True)
    data = fields.Nested(DataSchema, required=True)
    optim = fields.Nested(OptimSchema, required=True)
    runtime = fields.Nested(RuntimeSchema, load_default=lambda: RuntimeSchema().load({}))
    checkpoint = fields.Nested(CheckpointSchema, load_default=lambda: CheckpointSchema().load({}))
    integrity = fields.Nested(IntegritySchema, load_default=lambda: IntegritySchema().load({}))
    init_from = relative_path_field(
        load_default=None, allow_none=True,
        metadata={"description": "checkpoint (relative to the runs root) whose backbone initialises this model; the head is rebuilt when the class count differs"},
    )
    resources = fields.Nested(ResourcesSchema, load_default=lambda: ResourcesSchema().load({}))

    @validates_schema
    def _batch_splits(self, data: dict[str, Any], **_: Any) -> None:
        # optim.batch_size is the global batch, so a config means the same on 1 or 8 GPUs.
        resources, optim = data.get("resources") or {}, data.get("optim") or {}
        world = resources.get("gpus") or resources.get("processes") or 1
        batch = optim.get("batch_size")
        if isinstance(batch, int) and world > 1 and batch % world:
            raise ValidationError({"batch_size": [
                f"the global batch {batch} does not split evenly over {world} processes "
                f"(resources): use a multiple of {world}"]}, "optim")
        runtime = data.get("runtime") or {}
        if resources.get("processes", 1) > 1:  # CPU processes (gloo)
            if runtime.get("device") == "cuda":
                raise ValidationError({"device": ["resources.processes runs CPU processes; for GPUs use "
                                                  "resources.gpus"]}, "runtime")
            if runtime.get("sync_bn"):
                raise ValidationError({"sync_bn": ["SyncBatchNorm needs GPUs (resources.gpus); "
                                                   "PyTorch has no CPU implementation"]}, "runtime")
        if resources.get("gpus") is not None and runtime.get("device") == "cpu":
            raise ValidationError({"device": ["resources.gpus asks for GPUs; use device auto or cuda"]}, "runtime")

    @pre_load
    def _must_be_mapping(self, data: Any, **_: Any) -> Any:
        if not isinstance(data, Mapping):
            raise ValidationError("a config must be a mapping of sections")
        return data


# ---------------------------------------------------------------------------------------------
# The typed config: what the trainer reads (attribute access, frozen). The YAML file, the
# checkpoint and the API keep the validated mapping (``to_dict``); the two round-trip exactly.
# Each section's fields are declared in its schema's order, so ``to_dict`` keeps the key order
# that config.yaml is written in.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    arch: str
    num_classes: int | None
    pretrained: bool


@dataclass(frozen=True)
class FilterConfig:
    column: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class DataConfig:
    format: str
    root: str
    manifest: str
    train_split: str
    val_split: str
    image_size: int
    max_samples: int | None
    filter: FilterConfig | None
    augment: bool


@dataclass(frozen=True)
class OptimConfig:
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    scheduler: str
    warmup_epochs: float
    step_size: int
    gamma: float
    label_smoothing: float
    grad_accum_steps: int
    grad_clip_norm: float | None
    seed: int


@dataclass(frozen=True)
class RuntimeConfig:
    device: str
    amp: str
    channels_last: str
    num_workers: int
    log_interval: int
    stall_timeout_s: int | None = None
    sync_bn: bool = False
    compile: bool = False
    compile_mode: str = "default"


@dataclass(frozen=True)
class CheckpointConfig:
    every_epochs: int
    keep_last: int
    best_metric: str
    every_minutes: float = 30.0
    every_steps: int = 0


@dataclass(frozen=True)
class ResourcesConfig:
    gpus: int | None = None
    processes: int = 1

    @property
    def world_size(self) -> int:
        """Training processes: one per GPU asked for, else ``processes``."""
        return self.gpus if self.gpus is not None else self.processes

    @property
    def backend(self) -> str:
        return "nccl" if self.gpus is not None else "gloo"


@dataclass(frozen=True)
class IntegrityConfig:
    on_fail: str


@dataclass(frozen=True)
class TrainConfig:
    name: str
    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    runtime: RuntimeConfig
    checkpoint: CheckpointConfig
    integrity: IntegrityConfig
    init_from: str | None
    resources: ResourcesConfig = ResourcesConfig()

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "TrainConfig":
        """From a mapping the schema has validated and defaulted (see :func:`load_train_config`)."""
        data = dict(cfg["data"])
        if data["filter"] is not None:
            data["filter"] = FilterConfig(data["filter"]["column"], tuple(data["filter"]["values"]))
        return cls(name=cfg["name"], model=ModelConfig(**cfg["model"]), data=DataConfig(**data),
                   optim=OptimConfig(**cfg["optim"]), runtime=RuntimeConfig(**cfg["runtime"]),
                   checkpoint=CheckpointConfig(**cfg["checkpoint"]), integrity=IntegrityConfig(**cfg["integrity"]),
                   init_from=cfg["init_from"], resources=ResourcesConfig(**cfg["resources"]))

    def to_dict(self) -> dict[str, Any]:
        """The validated mapping (what config.yaml, a checkpoint and the API hold)."""
        out = dataclasses.asdict(self)
        if out["data"]["filter"] is not None:
            out["data"]["filter"]["values"] = list(out["data"]["filter"]["values"])
        return out

    def replace(self, **sections: Mapping[str, Any]) -> "TrainConfig":
        """A copy with some fields of some sections changed: ``cfg.replace(optim={"epochs": 2})``."""
        changes = {name: dataclasses.replace(getattr(self, name), **values) for name, values in sections.items()}
        return dataclasses.replace(self, **changes)


class TypedTrainConfigSchema(TrainConfigSchema):
    """:class:`TrainConfigSchema` whose ``load`` returns a :class:`TrainConfig`. A subclass, so
    the plain schema (the API's, which stores the config as submitted) keeps returning the
    mapping."""

    @post_load
    def _typed(self, data: dict[str, Any], **_: Any) -> TrainConfig:
        return TrainConfig.from_dict(data)


def load_train_config(raw: Any) -> TrainConfig:
    """Validate a config mapping into the typed config the trainer reads."""
    try:
        return TypedTrainConfigSchema().load(copy.deepcopy(raw))
    except ValidationError as exc:
        raise ConfigError(flatten_errors(exc.messages)) from None


def load_config_dict(raw: Any) -> dict[str, Any]:
    """Validate a config mapping and return it with every default filled in."""
    try:
        return TrainConfigSchema().load(copy.deepcopy(raw))
    except ValidationError as exc:
        raise ConfigError(flatten_errors(exc.messages)) from None


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    return load_config_dict(parse_yaml(text, source=str(path)))


# libyaml's C parser when available: the pure-Python one takes seconds on pathological input
# (e.g. thousands of nested brackets). Both are "safe" loaders: no Python tags, ever.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str, *, source: str = "config") -> Any:
    """Safe YAML loading with errors turned into :class:`ConfigError`."""
    try:
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise ConfigError({"_schema": [f"{source} is not valid YAML: {exc}"]}) from None


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Apply ``{"optim.lr": 0.1}`` style dotted overrides to a raw (unvalidated) config."""
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError({dotted: [f"'{part}' is not a section"]})
            node = child
        node[parts[-1]] = value
    return out


def parse_set_option(item: str) -> tuple[str, Any]:
    """``key.path=value`` from the command line; the value is parsed as a YAML scalar."""
    if "=" not in item:
        raise ConfigError({item: ["expected key=value"]})
    key, value = item.split("=", 1)
    return key.strip(), parse_yaml(value, source=f"value of {key}")


