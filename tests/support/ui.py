"""Helpers for the dashboard's tests (tests/unit/api/test_ui_*.py, tests/system/test_ui_browser.py)
and bench/ui_pages.py: a page's CSRF token, and the original incident's history.json."""
from __future__ import annotations

import re
from pathlib import Path

XSS = '<script>window.__xss=1</script>"><img src=x onerror="window.__xss=2">'


def csrf_of(html: str) -> str:
    """The CSRF token of the first form in a dashboard page."""
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


def incident_history(run_dir: Path) -> None:
    """The original incident: train loss 0.0 every epoch, val loss stuck at 9.5393 (4 epochs)."""
    from common.rundir import EpochRecord, History, RunPaths, SplitMetrics

    epochs = [EpochRecord(i, i * 10, 0.01, 1.0, SplitMetrics(0.0, 10.0 + i, 50.0, 640, 100.0),
                          SplitMetrics(9.5393, 1.0, 5.0, 160)) for i in range(1, 5)]
    run_dir.mkdir(parents=True, exist_ok=True)
    History(num_classes=12, class_names=[f"c{i}" for i in range(12)], dataset_sizes={"train": 640, "val": 160},
            epochs=epochs).write(RunPaths(run_dir).history)
