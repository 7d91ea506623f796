"""The ``teacher`` command line. Each subcommand lives in its own module and is imported only
when it runs, so ``teacher status`` never pays for importing torch or matplotlib.

Core code raises specific errors; this is the edge that turns them into a message and an exit
code (2 for bad input, 1 for a failed run).
"""
from __future__ import annotations

import importlib
from typing import Any

import click

# name -> "module:attribute" of a click.Command
COMMANDS: dict[str, str] = {
    "train": "worker.training.cli:train",
    "make-data": "worker.training.cli:make_data",
    "evaluate": "worker.training.cli:evaluate_cmd",
    "export": "worker.training.export_cli:export_cmd",
    "analyze": "common.analysis.cli:analyze",
    # job-service client and operations (common/apps/service_cli.py)
    "submit": "common.apps.service_cli:submit",
    "status": "common.apps.service_cli:status",
    "logs": "common.apps.service_cli:logs",
    "cancel": "common.apps.service_cli:cancel",
    "download": "common.apps.service_cli:download",
    "tokens": "common.apps.service_cli:tokens",
    "serve": "common.apps.serve:serve",
    "db": "common.apps.service_cli:db",
    "prune": "common.apps.prune:prune",
    "demo": "common.apps.demo:demo",
    "doctor": "common.apps.doctor:doctor",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module_name, attr = COMMANDS[name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main(**_: Any) -> None:
    """Train image-classification teacher models with exact, checked metrics."""


if __name__ == "__main__":  # pragma: no cover
    main()
