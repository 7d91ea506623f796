"""api/submission.py without Flask: the body rules (one schema validates what it documents), and
the submission against a real SQLite store with a recording broker (replay, dependency wait,
enqueue after commit, the retry when a concurrent request wins the key)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api import submission
from api.extensions import Services
from api.schemas import InitFrom, JobSpec
from api.submission import KeyOfDeletedJob, SubmitContention, UnknownJobRef, body_hash, load_spec
from common.config import ConfigError
from common.settings import Settings
from common.store import Job, JobStatus, User, make_engine, make_sessionmaker, transaction, upgrade, utcnow
from common.store.jobs import IdempotencyMismatch

QUEUES = ("default", "gpu")
CFG: dict[str, Any] = {
    "name": "tiny",
    "model": {"arch": "resnet18"},
    "data": {"format": "imagefolder", "root": "synthetic", "image_size": 32},
    "optim": {"epochs": 1, "batch_size": 8, "lr": 0.01},
}


@pytest.fixture
def configs(tmp_path: Path) -> Path:
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "small.yaml").write_text(yaml.safe_dump({**CFG, "name": "small"}))
    (folder / "with_path.yaml").write_text(yaml.safe_dump({**CFG, "init_from": "x/run/checkpoints/best.pt"}))
    return folder


def errors_of(body: Any, configs: Path) -> dict[str, list[str]]:
    with pytest.raises(ConfigError) as info:
        load_spec(body, QUEUES, configs)
    return info.value.errors


# ------------------------------------------------------------------------------ the body
def test_a_job_body_loads_into_a_spec_with_every_default(configs):
    spec = load_spec({**CFG, "priority": 7, "queue": "gpu", "after": "abcdef"}, QUEUES, configs)
    assert isinstance(spec, JobSpec)
    assert (spec.queue, spec.priority, spec.after, spec.init_from) == ("gpu", 7, "abcdef", None)
    assert spec.config["optim"]["momentum"] == 0.9 and spec.config["init_from"] is None
    assert not {"queue", "priority", "after", "overrides"} & set(spec.config)
    ref = load_spec({**CFG, "init_from": {"job": "abcdef"}}, QUEUES, configs).init_from
    assert ref == InitFrom(job="abcdef", checkpoint="best")


def test_overrides_apply_before_validation(configs):
    no_lr = {**CFG, "optim": {"epochs": 1, "batch_size": 8}}
    assert errors_of(no_lr, configs) == {"optim.lr": ["Missing data for required field."]}
    for overrides in ({"optim.lr": 0.5}, {"optim": {"lr": 0.5}}):
        assert load_spec({**no_lr, "overrides": overrides}, QUEUES, configs).config["optim"]["lr"] == 0.5
    assert "optim.lr" in errors_of({**CFG, "overrides": {"optim.lr": -1}}, configs)
    assert "overrides" in errors_of({**CFG, "overrides": ["optim.lr"]}, configs)


def test_overrides_cannot_set_service_keys(configs):
    errors = errors_of({**CFG, "overrides": {"priority": 9, "init_from": "a/run/checkpoints/best.pt"}}, configs)
    assert set(errors) == {"priority", "init_from"}
    assert "name the job" in errors["init_from"][0]


def test_every_bad_field_at_once_and_unknown_keys_are_errors(configs):
    errors = errors_of({**CFG, "queue": "nope", "priority": 10, "bogus": 1, "init_from": "a/b.pt",
                        "optim": {**CFG["optim"], "lr": "x"}}, configs)
    assert set(errors) == {"queue", "priority", "bogus", "init_from", "optim.lr"}
    assert errors["queue"] == ["unknown queue; use one of: default, gpu"]
    assert "checkpoint" in errors["init_from"][0]
    assert errors_of([1, 2], configs) == {"_schema": ["the job body must be a mapping"]}


def test_a_named_config_is_the_file_with_the_body_on_top(configs):
    spec = load_spec({"config": "small", "name": "mine", "priority": 2, "overrides": {"optim.epochs": 3}},
                     QUEUES, configs)
    assert spec.config["name"] == "mine" and spec.config["optim"]["epochs"] == 3 and spec.priority == 2
    assert load_spec({"config": "small"}, QUEUES, configs).config["name"] == "small"


def test_named_config_errors(configs):
    assert errors_of({"config": "small", "model": {}}, configs) == {
        "model": ["not allowed next to 'config'; use 'overrides'"]}
    # one bad service key: that key only (the file's sections are still validated, and valid)
    assert set(errors_of({"config": "small", "priority": 10, "queue": "nope"}, configs)) == {"priority", "queue"}
    assert set(errors_of({"config": "small", "after": "xyz", "overrides": {"optim.lr": 0}}, configs)) == {
        "after", "optim.lr"}
    missing = errors_of({"config": "nope"}, configs)
    assert list(missing) == ["config"] and "small" in missing["config"][0] and "with_path" in missing["config"][0]
    assert list(errors_of({"config": "../etc/x"}, configs)) == ["config"]
    assert "init_from" in errors_of({"config": "with_path"}, configs)  # a path in the file: a job must be named


def test_body_hash_is_canonical():
    assert body_hash({"a": 1, "b": [1, 2]}) == body_hash({"b": [1, 2], "a": 1})
    assert body_hash({"a": 1}) != body_hash({"a": 2})


# ------------------------------------------------------------------------------ the submission
class Broker:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, int]] = []

    def __call__(self, job_id: str, queue: str, priority: int) -> None:
        self.sent.append((job_id, queue, priority))


@pytest.fixture
def svc(tmp_path: Path, configs: Path) -> Services:
    for split in ("train", "val"):  # the precheck probes names only: empty files will do
        for cls in ("a", "b"):
            folder = tmp_path / "data" / "synthetic" / split / cls
            folder.mkdir(parents=True)
            (folder / "0.png").write_bytes(b"")
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'teacher.db'}", redis_url="redis://127.0.0.1:1/0",
                        jobs_root=tmp_path / "jobs", data_root=tmp_path / "data", torch_home=tmp_path / "torch",
                        configs_dir=configs, queues=QUEUES)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    services = Services(settings=settings, engine=engine, sessions=make_sessionmaker(engine), enqueue_fn=Broker())
    yield services
    engine.dispose()


@pytest.fixture
def alice(svc: Services) -> User:
    with transaction(svc.sessions) as s:
        user = User(name="alice")
        s.add(user)
    return user


def test_submit_creates_then_enqueues(svc, alice):
    result = submission.submit(svc, alice, CFG)
    assert result.created and result.job.status == JobStatus.queued.value and result.job.user.name == "alice"
    assert svc.enqueue_fn.sent == [(result.job.id, "default", 5)]
    with svc.sessions() as s:
        assert s.scalar(select(Job.enqueued_at).where(Job.id == result.job.id)) is not None


def test_an_idempotent_replay_returns_the_job_without_enqueueing_again(svc, alice):
    first = submission.submit(svc, alice, CFG, "key-1")
    again = submission.submit(svc, alice, CFG, "key-1")
    assert again.job.id == first.job.id and not again.created
    assert len(svc.enqueue_fn.sent) == 1
    with pytest.raises(IdempotencyMismatch):
        submission.submit(svc, alice, {**CFG, "name": "other"}, "key-1")
    with transaction(svc.sessions) as s:
        s.get(Job, first.job.pk).deleted_at = utcnow()
    with pytest.raises(KeyOfDeletedJob):
        submission.submit(svc, alice, CFG, "key-1")


def test_a_job_after_an_unfinished_one_waits_and_is_not_enqueued(svc, alice):
    first = submission.submit(svc, alice, CFG).job
    second = submission.submit(svc, alice, {**CFG, "init_from": {"job": first.id[:8], "checkpoint": "last"}}).job
    assert second.status == JobStatus.waiting.value and second.after_id == first.id
    assert second.init_from == {"job": first.id, "checkpoint": "last"}
    assert second.config["init_from"] == f"{first.id}/run/checkpoints/last.pt"
    assert [sent[0] for sent in svc.enqueue_fn.sent] == [first.id]


def test_unknown_references_name_the_field(svc, alice):
    with pytest.raises(UnknownJobRef) as info:
        submission.submit(svc, alice, {**CFG, "after": "f" * 32})
    assert info.value.errors == {"after": [f"no job {'f' * 32} (or not yours)"]}
    with pytest.raises(UnknownJobRef) as info:
        submission.submit(svc, alice, {**CFG, "init_from": {"job": "abcdef12"}})
    assert list(info.value.errors) == ["init_from.job"]
    assert svc.enqueue_fn.sent == []


def test_the_dataset_is_checked_for_new_jobs(svc, alice):
    with pytest.raises(ConfigError) as info:
        submission.submit(svc, alice, {**CFG, "data": {**CFG["data"], "root": "missing"}})
    assert list(info.value.errors) == ["data.root"]


def test_a_lost_key_race_is_retried_then_given_up(svc, alice, monkeypatch):
    real = submission._submit_once
    calls: list[int] = []

    def lose_once(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise IntegrityError("INSERT", {}, Exception("unique constraint"))
        return real(*args)

    monkeypatch.setattr(submission, "_submit_once", lose_once)
    assert submission.submit(svc, alice, CFG, "race").created and len(calls) == 2

    def always_lose(*args: Any) -> Any:
        raise IntegrityError("INSERT", {}, Exception("unique constraint"))

    monkeypatch.setattr(submission, "_submit_once", always_lose)
    with pytest.raises(SubmitContention):
        submission.submit(svc, alice, CFG, "race-2")
    assert len(svc.enqueue_fn.sent) == 1
