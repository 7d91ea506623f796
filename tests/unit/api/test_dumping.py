"""api.dumping: a compiled dump gives what marshmallow's Schema.dump gives (the list of jobs is
dumped by it; the poll, by marshmallow), field kinds it does not know included."""
from __future__ import annotations

import datetime as dt
import decimal
import time
from types import SimpleNamespace
from typing import Any

import marshmallow as ma
import pytest
from marshmallow import fields

from api.dumping import CompiledDump, CompiledList, compile_dump
from api.schemas import DerivedInteger, JobSchema
from common.rundir import CheckpointEntry
from common.store import transaction
from common.store import lifecycle as lc
from common.store.attempts import RunView
from common.store.jobs import lock_job
from common.store.models import AttemptCause, StopCause
from tests.support.api import CFG


class Inner(ma.Schema):
    a = fields.Integer()
    b = fields.String(data_key="B")
    gone = fields.Float(dump_default=1.5)


class Outer(ma.Schema):
    text = fields.String()
    number = fields.Integer()
    flag = fields.Boolean()
    ratio = fields.Float()
    when = fields.DateTime()
    dotted = fields.String(attribute="owner.name")
    renamed = fields.Integer(attribute="other")
    absent = fields.String()
    defaulted = fields.Integer(dump_default=lambda: 7)
    derived = DerivedInteger(derive=lambda obj: len(obj.text or ""))
    function = fields.Function(lambda obj: "f:" + str(obj.number))
    method = fields.Method("_m")
    money = fields.Decimal(as_string=True)
    plain = fields.Dict()
    typed = fields.Dict(keys=fields.String(), values=fields.Integer())
    tags = fields.List(fields.String())
    one = fields.Nested(Inner, allow_none=True)
    many = fields.List(fields.Nested(Inner))
    nested_many = fields.Nested(Inner, many=True)
    raw = fields.Raw()
    numeric_text = fields.String()

    def _m(self, obj: Any) -> str:
        return "m"


