"""Metrics analysis: read a run's metrics from any source, check their integrity, plot them.

This package must not import torch: the training loop calls :mod:`common.analysis.live` after
every epoch and the API may import the report types. Matplotlib and TensorBoard are imported
only by the modules that need them (:mod:`.plots`, the TensorBoard reader).
"""
from __future__ import annotations

from common.analysis.series import AnalysisInputError, EpochSeries, RunData, Source, StepSeries

__all__ = ["AnalysisInputError", "EpochSeries", "RunData", "Source", "StepSeries"]
