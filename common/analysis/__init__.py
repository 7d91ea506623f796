"""Metrics analysis: read a run's metrics from any source, check their integrity, plot them.

This package must not import torch: the training loop calls :mod:`common.analysis.live` after
every epoch and the API calls :mod:`.service` and :mod:`.uploads`. NumPy, Matplotlib and
TensorBoard are imported only by the modules that need them (the readers, :mod:`.plots`, the
TensorBoard reader), so importing the package or the service costs nothing: the names below
are loaded on first use.
"""
from __future__ import annotations

from typing import Any

__all__ = ["AnalysisInputError", "EpochSeries", "RunData", "Source", "StepSeries"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from common.analysis import series

        return getattr(series, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
