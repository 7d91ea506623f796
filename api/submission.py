"""Submitting a job: what ``POST /api/v1/jobs`` does once its body is parsed.

1. The body is validated by the schema that documents it (api/schemas.py): a job body
   (JobSpecSchema) or a body naming a config file (NamedConfigSpecSchema, then the file's
   config with the body's keys on top, as a job body).
2. In one transaction: an Idempotency-Key already used with this body returns its job (a
   replay); otherwise the dataset is checked (api/precheck.py), ``after`` and ``init_from``
   are resolved among the caller's jobs, the queued-jobs cap is applied, and the job and its
   key are inserted. A concurrent request with the same key loses the unique constraint and
   retries, finding the winner's job.
3. After the commit, a new queued job is published to the broker.

No request state: it takes the services and the caller, so it runs (and is tested) outside a
request. It raises specific errors, which api/errors.py answers (4xx naming the field).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import marshmallow as ma
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.extensions import Services
from api.limits import check_queued_cap
from api.lookup import resolve_job
from api.precheck import check_data
from api.schemas import InitFrom, JobSpec, JobSpecSchema, NamedConfigSpecSchema
from common.config import CONFIGS_DIR, ConfigError, PathEscapeError, confine, flatten_errors, parse_yaml
from common.devices import gpus_asked, stored
from common.store import Job, JobStatus, WorkerBeat, transaction, utcnow
from common.rundir import JobPaths
from common.store.jobs import JobNotFound, Principal, create_job, find_idempotent, init_from_path

# How often a submission that lost an Idempotency-Key race to a concurrent one is retried.
ATTEMPTS = 3


class UnknownJobRef(LookupError):
    """``after`` or ``init_from.job`` names no job the caller may see: 404 naming the field, as
    for the job's own URL (another user's job and no job at all are the same answer)."""

    def __init__(self, field: str, ref: str):
        super().__init__(f"{field}: job {ref} not found")
        self.field = field
        self.errors = {field: [f"no job {ref} (or not yours)"]}


class KeyOfDeletedJob(Exception):
    """The Idempotency-Key's job was deleted since: 409, use a new key."""

    errors = {"Idempotency-Key": ["its job was deleted"]}


class SubmitContention(Exception):
    """Concurrent requests with the same key kept winning: 409, retry."""


@dataclass(frozen=True)
class Submission:
    job: Job
    created: bool  # False: an earlier job with this Idempotency-Key and body (a replay)


def submit(svc: Services, user: Principal, body: Any, idempotency_key: str | None = None) -> Submission:
    """Validate ``body`` (a parsed JSON or YAML document) and create its job, or replay the
    job an earlier request with the same key and body created."""
    spec = load_spec(body, svc.settings.queues, svc.settings.configs_dir or CONFIGS_DIR)
    idempotency = (idempotency_key, body_hash(body)) if idempotency_key else None
    for _ in range(ATTEMPTS):
        try:
            submission = _submit_once(svc, user, spec, idempotency)
            break
        except IntegrityError:  # a concurrent request with the same key won the unique constraint
            continue
    else:
        raise SubmitContention("could not create the job because of concurrent requests; retry")
    job = submission.job
    if submission.created and job.status == JobStatus.queued.value:
        svc.enqueue(job.id, job.queue, job.priority)
    return submission


def load_spec(body: Any, queues: tuple[str, ...] | list[str], configs_dir: Path) -> JobSpec:
    """The validated job a body describes; ConfigError naming every bad field at once."""
    if not isinstance(body, dict):
        raise ConfigError({"_schema": ["the job body must be a mapping"]})
    errors: dict[str, list[str]] = {}
    if "config" in body:
        body, errors = _named_body(body, queues, configs_dir)
    try:
        spec = JobSpecSchema(queues=queues).load(body)
    except ma.ValidationError as exc:
        raise ConfigError({**errors, **flatten_errors(exc.messages)}) from None
    if errors:
        raise ConfigError(errors)
    return spec


