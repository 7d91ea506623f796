"""The job lifecycle (common.store.lifecycle) on a real SQLite store: random sequences of events
(submit, claim, heartbeat, interrupt, worker lost, finish with each outcome, cancel, dependents
released or failed, the caps) never reach an illegal state, and every event the transition
table does not allow is refused without changing anything."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, invariant, multiple, rule,
                                 run_state_machine_as_test)
from sqlalchemy import select

from common.store import Base, Job, JobStatus, User, make_engine, make_sessionmaker, transaction
from common.store import lifecycle as lc
from common.store.jobs import create_job, lock_job
from common.store.lifecycle import Event, IllegalTransition, JobConflict, Outcome

FINISHING = [o for o in Outcome if o.status is not None and o.status.finished]
ALLOWED_MOVES = {(frm, to) for (frm, _), to in lc.TRANSITIONS.items()}


@dataclass(frozen=True)
class Row:
    status: JobStatus
    attempts: int
    interruptions: int
    claim_token: str | None
    finished_at: Any
    heartbeat_at: Any
    worker: str | None
    after_id: str | None
    cancel_requested: bool

    @classmethod
    def of(cls, job: Job) -> "Row":
        return cls(job.job_status, job.attempts or 0, job.interruptions or 0, job.claim_token, job.finished_at,
                   job.heartbeat_at, job.worker, job.after_id, bool(job.cancel_requested))


def _store(path: Path) -> Any:
    engine = make_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    factory = make_sessionmaker(engine)
    with transaction(factory) as s:
        s.add(User(name="alice"))
    return engine, factory


class Lifecycle(RuleBasedStateMachine):
    root: Path  # set per test
    counter = itertools.count()
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.engine, self.factory = _store(self.root / f"state-{next(self.counter)}.db")
        self.before: dict[str, Row] = {}
        self.tokens: dict[str, list[str]] = {}  # every claim token a job was given
        self.sent: list[lc.Send] = []

    def teardown(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ helpers
    def rows(self) -> dict[str, Row]:
        with self.factory() as s:
            return {j.id: Row.of(j) for j in s.scalars(select(Job))}

    def event(self, job_id: str, event: Event | None, act: Any) -> None:
        """Run ``act(session, job)`` in a transaction. When ``event`` is given, it must raise
        IllegalTransition exactly when the table has no row for the job's status and event, and
        a refused event changes nothing."""
        before = self.rows()
        legal = event is None or (before[job_id].status, event) in lc.TRANSITIONS
        try:
            with transaction(self.factory) as s:
                result = act(s, lock_job(s, job_id))
        except IllegalTransition as exc:
            assert not legal, f"{event} refused for a {before[job_id].status.value} job: {exc}"
            assert self.rows() == before
            return
        assert legal, f"{event} allowed for a {before[job_id].status.value} job"
        if isinstance(result, list):
            self.sent += result

    # ------------------------------------------------------------------ events
    @rule(target=jobs, after=st.none() | jobs)
    def submit(self, after: str | None) -> Any:
        try:
            with transaction(self.factory) as s:
                user = s.scalar(select(User))
                job = create_job(s, user=user, config={}, name="j", queue="default", priority=5, max_attempts=3,
                                 after_id=after)
                job_id = job.id
        except JobConflict:  # its dependency ended without succeeding: refused
            assert after is not None and self.rows()[after].status in (JobStatus.failed, JobStatus.cancelled)
            return multiple()  # nothing to add
        row = self.rows()[job_id]
        assert row.status == (JobStatus.queued if after is None or self.rows()[after].status == JobStatus.succeeded
                              else JobStatus.waiting)
        return job_id

    @rule(job_id=jobs)
    def claim(self, job_id: str) -> None:
        def act(s: Any, job: Job) -> None:
            self.tokens.setdefault(job_id, []).append(lc.claim(job, "host:1").token)
        self.event(job_id, Event.claim, act)

    @rule(job_id=jobs, current=st.booleans(), trained=st.booleans())
    def heartbeat(self, job_id: str, current: bool, trained: bool) -> None:
        """A beat with the job's latest claim token or an older one (a superseded worker)."""
        tokens = self.tokens.get(job_id) or ["never-claimed"]
        token = tokens[-1] if current else tokens[0]
        progress = {"status": "running", "updated_at": time.time() + 1} if trained else None
        before = self.rows()[job_id]

        def act(s: Any, _: Job) -> None:
            job = lc.locked_attempt(s, job_id, token)
            if job is not None:
                assert job.job_status == JobStatus.running and before.claim_token == token
                lc.heartbeat(job, child_pid=123, run_seconds=1.0, progress=progress)
        self.event(job_id, None, act)
        if before.claim_token != token:
            assert self.rows()[job_id] == before  # a superseded attempt changes nothing

    @rule(job_id=jobs, graceful=st.booleans())
    def interrupt(self, job_id: str, graceful: bool) -> None:
        self.event(job_id, Event.interrupt, lambda s, job: lc.interrupt(job, "interrupted: test", graceful=graceful))

    @rule(job_id=jobs)
    def worker_lost(self, job_id: str) -> None:
        self.event(job_id, Event.worker_lost, lambda s, job: lc.worker_lost(job, "worker lost: test"))

    @rule(job_id=jobs, outcome=st.sampled_from(FINISHING))
    def finish(self, job_id: str, outcome: Outcome) -> None:
        """Each finishing outcome, the caps (worker_lost, interrupted_too_often) included."""
        event = {JobStatus.succeeded: Event.succeed, JobStatus.failed: Event.fail,
                 JobStatus.cancelled: Event.cancel}[outcome.status]
        self.event(job_id, event, lambda s, job: lc.finish(s, job, outcome, "test", exit_code=0))

    @rule(job_id=jobs)
    def request_cancel(self, job_id: str) -> None:
        before = self.rows()[job_id]
        try:
            with transaction(self.factory) as s:
                lc.request_cancel(s, lock_job(s, job_id))
        except IllegalTransition:
            assert before.status.finished and self.rows()[job_id] == before
            return
        after = self.rows()[job_id]
        assert after.cancel_requested
        assert after.status == (JobStatus.running if before.status == JobStatus.running else JobStatus.cancelled)

    @rule(job_id=jobs)
    def release_dependents(self, job_id: str) -> None:
        """As the reconciler does for a waiting job whose dependency finished."""
        before = self.rows()
        try:
            with transaction(self.factory) as s:
                self.sent += lc.release_dependents(s, lock_job(s, job_id))
        except JobConflict:
            assert not before[job_id].status.finished and self.rows() == before

    # ------------------------------------------------------------------ invariants
    @invariant()
    def no_illegal_state(self) -> None:
        rows = self.rows()
        for job_id, row in rows.items():
            prev = self.before.get(job_id)
            if prev is not None:
                if prev.status.finished:
                    assert row.status == prev.status, "a finished job changed status"
                if row.status != prev.status:
                    assert (prev.status, row.status) in ALLOWED_MOVES, (prev.status, row.status)
                assert row.attempts >= prev.attempts and row.interruptions >= prev.interruptions
            assert row.interruptions <= row.attempts
            # a job runs only under a claim, and a claim only while it runs
            assert (row.status == JobStatus.running) == (row.claim_token is not None)
            if row.status == JobStatus.running:
                assert row.attempts >= 1 and row.heartbeat_at is not None and row.worker
            assert (row.finished_at is not None) == row.status.finished
            dep = rows.get(row.after_id) if row.after_id else None
            if row.status == JobStatus.waiting:
                assert dep is not None and not dep.status.finished, "waits for a job that finished"
            if dep is not None and row.status in (JobStatus.queued, JobStatus.running, JobStatus.interrupted,
                                                  JobStatus.succeeded):
                assert dep.status == JobStatus.succeeded, "started before its dependency succeeded"
        for msg in self.sent:  # only runnable jobs are ever sent
            assert msg.job_id in rows
        self.before = rows

    @invariant()
    def sent_jobs_were_runnable(self) -> None:
        rows = self.rows()
        for msg in self.sent:
            assert rows[msg.job_id].status != JobStatus.waiting
        self.sent = []


