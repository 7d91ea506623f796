"""Bad configs and bad data fail before training starts, with a message naming the problem."""
from __future__ import annotations

import copy
import csv
import os
import shutil
from pathlib import Path

import pytest
import torchvision
from click.testing import CliRunner

from common.apps.cli import main
from common.config import ARCH_ALLOWLIST, ConfigError, apply_overrides, load_config_dict, load_config_file
from tests.support.training import CONFIGS, TINY_CONFIG, run_teacher, write_config


def test_every_allowlisted_arch_is_a_torchvision_classification_model():
    available = set(torchvision.models.list_models(module=torchvision.models))
    assert ARCH_ALLOWLIST <= available, sorted(ARCH_ALLOWLIST - available)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config_file(path)
    assert cfg["model"]["arch"] in ARCH_ALLOWLIST


def test_defaults_are_filled_in():
    cfg = load_config_dict(TINY_CONFIG)
    assert cfg["runtime"]["amp"] == "auto" and cfg["checkpoint"]["best_metric"] == "val.top1"
    assert cfg["integrity"] == {"on_fail": "warn"} and cfg["init_from"] is None


BAD_SCHEMA = [
    ("unknown top-level key", {"status": "running"}, "status", "Unknown field"),
    ("unknown nested key", {"optim.momentun": 0.9}, "optim.momentun", "Unknown field"),
    ("wrong type", {"optim.epochs": "ten"}, "optim.epochs", "Not a valid integer"),
    ("zero batch", {"optim.batch_size": 0}, "optim.batch_size", "greater than or equal to 1"),
    ("huge epochs", {"optim.epochs": 10**9}, "optim.epochs", "less than or equal to 10000"),
    ("nan lr", {"optim.lr": float("nan")}, "optim.lr", "Special numeric values"),
    ("inf lr", {"optim.lr": float("inf")}, "optim.lr", "Special numeric values"),
    ("unknown arch", {"model.arch": "resnet9000"}, "model.arch", "unknown or unsupported architecture"),
    ("arch with path", {"model.arch": "../resnet18"}, "model.arch", "unknown or unsupported architecture"),
    ("absolute data path", {"data.root": "/etc"}, "data.root", "not absolute"),
    ("dotdot data path", {"data.root": "../../etc"}, "data.root", "'..'"),
    ("absolute init_from", {"init_from": "/etc/passwd"}, "init_from", "not absolute"),
    ("fractional epochs", {"optim.epochs": 2.5}, "optim.epochs", "Not a valid integer"),
    ("fractional batch", {"optim.batch_size": 64.9}, "optim.batch_size", "Not a valid integer"),
    ("integral float", {"data.image_size": 64.0}, "data.image_size", "Not a valid integer"),
    ("numeric string", {"runtime.num_workers": "2"}, "runtime.num_workers", "Not a valid integer"),
    ("boolean as integer", {"optim.seed": True}, "optim.seed", "Not a valid integer"),
    ("boolean as number", {"optim.lr": True}, "optim.lr", "Not a valid number"),
    ("bad optimizer", {"optim.optimizer": "lbfgs"}, "optim.optimizer", "Must be one of"),
    ("filter without csv", {"data.filter": {"column": "region", "values": ["north"]}}, "data.filter", "needs format 'csv'"),
]


@pytest.mark.parametrize("case,overrides,field,message", BAD_SCHEMA, ids=[c[0] for c in BAD_SCHEMA])
def test_schema_errors_name_the_field(case, overrides, field, message):
    with pytest.raises(ConfigError) as info:
        load_config_dict(apply_overrides(TINY_CONFIG, overrides))
    assert field in info.value.errors, info.value.errors
    assert message in " ".join(info.value.errors[field])


def test_yaml_python_tags_are_rejected(tmp_path, dataset_root, teacher_env):
    cfg = tmp_path / "evil.yaml"
    cfg.write_text("name: !!python/object/apply:os.system ['touch /tmp/pwned-by-teacher']\n")
    proc = run_teacher(["train", "--config", str(cfg)], teacher_env)
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr
    assert not Path("/tmp/pwned-by-teacher").exists()


def test_cli_exit_code_and_message_for_a_bad_config(tmp_path, teacher_env):
    cfg = write_config(tmp_path / "c.yaml", apply_overrides(TINY_CONFIG, {"optim.lr": -1}))
    proc = run_teacher(["train", "--config", str(cfg), "--run-dir", str(tmp_path / "run")], teacher_env)
    assert proc.returncode == 2
    assert "optim.lr" in proc.stderr and "greater than" in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing created before validation passes


def test_set_overrides_are_validated(tmp_path, teacher_env):
    cfg = write_config(tmp_path / "c.yaml", TINY_CONFIG)
    result = CliRunner().invoke(main, ["train", "--config", str(cfg), "--set", "optim.warmup=3"])
    assert result.exit_code == 2 and "optim.warmup" in result.output


