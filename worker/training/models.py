"""Model construction: allowlisted torchvision architectures, local-only pretrained weights,
and initialisation from another run's checkpoint (a regional teacher from a global one)."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn

from common.config import ARCH_ALLOWLIST, ConfigError

log = logging.getLogger(__name__)


class ModelError(ConfigError):
    """The model cannot be built or initialised as configured."""


def build_model(arch: str, num_classes: int) -> nn.Module:
    if arch not in ARCH_ALLOWLIST:  # the schema checked it too; this guards direct callers
        raise ModelError({"model.arch": [f"architecture '{arch}' is not allowed"]})
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def cached_pretrained_path(arch: str) -> Path:
    """Where torchvision's default weights for ``arch`` would sit in the local TORCH_HOME cache."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def load_pretrained(model: nn.Module, arch: str) -> list[str]:
    """Copy torchvision's default weights from the local cache; never download."""
    path = cached_pretrained_path(arch)
    if not path.is_file():
        raise ModelError({"model.pretrained": [
            f"pretrained weights for '{arch}' are not in the local cache ({path}); "
            "put the file there (TORCH_HOME) or set pretrained: false. Nothing is downloaded."
        ]})
    state = torch.load(path, map_location="cpu", weights_only=True)
    return load_matching(model, state, source=str(path))


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> list[str]:
    """Load every tensor whose name and shape match; return the names left at their fresh init.

    When the class count differs, the classifier's weights do not match in shape and are
    skipped: the head is rebuilt while the backbone is reused.
    """
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ModelError({"init_from": [f"no tensor in {source} matches this model's architecture"]})
    skipped = sorted(set(own) - set(usable))
    model.load_state_dict(usable, strict=False)
    if skipped:
        log.info("initialised from %s; %d tensor(s) kept fresh (head rebuilt): %s", source, len(skipped), ", ".join(skipped[:6]))
    else:
        log.info("initialised from %s (all tensors matched)", source)
    return skipped