def test_random_event_sequences_never_reach_an_illegal_state(tmp_path):
    Lifecycle.root = tmp_path
    run_state_machine_as_test(Lifecycle, settings=settings(
        max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]))


# ---------------------------------------------------------------------------- the table itself
def test_finished_statuses_have_no_transitions_and_every_status_is_reachable():
    assert not {frm for frm, _ in lc.TRANSITIONS} & lc.FINISHED
    reached = {JobStatus.queued, JobStatus.waiting} | set(lc.TRANSITIONS.values())
    assert reached == set(JobStatus)


def test_every_outcome_names_its_status():
    assert {o.status for o in FINISHING} == lc.FINISHED
    assert Outcome.interrupted.status == JobStatus.interrupted
    assert Outcome.superseded.status is None and Outcome.skipped.status is None
    with pytest.raises(ValueError):
        lc.finish(None, None, Outcome.interrupted)  # type: ignore[arg-type]


def test_a_cancel_of_a_finished_job_is_a_conflict_the_api_answers_409(tmp_path):
    _, factory = _store(tmp_path / "s.db")
    with transaction(factory) as s:
        job = create_job(s, user=s.scalar(select(User)), config={}, name="j", queue="q", priority=5, max_attempts=3)
        lc.finish(s, job, Outcome.succeeded)
        with pytest.raises(IllegalTransition) as info:
            lc.request_cancel(s, job)
    assert isinstance(info.value, JobConflict) and str(info.value) == "job already succeeded"


def test_send_publishes_after_the_commit_and_returns_what_failed(tmp_path):
    _, factory = _store(tmp_path / "s.db")
    with transaction(factory) as s:
        user = s.scalar(select(User))
        ok, bad = (create_job(s, user=user, config={}, name=n, queue="q", priority=5, max_attempts=3).id
                   for n in ("ok", "bad"))
    published: list[str] = []

    def publish(job_id: str, queue: str, priority: int) -> None:
        if job_id == bad:
            raise ConnectionError("redis down")
        published.append(job_id)

    unsent = lc.send(factory, publish, [lc.Send(ok, "q", 5), lc.Send(bad, "q", 5)])
    assert published == [ok] and [m.job_id for m in unsent] == [bad]
    with factory() as s:
        enqueued = {j.id: j.enqueued_at for j in s.scalars(select(Job))}
    assert enqueued[ok] is not None and enqueued[bad] is None


def test_the_cli_waits_for_the_stores_finished_statuses():
    from common.apps.service_cli import FINISHED as CLI_FINISHED

    assert CLI_FINISHED == {s.value for s in lc.FINISHED}