def test_fractional_integer_in_yaml_is_exit_2_naming_the_field(tmp_path, teacher_env):
    """The YAML/CLI path uses the same schema: 2.5 epochs is an error, never 2."""
    cfg = write_config(tmp_path / "c.yaml", apply_overrides(TINY_CONFIG, {"optim.epochs": 2.5}))
    result = CliRunner().invoke(main, ["train", "--config", str(cfg), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "optim.epochs" in result.output, result.output
    result = CliRunner().invoke(main, ["train", "--config", str(cfg), "--set", "optim.epochs=3",
                                       "--set", "optim.batch_size=64.9", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "optim.batch_size" in result.output and "optim.epochs" not in result.output
    assert not (tmp_path / "run").exists()


# --- data problems: found by the loader before the first step --------------------------------
def invoke_train(cfg: dict, tmp_path: Path) -> tuple[int, str, Path]:
    path = write_config(tmp_path / "cfg.yaml", cfg)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--config", str(path), "--run-dir", str(run_dir)])
    return result.exit_code, result.output, run_dir


@pytest.fixture
def data_copy(dataset_root, tmp_path, monkeypatch) -> Path:
    root = tmp_path / "data"
    shutil.copytree(dataset_root / "synthetic", root / "synthetic")
    monkeypatch.setenv("TEACHER_DATA_ROOT", str(root))
    monkeypatch.setenv("TEACHER_RUNS_ROOT", str(tmp_path / "runs"))
    return root


def assert_fails_before_training(code: int, output: str, run_dir: Path, *needles: str) -> None:
    assert code == 2, output
    for needle in needles:
        assert needle in output, output
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "steps.jsonl").exists()


def test_class_map_mismatch(data_copy, tmp_path):
    shutil.rmtree(data_copy / "synthetic" / "val" / "red_circle")
    assert_fails_before_training(*invoke_train(TINY_CONFIG, tmp_path), "class map mismatch", "red_circle")


def test_empty_class(data_copy, tmp_path):
    for f in (data_copy / "synthetic" / "train" / "blue_square").iterdir():
        f.unlink()
    assert_fails_before_training(*invoke_train(TINY_CONFIG, tmp_path), "empty class", "blue_square")


def test_csv_label_missing_from_train(data_copy, tmp_path):
    manifest = data_copy / "synthetic" / "manifest.csv"
    rows = list(csv.DictReader(manifest.open()))
    rows = [r for r in rows if not (r["split"] == "train" and r["label"] == "green_circle")]
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "split", "region"])
        w.writeheader()
        w.writerows(rows)
    cfg = apply_overrides(TINY_CONFIG, {"data.format": "csv"})
    assert_fails_before_training(*invoke_train(cfg, tmp_path), "missing from 'train'", "green_circle")


def test_symlink_escaping_the_data_root(data_copy, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (data_copy / "escape").symlink_to(outside, target_is_directory=True)
    cfg = apply_overrides(TINY_CONFIG, {"data.root": "escape"})
    assert_fails_before_training(*invoke_train(cfg, tmp_path), "data.root", "outside its root")


def test_symlinked_image_escaping_the_data_root(data_copy, tmp_path):
    secret = tmp_path / "secret.png"
    shutil.copy(next((data_copy / "synthetic" / "train" / "red_circle").iterdir()), secret)
    (data_copy / "synthetic" / "train" / "red_circle" / "zz_link.png").symlink_to(secret)
    assert_fails_before_training(*invoke_train(TINY_CONFIG, tmp_path), "outside its root")


def test_manifest_path_escaping_the_data_root(data_copy, tmp_path):
    manifest = data_copy / "synthetic" / "manifest.csv"
    with manifest.open("a") as fh:
        fh.write("../../../etc/passwd,red_circle,train,north\n")
    cfg = apply_overrides(TINY_CONFIG, {"data.format": "csv"})
    assert_fails_before_training(*invoke_train(cfg, tmp_path), "manifest line", "'..'")


def test_num_classes_disagreeing_with_data(data_copy, tmp_path):
    cfg = apply_overrides(TINY_CONFIG, {"model.num_classes": 7})
    assert_fails_before_training(*invoke_train(cfg, tmp_path), "model.num_classes", "12")


def test_missing_dataset(data_copy, tmp_path):
    cfg = apply_overrides(TINY_CONFIG, {"data.root": "nope"})
    assert_fails_before_training(*invoke_train(cfg, tmp_path), "data.root", "not found")


def test_pretrained_weights_never_download(data_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cfg = apply_overrides(TINY_CONFIG, {"model.pretrained": True})
    assert_fails_before_training(*invoke_train(cfg, tmp_path), "model.pretrained", "not in the local cache", "Nothing is downloaded")


def test_yaml_on_off_words_are_read_as_the_switch_values():
    """YAML 1.1 parses `off`/`on` as booleans; `amp: off` must still mean "off"."""
    from common.config import parse_yaml

    raw = apply_overrides(TINY_CONFIG, {"runtime": parse_yaml("{amp: off, channels_last: on}")})
    cfg = load_config_dict(raw)
    assert cfg["runtime"]["amp"] == "off" and cfg["runtime"]["channels_last"] == "on"
    with pytest.raises(ConfigError) as info:
        load_config_dict(apply_overrides(TINY_CONFIG, {"runtime.amp": True}))
    assert "runtime.amp" in info.value.errors


def schema_keys(schema, prefix=""):
    from marshmallow import fields

    for name, f in schema.fields.items():
        if isinstance(f, fields.Nested) and name != "filter":
            yield from schema_keys(f.schema, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_readme_config_reference_covers_every_key():
    from common.config import TrainConfigSchema

    readme = (CONFIGS.parent / "README.md").read_text()
    reference = readme.split("## Config reference", 1)[1].split("\n## ", 1)[0]
    missing = [k for k in schema_keys(TrainConfigSchema()) if f"`{k}`" not in reference]
    assert not missing, f"README config reference lacks {missing}"