class WithHook(ma.Schema):
    x = fields.Integer()

    @ma.post_dump
    def _add(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        return {**data, "hooked": True}


def _objects() -> list[Any]:
    when = dt.datetime(2026, 12, 2, 5, 0, 1, 123, tzinfo=dt.timezone.utc)
    full = SimpleNamespace(
        text="héllo", number=3, flag=1, ratio=2, when=when, owner=SimpleNamespace(name="alice"), other="4",
        derived=None, money=decimal.Decimal("1.10"), plain={"k": [1]}, typed={"x": "5", 2: 3.0}, tags=["a", 5],
        one={"a": "9", "b": 8}, many=[{"a": 1}, SimpleNamespace(a=2, b=None)], nested_many=[{"b": "z"}],
        raw=object(), numeric_text=12, defaulted=None)
    empty = SimpleNamespace(text=None, number=None, flag=None, ratio=None, when=None, owner=None, other=None,
                            money=None, plain=None, typed=None, tags=None, one=None, many=[], nested_many=None,
                            raw=None, numeric_text=None)
    return [full, empty]


class FromDict(ma.Schema):
    text = fields.String()
    items = fields.String()  # a key of the dict, and a method of dict when the key is absent
    keys = fields.Raw()
    one = fields.Nested(Inner)
    absent = fields.Integer()


@pytest.mark.parametrize("index", range(2))
def test_a_compiled_dump_equals_marshmallows_for_every_field_kind(index: int):
    obj = _objects()[index]
    schema = Outer()
    ours, theirs = compile_dump(schema)(obj), schema.dump(obj)
    assert ours == theirs
    assert list(ours) == list(theirs)  # the same keys in the same order (data_key, missing ones left out)


def test_a_compiled_dump_of_a_dict_reads_its_keys_as_marshmallow_does():
    obj = {"text": "d", "items": 5, "one": {"a": 2}}
    schema = FromDict()
    ours, theirs = compile_dump(schema)(obj), schema.dump(obj)
    assert ours == theirs and ours["items"] == "5" and "absent" not in ours
    assert ours["keys"] == obj.keys  # marshmallow's getattr fallback, kept


def test_a_schema_with_dump_hooks_is_dumped_by_marshmallow():
    assert compile_dump(WithHook())({"x": "2"}) == {"x": 2, "hooked": True}


def test_a_compiled_dump_schema_dumps_one_object_compiled_and_many_as_marshmallow():
    class Compiled(CompiledDump, Outer):
        pass

    class Hooked(CompiledDump, WithHook):  # falls back to marshmallow's dump, without recursing
        pass

    objs = _objects()
    assert Compiled().dump(objs[0]) == Outer().dump(objs[0])
    assert Compiled(many=True).dump(objs) == Compiled().dump(objs, many=True) == Outer(many=True).dump(objs)
    assert Hooked().dump({"x": "2"}) == {"x": 2, "hooked": True}


def test_a_compiled_list_dumps_each_item_as_the_nested_schema_does():
    class Page(ma.Schema):
        items = CompiledList(fields.Nested(Outer))

    objs = _objects()
    assert Page().dump({"items": objs}) == {"items": Outer(many=True).dump(objs)}
    assert Page().dump({"items": None}) == {"items": None}


def _event(app, job_id: str, act) -> None:  # type: ignore[no-untyped-def]
    with transaction(app.extensions["teacher"].sessions) as s:
        act(lock_job(s, job_id))


def test_each_job_of_the_list_is_the_jobs_own_response(app, client, alice, monkeypatch):
    """GET /jobs and GET /jobs/{id} dump through the compiled JobSchema; here the single job goes
    through marshmallow's own dump instead (the oracle): the same JSON for jobs in every shape
    (attempts, resume point, live progress, failure, tags, after, init_from)."""
    post = lambda body: client.post("/api/v1/jobs", json=body, headers=alice).json["id"]  # noqa: E731
    plain = post(CFG)
    tagged = post({**CFG, "tags": ["b", "a"], "priority": 7})
    later = post({**CFG, "after": plain})
    running = post(CFG)
    ckpt = CheckpointEntry("step_00000040.pt", 1, 40, 10, "0" * 64, {}, time.time() - 30)
    _event(app, running, lambda job: lc.claim(job, "host:1", RunView()))
    _event(app, running, lambda job: lc.interrupt(job, "interrupted: a worker shutdown", exit_code=3,
                                                  cause=AttemptCause.preempted, stop=StopCause.worker_shutdown,
                                                  run=RunView(ckpt)))
    _event(app, running, lambda job: lc.claim(job, "host:2", RunView(ckpt)))
    _event(app, running, lambda job: lc.heartbeat(job, child_pid=7, run_seconds=3.25, progress={
        "status": "running", "phase": "train", "epoch": 1, "percent": 12.5, "latest": {"loss": 0.5, "x": None},
        "updated_at": time.time(), "integrity": {"verdict": "warn", "failed": [], "warnings": ["w"]}}))
    failed = post(CFG)
    _event(app, failed, lambda job: lc.claim(job, "host:1", RunView()))
    with transaction(app.extensions["teacher"].sessions) as s:
        lc.finish(s, lock_job(s, failed), lc.Outcome.failed, "boom", exit_code=1, cause=AttemptCause.training_failed)
    _event(app, failed, lambda job: setattr(job, "progress", {"status": "running", "epoch": 2}))  # left running
    listing = client.get("/api/v1/jobs", headers=alice)
    assert listing.status_code == 200
    listed = {job["id"]: job for job in listing.json["jobs"]}
    assert list(listed) == [failed, running, later, tagged, plain]  # newest first
    compiled = {job_id: client.get(f"/api/v1/jobs/{job_id}", headers=alice).json for job_id in listed}
    monkeypatch.setattr(JobSchema, "dump", ma.Schema.dump)  # marshmallow's own, field by field
    for job_id, job in listed.items():
        assert job == client.get(f"/api/v1/jobs/{job_id}", headers=alice).json == compiled[job_id], job_id
    assert listed[tagged]["tags"] == ["b", "a"] and listed[later]["after"] == plain
    assert listed[running]["resumed_from"]["checkpoint"] == "step_00000040.pt"
    assert listed[running]["progress"]["latest"] == {"loss": 0.5, "x": None}
    assert listed[failed]["progress"]["status"] == "failed" and listed[failed]["failure_reason"] == "boom"


def test_a_property_is_read_through_it_even_with_a_same_named_instance_entry():
    """The compiled dump reads a row's loaded columns from its __dict__ (api.dumping
    _direct_attributes); anything else on the class, like a property, through getattr."""

    class Row:
        @property
        def text(self) -> str:
            return "from the property"

    row = Row()
    row.__dict__.update(text="shadowed", number=4)
    schema = FromDict()
    ours = compile_dump(Outer())(row)
    assert ours == Outer().dump(row) and ours["text"] == "from the property" and ours["number"] == 4
    assert compile_dump(schema)(row) == schema.dump(row)
