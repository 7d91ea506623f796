"""export_checkpoint loads the weights strictly into the architecture model.json names (a model
built on the meta device: keys and shapes checked, nothing allocated): weights that do not fit
it are refused and nothing is written."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from common.config import load_train_config
from tests.support.training import TINY_CONFIG
from worker.training import export
from worker.training.models import build_model


def _state(arch_of_weights: str, classes: int) -> dict:
    cfg = load_train_config(copy.deepcopy(TINY_CONFIG))
    weights = build_model(arch_of_weights, classes).state_dict()
    return {"format": export.CHECKPOINT_FORMAT, "model": weights, "config": cfg.to_dict(),
            "class_names": [f"c{i}" for i in range(3)], "epoch": 1, "step": 2, "metrics": {"val.top1": 50.0}}


@pytest.mark.parametrize("arch_of_weights, classes, message", [
    ("resnet18", 4, "size mismatch for fc.weight"),  # 4 outputs for 3 class names
    ("resnet34", 3, "Unexpected key"),               # another architecture's layers
])
def test_weights_that_do_not_fit_the_architecture_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              arch_of_weights: str, classes: int,
                                                              message: str) -> None:
    assert TINY_CONFIG["model"]["arch"] == "resnet18"
    monkeypatch.setattr(export, "resolve_source", lambda p: Path(p))
    monkeypatch.setattr(export, "load_verified", lambda p: (_state(arch_of_weights, classes), "0" * 64, True))
    with pytest.raises(RuntimeError, match=message):
        export.export_checkpoint(tmp_path / "best.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fitting_weights_are_exported_as_real_tensors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    state = _state("resnet18", 3)
    monkeypatch.setattr(export, "resolve_source", lambda p: Path(p))
    monkeypatch.setattr(export, "load_verified", lambda p: (state, "0" * 64, True))
    info = export.export_checkpoint(tmp_path / "best.pt", tmp_path / "out")
    shipped = torch.load(info.model_path, weights_only=True)
    assert shipped.keys() == state["model"].keys()
    assert all(not v.is_meta and torch.equal(v, state["model"][k]) for k, v in shipped.items())