def _named_body(body: dict[str, Any], queues: tuple[str, ...] | list[str],
                configs_dir: Path) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The job body a body naming a config file stands for (the file's config, the body's
    keys on top) and the errors of the body's own keys. A bad key is left out, so that the
    rest is still validated against the file: a body with one bad service key reports that
    key only, not the sections the file supplies."""
    try:
        NamedConfigSpecSchema(queues=queues).load(body)
        errors: dict[str, list[str]] = {}
    except ma.ValidationError as exc:
        errors = flatten_errors(exc.messages)
    bad = {key.split(".")[0] for key in errors}
    if "config" in bad:
        raise ConfigError(errors)  # the config's name itself is bad: nothing to validate against
    try:
        base = named_config(configs_dir, body["config"])
    except ConfigError as exc:
        raise ConfigError({**errors, **exc.errors}) from None
    return {**base, **{k: v for k, v in body.items() if k != "config" and k not in bad}}, errors


def named_config(root: Path, name: str) -> dict[str, Any]:
    """The raw (unvalidated) config of ``<root>/<name>.yaml``."""
    try:
        path = confine(root, f"{name}.yaml", what="config")
    except PathEscapeError as exc:
        raise ConfigError(exc.errors) from None
    if not path.is_file():
        available = sorted(p.stem for p in root.glob("*.yaml"))
        raise ConfigError({"config": [f"no config named '{name}'; available: {', '.join(available) or 'none'}"]})
    raw = parse_yaml(path.read_text(encoding="utf-8"), source=path.name)
    if not isinstance(raw, dict):
        raise ConfigError({"config": [f"{path.name} is not a mapping"]})
    return raw


def body_hash(body: Any) -> str:
    """What an Idempotency-Key is bound to: the body, canonically serialised."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _submit_once(svc: Services, user: Principal, spec: JobSpec, idempotency: tuple[str, str] | None) -> Submission:
    settings = svc.settings
    with transaction(svc.sessions) as s:
        job = find_idempotent(s, user, *idempotency) if idempotency else None
        if job is not None:
            if job.deleted_at is not None:
                raise KeyOfDeletedJob("the job this Idempotency-Key created was deleted; use a new key")
            job.user  # noqa: B018  (load while the session is open)
            return Submission(job, created=False)  # whatever the dataset is now: the job exists
        check_dataset(spec.config, settings.data_root)
        queue = spec.queue or settings.default_queue
        check_gpus(s, spec.config, queue, settings.worker_beat_s)
        after_id = _resolve_ref(s, user, "after", spec.after)
        init_from = _resolve_init_from(s, user, spec.init_from, settings.jobs_root)
        config = spec.config
        if init_from is not None:
            config = {**config, "init_from": init_from_path(init_from.job, init_from.checkpoint)}
            after_id = after_id or init_from.job  # its checkpoint must exist first
        # 429 (nothing inserted, nothing enqueued) when the user has too many pending jobs
        check_queued_cap(s, user, settings.max_queued_per_user)
        job = create_job(
            s, user=user, config=config, name=config["name"], queue=queue,
            priority=spec.priority, max_attempts=settings.max_attempts, after_id=after_id,
            init_from={"job": init_from.job, "checkpoint": init_from.checkpoint} if init_from else None,
            idempotency=idempotency, tags=spec.tags,
        )
        job.user  # noqa: B018
        return Submission(job, created=True)


def check_dataset(config: dict[str, Any], data_root: Path) -> None:
    """The dataset, without torch and without listing every image: what would otherwise fail
    only once a worker picks the job up (400 naming the field)."""
    errors = check_data(config, data_root)
    if errors:
        raise ConfigError(errors)


def check_gpus(s: Session, config: dict[str, Any], queue: str, beat_s: float) -> None:
    """``resources.gpus`` that no live worker of the queue offers: 400 naming the field, now,
    rather than a job that waits forever (no worker claims a job asking for more GPUs than it
    has: worker/supervisor.py). With no live worker that reported its devices the job is
    accepted: a queue's workers may be starting or restarting, and waiting for one is what a
    queue is for (`teacher doctor` and /health say when none is alive)."""
    asked = gpus_asked(config)
    if asked is None:
        return
    most = most_gpus(s, queue, beat_s)
    if most is not None and asked > most:
        raise ConfigError({"resources.gpus": [
            f"asks for {asked} GPU{'' if asked == 1 else 's'}; the live workers of queue '{queue}' have at most {most}"]})


def most_gpus(s: Session, queue: str, beat_s: float) -> int | None:
    """The most GPUs one live worker of ``queue`` has, or None when no live worker of it
    reported its devices."""
    now = utcnow()
    counts = []
    for beat in s.scalars(select(WorkerBeat)):
        devices = stored(beat.devices)
        if devices is None or queue not in (beat.queues or "").split(","):
            continue
        if WorkerBeat.is_alive((now - beat.seen_at).total_seconds(), beat_s):
            counts.append(devices.gpu_count)
    return max(counts) if counts else None


def _resolve_ref(s: Session, user: Principal, field: str, ref: str | None) -> str | None:
    """The full id of the caller's job that ``ref`` (an id or a unique prefix) names."""
    if not ref:
        return None
    try:
        return resolve_job(s, user, ref, field=field).id
    except JobNotFound:
        raise UnknownJobRef(field, ref) from None


def _resolve_init_from(s: Session, user: Principal, ref: InitFrom | None, jobs_root: Path) -> InitFrom | None:
    """``ref`` with the caller's job resolved to its full id. A checkpoint that can never
    exist is refused now: a finished job must already have it (a job still to run may write it
    later; ``after`` then waits for it)."""
    if ref is None:
        return None
    resolved = replace(ref, job=_resolve_ref(s, user, "init_from.job", ref.job))
    job = s.scalar(select(Job).where(Job.id == resolved.job))
    if job is None or not job.job_status.finished:
        return resolved
    filename = ref.checkpoint if ref.checkpoint.endswith(".pt") else f"{ref.checkpoint}.pt"
    try:
        exists = confine(JobPaths.of(jobs_root, job.id).checkpoints, filename, what="init_from.checkpoint").is_file()
    except PathEscapeError:
        exists = False
    if not exists:
        raise ConfigError({"init_from.checkpoint": [f"job {job.id} ended {job.status} without a checkpoint '{filename}'"]})
    return resolved
