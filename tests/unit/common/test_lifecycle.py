"""The job lifecycle (common.store.lifecycle) on a real SQLite store: random sequences of events
(submit, claim, heartbeat, interrupt, worker lost, finish with each outcome, cancel, dependents
released or failed, the caps) never reach an illegal state, and every event the transition
table does not allow is refused without changing anything. Every claim has its attempts row,
closed with a cause by the event that ends it; interruptions + failures never exceed attempts."""
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

from common.rundir import CheckpointEntry
from common.store import Base, Job, JobStatus, User, make_engine, make_sessionmaker, transaction
from common.store import lifecycle as lc
from common.store.attempts import RunView
from common.store.jobs import create_job, lock_job
from common.store.lifecycle import Event, IllegalTransition, JobConflict, Outcome
from common.store.models import AttemptCause, JobAttempt

FINISHING = [o for o in Outcome if o.status is not None and o.status.finished]
ALLOWED_MOVES = {(frm, to) for (frm, _), to in lc.TRANSITIONS.items()}
RESUMED = sorted(lc.INTERRUPTION_CAUSES | lc.FAILURE_CAUSES, key=lambda c: c.value)
FINISH_CAUSES = [None, AttemptCause.training_failed, AttemptCause.failed]


def _checkpoint(age_s: float) -> CheckpointEntry:
    return CheckpointEntry("step_00000040.pt", 1, 40, 10, "0" * 64, {}, time.time() - age_s)


# The run directory an event may be told about: unknown, nothing written, a checkpoint
# written a while ago (possibly before the attempt started).
RUNS = st.sampled_from([None, RunView()]) | st.floats(0, 3600).map(lambda age: RunView(_checkpoint(age)))


@dataclass(frozen=True)
class AttemptRow:
    number: int
    ended: bool
    cause: str | None
    lost_s: float | None
    resumed_from: Any

    @classmethod
    def of(cls, a: JobAttempt) -> "AttemptRow":
        return cls(a.number, a.ended_at is not None, a.cause, a.lost_s, a.resumed_from)


