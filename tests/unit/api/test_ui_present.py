"""The dashboard's number formatting (api/ui/present.py): what the server renders must match
what ui.js writes in live updates (half-up on the exact value, no trailing zeros)."""
from __future__ import annotations

import pytest

from api.ui import present


@pytest.mark.parametrize("value, text", [(81.25, "81.3%"), (0.0, "0.0%"), (100, "100.0%"), (None, "–"), ("nan", "nan")])
def test_pct(value, text):
    assert present.pct(value) == text or (isinstance(value, str) and present.pct(value) == "–")


@pytest.mark.parametrize("value, digits, text", [
    (0.0013934, 4, "0.001393"), (1.0, 3, "1"), (0.001, 3, "0.001"), (12345.6, 3, "12,346"), (0.000933, 3, "0.000933"),
    (None, 3, "–"), ("inf", 3, "inf"), (float("nan"), 3, "nan"), (True, 3, "–"),
])
def test_num(value, digits, text):
    assert present.num(value, digits) == text


@pytest.mark.parametrize("seconds, text", [(5, "5s"), (65, "1m 05s"), (3725, "1h 02m"), (None, "–"), (-1, "–")])
def test_duration(seconds, text):
    assert present.duration(seconds) == text


def test_errors_point_at_their_yaml_line():
    text = "name: x\noptim:\n  lr: -1\n  epochs: 2\n"
    out = present.errors_with_lines(text, {"optim.lr": ["must be positive"], "data": ["missing"], "name.deep": ["?"]})
    assert out["optim.lr"] == {"messages": ["must be positive"], "line": 3}
    assert out["data"]["line"] is None and out["name.deep"]["line"] == 1
    assert present.errors_with_lines("a: [", {"_schema": ["bad"]})["_schema"]["line"] == 1
