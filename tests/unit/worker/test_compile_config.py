"""``runtime.compile`` / ``runtime.compile_mode`` (torch.compile): off by default, a boolean and
a mode, errors naming the field, in the trainer's typed config, at the API and in its OpenAPI
document. No compiling here (tests/system/test_compile.py trains compiled)."""
from __future__ import annotations

import pytest

from common.config import COMPILE_MODES, ConfigError, apply_overrides, load_config_dict, load_train_config, parse_yaml
from tests.support.api import CFG, submit

RAW = {"model": {"arch": "resnet18"}, "data": {"format": "imagefolder", "root": "d"},
       "optim": {"epochs": 1, "batch_size": 8, "lr": 0.1}}


def test_off_by_default_in_the_mapping_and_the_typed_config():
    assert load_config_dict(RAW)["runtime"]["compile"] is False
    assert load_config_dict(RAW)["runtime"]["compile_mode"] == "default"
    cfg = load_train_config(RAW)
    assert cfg.runtime.compile is False and cfg.runtime.compile_mode == "default"


@pytest.mark.parametrize("mode", COMPILE_MODES)
def test_on_with_each_mode_round_trips(mode):
    raw = apply_overrides(RAW, {"runtime.compile": True, "runtime.compile_mode": mode})
    cfg = load_train_config(raw)
    assert cfg.runtime.compile is True and cfg.runtime.compile_mode == mode
    assert cfg.to_dict() == load_config_dict(raw)
    assert load_train_config(cfg.to_dict()) == cfg  # what config.yaml and a checkpoint hold loads back


def test_yaml_switch_words_are_booleans():
    raw = apply_overrides(RAW, {"runtime": parse_yaml("{compile: on}")})
    assert load_train_config(raw).runtime.compile is True
    raw = apply_overrides(RAW, {"runtime": parse_yaml("{compile: no}")})
    assert load_train_config(raw).runtime.compile is False


@pytest.mark.parametrize("overrides,field,message", [
    ({"runtime.compile": "max-autotune"}, "runtime.compile", "runtime.compile_mode"),
    ({"runtime.compile": "sometimes"}, "runtime.compile", "Not a valid boolean"),
    ({"runtime.compile": None}, "runtime.compile", "Field may not be null"),
    ({"runtime.compile": True, "runtime.compile_mode": "fast"}, "runtime.compile_mode", "Must be one of"),
    ({"runtime.compile": True, "runtime.compile_mode": True}, "runtime.compile_mode", "Not a valid string"),
    ({"runtime.compile_mode": "max-autotune"}, "runtime.compile_mode", "needs runtime.compile: true"),
    ({"runtime.compile_backend": "eager"}, "runtime.compile_backend", "Unknown field"),
], ids=["mode-as-compile", "bad-word", "null", "unknown-mode", "mode-not-string", "mode-without-compile",
        "no-backend-key"])
def test_invalid_values_name_the_field(overrides, field, message):
    with pytest.raises(ConfigError) as info:
        load_train_config(apply_overrides(RAW, overrides))
    assert field in info.value.errors, info.value.errors
    assert message in " ".join(info.value.errors[field])


def test_api_accepts_compile_and_answers_400_naming_the_field(call, alice, broker):
    ok = submit(call, alice, {**CFG, "runtime": {"compile": True, "compile_mode": "reduce-overhead"}})
    assert ok.status_code == 202, ok.json
    r = submit(call, alice, {**CFG, "runtime": {"compile": "max-autotune"}})
    assert r.status_code == 400 and "runtime.compile" in r.json["errors"], r.json
    r = submit(call, alice, {**CFG, "runtime": {"compile": True, "compile_mode": "turbo"}})
    assert r.status_code == 400 and "runtime.compile_mode" in r.json["errors"], r.json
    assert len(broker.sent) == 1  # only the valid job was published


def test_openapi_document_describes_both_keys(doc):
    schemas = doc["components"]["schemas"]
    runtime = next(s for name, s in schemas.items() if "compile" in s.get("properties", {}))
    assert runtime["properties"]["compile"]["type"] == "boolean"
    assert runtime["properties"]["compile"]["default"] is False
    assert runtime["properties"]["compile_mode"]["enum"] == list(COMPILE_MODES)


@pytest.mark.slow  # imports TorchDynamo and traces (seconds)
def test_a_failed_compile_is_a_training_error_naming_runtime_compile(tmp_path, monkeypatch):
    """No C++ compiler for TorchInductor: the run fails (exit 1, the message in progress.json),
    saying which option to turn off, instead of falling back to eager mode unasked."""
    import torch
    import torch._inductor.config as inductor_config

    from worker.training.engine import CompileFailed, Compiled, TrainingError

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # empty: a cached kernel needs no compiler
    compiled = Compiled.build(torch.nn.Linear(4, 3), None, "default")
    try:
        with inductor_config.patch({"cpp.cxx": (None, str(tmp_path / "no-such-g++"))}):
            with pytest.raises(CompileFailed) as info:
                with compiled.first("training step"):
                    compiled.train(torch.randn(2, 4)).sum().backward()
    finally:
        torch._dynamo.reset()
    message = str(info.value)
    assert isinstance(info.value, TrainingError)
    assert message.startswith("runtime.compile: torch.compile (mode default) failed: "), message
    assert "C++ compiler" in message and message.endswith("set runtime.compile: false to train without it")
    assert isinstance(info.value.__cause__, torch._dynamo.exc.TorchDynamoException)
    assert compiled.pending == {"training step", "evaluation batch"}  # nothing was logged as compiled
