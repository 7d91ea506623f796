"""The integrity check the training loop runs after every epoch on its own run directory.

Cheap by design: reads history.json, steps.jsonl and train.log (TensorBoard is skipped: its
reader costs more than the check and duplicates what the other files say), never imports
torch or matplotlib, and accepts a run directory where only some files exist yet.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from common.analysis.checks import run_checks
from common.analysis.readers import read_run_dir
from common.analysis.report import Report


def run_integrity(run_dir: Path, num_classes: int | None = None,
                  dataset_sizes: Mapping[str, int] | None = None) -> Report:
    """Check the metrics written so far. ``num_classes``/``dataset_sizes`` override what the
    run directory says (the loop knows them before history.json exists).

    Raises :class:`common.analysis.series.AnalysisInputError` only when a file exists but is
    malformed (e.g. a corrupt line in the middle of steps.jsonl); missing files are not errors.
    """
    run = read_run_dir(Path(run_dir), include_tensorboard=False)
    if num_classes is not None:
        run.num_classes = int(num_classes)
    if dataset_sizes:
        run.dataset_sizes = {str(k): int(v) for k, v in dataset_sizes.items()}
    return run_checks(run)