@dataclass(frozen=True)
class Row:
    status: JobStatus
    attempts: int
    interruptions: int
    failures: int
    claim_token: str | None
    finished_at: Any
    heartbeat_at: Any
    worker: str | None
    after_id: str | None
    cancel_requested: bool

    @classmethod
    def of(cls, job: Job) -> "Row":
        return cls(job.job_status, job.attempts or 0, job.interruptions or 0, job.failures or 0, job.claim_token,
                   job.finished_at, job.heartbeat_at, job.worker, job.after_id, bool(job.cancel_requested))


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

    def attempt_rows(self) -> dict[str, list[AttemptRow]]:
        with self.factory() as s:
            out: dict[str, list[AttemptRow]] = {j.id: [] for j in s.scalars(select(Job))}
            for a in s.scalars(select(JobAttempt).order_by(JobAttempt.id)):
                out[a.job_id].append(AttemptRow.of(a))
            return out

    def event(self, job_id: str, event: Event | None, act: Any) -> None:
        """Run ``act(session, job)`` in a transaction. When ``event`` is given, it must raise
        IllegalTransition exactly when the table has no row for the job's status and event, and
        a refused event changes nothing."""
        before, attempts_before = self.rows(), self.attempt_rows()
        legal = event is None or (before[job_id].status, event) in lc.TRANSITIONS
        try:
            with transaction(self.factory) as s:
                result = act(s, lock_job(s, job_id))
        except IllegalTransition as exc:
            assert not legal, f"{event} refused for a {before[job_id].status.value} job: {exc}"
            assert self.rows() == before and self.attempt_rows() == attempts_before
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

    @rule(job_id=jobs, run=RUNS)
    def claim(self, job_id: str, run: RunView | None) -> None:
        def act(s: Any, job: Job) -> None:
            self.tokens.setdefault(job_id, []).append(lc.claim(job, "host:1", run).token)
        before = self.rows()[job_id].attempts
        self.event(job_id, Event.claim, act)
        if self.rows()[job_id].attempts > before:  # claimed: where it resumes from, as the manifest says
            opened = self.attempt_rows()[job_id][-1]
            if run is None or run.resume_point is None:
                assert opened.resumed_from is None
            else:  # a step file: its position in the epoch is the trainer's to report
                assert opened.resumed_from["step"] == 40 and opened.resumed_from["batch"] is None

    @rule(job_id=jobs, current=st.booleans(), trained=st.booleans(), reports=st.booleans())
    def heartbeat(self, job_id: str, current: bool, trained: bool, reports: bool) -> None:
        """A beat with the job's latest claim token or an older one (a superseded worker); its
        progress may report where the attempt resumed from."""
        tokens = self.tokens.get(job_id) or ["never-claimed"]
        token = tokens[-1] if current else tokens[0]
        point = {"epoch": 1, "step": 40, "batch": 7, "checkpoint": "step_00000040.pt", "created_at": 1.0}
        progress = ({"status": "running", "updated_at": time.time() + 1, **({"resumed_from": point} if reports else {})}
                    if trained else None)
        before = self.rows()[job_id]

        def act(s: Any, _: Job) -> None:
            job = lc.locked_attempt(s, job_id, token)
            if job is not None:
                assert job.job_status == JobStatus.running and before.claim_token == token
                lc.heartbeat(job, child_pid=123, run_seconds=1.0, progress=progress)
        self.event(job_id, None, act)
        if before.claim_token != token:
            assert self.rows()[job_id] == before  # a superseded attempt changes nothing
        elif trained and reports:
            assert self.attempt_rows()[job_id][-1].resumed_from == point  # the trainer's word wins

    @rule(job_id=jobs, cause=st.sampled_from(RESUMED), run=RUNS)
    def interrupt(self, job_id: str, cause: AttemptCause, run: RunView | None) -> None:
        before = self.rows()[job_id]
        self.event(job_id, Event.interrupt,
                   lambda s, job: lc.interrupt(job, "interrupted: test", cause=cause, exit_code=3, run=run))
        after = self.rows()[job_id]
        if after.status != before.status:  # it happened: counted once, as its cause says
            failure = cause in lc.FAILURE_CAUSES
            assert (after.failures - before.failures, after.interruptions - before.interruptions) == \
                ((1, 0) if failure else (0, 1))
            last = self.attempt_rows()[job_id][-1]
            assert last.cause == cause.value and (last.lost_s is None) == (run is None)

    @rule(job_id=jobs, run=RUNS)
    def worker_lost(self, job_id: str, run: RunView | None) -> None:
        self.event(job_id, Event.worker_lost, lambda s, job: lc.worker_lost(job, "worker lost: test", run))

    @rule(job_id=jobs, outcome=st.sampled_from(FINISHING), cause=st.sampled_from(FINISH_CAUSES))
    def finish(self, job_id: str, outcome: Outcome, cause: AttemptCause | None) -> None:
        """Each finishing outcome, the caps (worker_lost, interrupted_too_often) included; a
        failure of the training's own counts as a failure."""
        event = {JobStatus.succeeded: Event.succeed, JobStatus.failed: Event.fail,
                 JobStatus.cancelled: Event.cancel}[outcome.status]
        before = self.rows()[job_id]
        self.event(job_id, event, lambda s, job: lc.finish(s, job, outcome, "test", exit_code=0, cause=cause))
        after = self.rows()[job_id]
        if before.status == JobStatus.running and after.status.finished:
            last = self.attempt_rows()[job_id][-1]
            expected = cause.value if cause else {JobStatus.succeeded: "succeeded", JobStatus.cancelled: "cancelled"}.get(
                after.status, "failed")
            assert last.ended and last.cause == expected and last.lost_s is None
            assert after.failures - before.failures == (cause == AttemptCause.training_failed)

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
    def an_attempts_row_per_claim(self) -> None:
        rows, attempt_rows = self.rows(), self.attempt_rows()
        for job_id, row in rows.items():
            mine = attempt_rows[job_id]
            assert [a.number for a in mine] == list(range(1, row.attempts + 1)), "a row per claim, in order"
            assert row.interruptions + row.failures <= row.attempts
            assert all(a.cause for a in mine if a.ended), "every closed row has a cause"
            assert all(a.cause is None for a in mine if not a.ended)
            # the latest attempt's row is open exactly while the job runs; every earlier one is closed
            assert all(a.ended for a in mine[:-1])
            if mine:
                assert mine[-1].ended == (row.status != JobStatus.running)
            assert all(a.lost_s is None or a.lost_s >= 0 for a in mine)
            # each ended attempt counts once, as its cause says (a worker lost: either), the others not at all
            counted = {c.value for c in RESUMED} | {AttemptCause.worker_lost.value}
            assert row.interruptions + row.failures == sum(a.cause in counted for a in mine)
            assert row.failures >= sum(a.cause in {c.value for c in lc.FAILURE_CAUSES} for a in mine)
            assert row.interruptions >= sum(a.cause in {c.value for c in lc.INTERRUPTION_CAUSES} for a in mine)

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
                assert row.failures >= prev.failures
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
