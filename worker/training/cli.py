"""``teacher train``, ``teacher make-data`` and ``teacher evaluate``: the edge where the
training core's errors become messages and exit codes.

Exit codes of ``teacher train``: 0 succeeded, 1 training failed, 2 bad config or input, 3
stopped by a signal (resumable with ``--resume``), 4 no space left on the device (or disk quota
exceeded) while writing the run's files: the checkpoints written before are intact, and the
run is resumable once there is space again. Exit code 4 is the one report of a full disk that
always arrives: progress.json and train.log are on the full volume too.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from common.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    load_train_config,
    parse_set_option,
    parse_yaml,
)
from common.settings import data_root as default_data_root, runs_root as default_runs_root


def _fail(message: str, code: int) -> None:
    try:
        click.echo(f"error: {message}", err=True)
    except OSError:
        pass  # stderr is a file on a full disk: the exit code must still get out
    sys.exit(code)


def resolve_config(config_path: str | None, resume_dir: Path | None, sets: tuple[str, ...],
                   debug: bool, max_samples: int | None) -> TrainConfig:
    if resume_dir is not None:
        cfg_file = resume_dir / "config.yaml"
        if not cfg_file.is_file():
            raise ConfigError({"--resume": [f"{resume_dir} holds no run (no config.yaml)"]})
        if sets or debug or max_samples:
            raise ConfigError({"--resume": ["a resumed run keeps its config; --set/--debug/--max-samples are not allowed"]})
        return load_train_config(parse_yaml(cfg_file.read_text(), source=str(cfg_file)))
    assert config_path is not None
    raw = parse_yaml(Path(config_path).read_text(encoding="utf-8"), source=config_path)
    if not isinstance(raw, dict):
        raise ConfigError({"_schema": [f"{config_path}: a config must be a mapping of sections"]})
    overrides = dict(parse_set_option(item) for item in sets)
    if max_samples is not None:
        overrides["data.max_samples"] = max_samples
    cfg = load_train_config(apply_overrides(raw, overrides))
    if debug:
        # --debug: the same code path, made quick and talkative (the original workflow's quick test).
        cfg = cfg.replace(optim={"epochs": min(cfg.optim.epochs, 2)}, runtime={"log_interval": 1, "num_workers": 0})
    return cfg


def default_run_dir(name: str) -> Path:
    """``RUNS_ROOT/<name>`` for the first run of a config name, then
    ``RUNS_ROOT/<name>-<UTC YYYYmmdd-HHMMSS>``, then ``...-2``, ``-3``, ... for runs started in
    the same second. The directory is created here (mkdir fails if it exists), so two runs
    started at once can never share one."""
    root = default_runs_root()
    root.mkdir(parents=True, exist_ok=True)
    stamped = f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    for candidate in (name, stamped, *(f"{stamped}-{n}" for n in range(2, 10_000))):
        try:
            (root / candidate).mkdir()
        except FileExistsError:
            continue
        return root / candidate
    raise FileExistsError(f"no free run directory for {name!r} under {root}")


@click.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), help="YAML config file.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), help="Output directory (default: runs root / config name).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, path_type=Path), help="Continue the run in this directory from its last good checkpoint.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config value, e.g. --set optim.lr=0.01 (repeatable).")
@click.option("--debug", is_flag=True, help="Quick check: at most 2 epochs, log every step, no loader workers, debug logging.")
@click.option("--max-samples", type=click.IntRange(min=1), help="Use at most N samples per split.")
def train(config_path: str | None, run_dir: Path | None, resume_dir: Path | None, sets: tuple[str, ...],
          debug: bool, max_samples: int | None) -> None:
    """Train a teacher model from a config (or resume a run)."""
    if (config_path is None) == (resume_dir is None):
        _fail("give exactly one of --config FILE or --resume RUN_DIR", 2)
    try:
        cfg = resolve_config(config_path, resume_dir, sets, debug, max_samples)
    except ConfigError as exc:
        _fail(f"invalid config: {exc}", 2)
    rank_of_several = int(os.environ.get("WORLD_SIZE", "1")) > 1  # started by torchrun, below
    if resume_dir is not None:
        run_dir = resume_dir
    elif run_dir is None:
        run_dir = default_run_dir(cfg.name)
    elif (run_dir / "config.yaml").exists() and not rank_of_several:  # (rank 0 may have written it)
        _fail(f"{run_dir} already holds a run; use --resume {run_dir} or another --run-dir", 2)
    if cfg.resources.world_size > 1 and not rank_of_several:
        # Several processes: this one becomes torchrun's agent, and each rank runs this command
        # again (with the run directory chosen here).
        from .engine import TrainingError, require_gpus
        from .launch import exit_as, launch

        try:
            require_gpus(cfg)  # before starting any rank
        except TrainingError as exc:
            _fail(f"training failed: {exc}", 1)

        args = ["--resume", str(run_dir)] if resume_dir is not None else \
            ["--config", str(config_path), "--run-dir", str(run_dir), *(f"--set={item}" for item in sets),
             *(["--debug"] if debug else []), *([f"--max-samples={max_samples}"] if max_samples else [])]
        code = launch(cfg.resources.world_size, args)
        if code == 0:
            click.echo(f"run directory: {run_dir}")
        exit_as(code)

    # Imported here so `teacher --help` and config errors do not pay for importing torch.
    from .checkpoints import CheckpointError
    from .engine import (EXIT_BAD_INPUT, EXIT_FAILED, EXIT_NO_SPACE, EXIT_STOPPED, TrainingError, exit_code_for,
                         find_no_space, no_space_message, train as run_training)

    try:
        result = run_training(cfg, run_dir, resume=resume_dir is not None, debug=debug)
    except Exception as exc:
        code = exit_code_for(exc)
        if code == EXIT_STOPPED:
            _fail(f"stopped; resume with: teacher train --resume {run_dir}", EXIT_STOPPED)
        if code == EXIT_NO_SPACE:  # whatever wrapped it: a full disk is its own outcome
            _fail(f"training failed: {no_space_message(find_no_space(exc), run_dir)}; free space, then resume "
                  f"with: teacher train --resume {run_dir}", EXIT_NO_SPACE)
        if code == EXIT_BAD_INPUT:  # includes data and model errors found before the first step
            _fail(str(exc), EXIT_BAD_INPUT)
        if isinstance(exc, (TrainingError, CheckpointError, OSError)):
            _fail(f"training failed: {exc}", EXIT_FAILED)
        raise  # a bug: keep its traceback (exit 1)
    if rank_of_several:
        return  # the launcher says it, once
    try:
        click.echo(f"run directory: {result.run_dir}")
    except OSError:
        pass


@click.command("make-data")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Directory (default: data root / synthetic).")
@click.option("--classes", type=click.IntRange(2, 24), default=12, show_default=True)
@click.option("--train-per-class", type=click.IntRange(1, 100_000), default=60, show_default=True)
@click.option("--val-per-class", type=click.IntRange(1, 100_000), default=15, show_default=True)
@click.option("--image-size", type=click.IntRange(16, 512), default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--if-missing", is_flag=True, help="Do nothing (exit 0) when the dataset is already there.")
def make_data(out: Path | None, classes: int, train_per_class: int, val_per_class: int, image_size: int, seed: int,
              if_missing: bool) -> None:
    """Write a small learnable synthetic image dataset (imagefolder + csv manifest)."""
    from .synthetic import SyntheticSpec, make_dataset

    out = out or default_data_root() / "synthetic"
    if (out / "manifest.csv").exists():
        if if_missing:
            click.echo(f"{out} already holds a dataset; kept")
            return
        _fail(f"{out} already holds a dataset; remove it or choose another --out", 2)
    sizes = make_dataset(out, SyntheticSpec(classes, train_per_class, val_per_class, image_size, seed))
    click.echo(f"wrote {sizes['train']} train and {sizes['val']} val images in {classes} classes to {out}")


@click.command("evaluate")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
def evaluate_cmd(checkpoint: Path, device: str) -> None:
    """Re-evaluate a checkpoint on its run's validation split; print the metrics as JSON."""
    from .checkpoints import CheckpointError
    from .engine import TrainingError, evaluate_checkpoint

    try:
        result = evaluate_checkpoint(checkpoint, device=device)
    except ConfigError as exc:
        _fail(str(exc), 2)
    except (CheckpointError, TrainingError) as exc:
        _fail(str(exc), 1)
    click.echo(json.dumps(result, allow_nan=False))
