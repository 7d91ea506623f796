"""The typed config is the validated mapping with attribute access: every shipped config
round-trips exactly (values and key order: config.yaml is written from it), and the plain schema
the API uses still returns the mapping."""
from __future__ import annotations

import dataclasses
import json

import pytest

from common.config import (CONFIGS_DIR, ConfigError, FilterConfig, TrainConfig, TrainConfigSchema, load_config_dict,
                           load_config_file, load_train_config)

RAW = {"model": {"arch": "resnet18"}, "data": {"format": "csv", "root": "d", "filter": {"column": "region", "values": ["a", "b"]}},
       "optim": {"epochs": 2, "batch_size": 8, "lr": 0.1}}


@pytest.mark.parametrize("path", sorted(CONFIGS_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_round_trip(path):
    mapping = load_config_file(path)
    typed = load_train_config(mapping)
    assert json.dumps(typed.to_dict()) == json.dumps(mapping)  # same keys, values and order
    assert TrainConfig.from_dict(mapping) == typed


def test_attributes_defaults_and_the_filter():
    cfg = load_train_config(RAW)
    assert cfg.optim.momentum == 0.9 and cfg.runtime.log_interval == 50 and cfg.integrity.on_fail == "warn"
    assert cfg.data.filter == FilterConfig("region", ("a", "b")) and cfg.init_from is None
    assert cfg.to_dict()["data"]["filter"] == {"column": "region", "values": ["a", "b"]}
    assert cfg.to_dict() == load_config_dict(RAW)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0  # type: ignore[misc]


def test_replace_changes_fields_of_sections_only():
    cfg = load_train_config(RAW)
    quick = cfg.replace(optim={"epochs": 1}, runtime={"num_workers": 0})
    assert quick.optim.epochs == 1 and quick.optim.lr == 0.1 and quick.runtime.num_workers == 0
    assert cfg.optim.epochs == 2  # the original is untouched


def test_errors_are_the_plain_schemas_and_the_plain_schema_returns_a_mapping():
    bad = {**RAW, "optim": {**RAW["optim"], "lr": -1}}
    with pytest.raises(ConfigError) as typed:
        load_train_config(bad)
    with pytest.raises(ConfigError) as plain:
        load_config_dict(bad)
    assert typed.value.errors == plain.value.errors and "optim.lr" in typed.value.errors
    assert isinstance(TrainConfigSchema().load(RAW), dict)
