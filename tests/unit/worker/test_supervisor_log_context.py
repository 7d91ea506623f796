"""The supervisor runs a job inside log_context(job_id=...), with the attempt bound once the
claim knows it, so every service log line of that job names both (and lines after it do not)."""
from __future__ import annotations

from common import faults
from common.logs import current_fields
from worker import supervisor as sup


def _supervisor(monkeypatch, claim, run):
    monkeypatch.delenv("TEACHER_FAULT", raising=False)
    monkeypatch.setattr(faults, "_current", None)
    s = object.__new__(sup.Supervisor)
    s.claim = lambda job_id: (seen.append(current_fields()), claim(job_id))[1]
    s._run_claimed = run
    seen: list[dict] = []
    return s, seen


def test_a_claimed_job_logs_with_its_id_and_attempt(monkeypatch):
    during: list[dict] = []
    s, at_claim = _supervisor(monkeypatch, lambda job_id: sup.Claim(job_id, 3, "token", {}),
                              lambda claim: (during.append(current_fields()), sup.Outcome.succeeded)[1])
    assert s.run("a" * 32) == sup.Outcome.succeeded
    assert at_claim == [{"job_id": "a" * 32}]  # the attempt is not known before the claim
    assert during == [{"job_id": "a" * 32, "attempt": 3}]
    assert current_fields() == {}  # the context ends with the job


def test_a_skipped_delivery_leaves_no_context(monkeypatch):
    s, at_claim = _supervisor(monkeypatch, lambda job_id: None, lambda claim: None)
    assert s.run("b" * 32) == sup.Outcome.skipped
    assert at_claim == [{"job_id": "b" * 32}] and current_fields() == {}
