"""/api/v1/jobs: submit, list, inspect, cancel, logs, metrics and checkpoints."""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import time
from typing import Any, Iterator

import marshmallow as ma
import yaml
from flask import Response, request, send_file, stream_with_context, url_for
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.errors import ApiError, scrub, server_roots
from api.extensions import current_user, services
from api.limits import check_queued_cap
from api.lookup import AMBIGUOUS, load_job, resolve_job
from common.runfiles import read_json, read_new_events, tail_events
from api.precheck import check_data
from api.schemas import (
    CHECKPOINT_REF,
    CheckpointListSchema,
    HistorySchema,
    JobListQuerySchema,
    JobListSchema,
    JobOptionsSchema,
    JobSchema,
    JobSpecSchema,
    LogsQuerySchema,
    LogsSchema,
    NamedConfigSpecSchema,
)
from api.smorest import Blueprint
from common.config import (
    CONFIGS_DIR,
    ConfigError,
    PathEscapeError,
    apply_overrides,
    confine,
    flatten_errors,
    load_config_dict,
    parse_yaml,
)
from common.store import Job, JobStatus, transaction
from common.store.deletion import delete_finished_job
from common.store.jobs import (
    JobNotFound,
    JobPaths,
    create_job,
    find_idempotent,
    init_from_path,
    list_jobs,
    request_cancel,
    visible_job,
)

log = logging.getLogger(__name__)

blp = Blueprint("jobs", __name__, url_prefix="/api/v1/jobs", description="Training jobs")

YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml"}
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces

# OpenAPI: example bodies, and links to what can follow a response that holds a job (clients and
# schemathesis's stateful tests follow them; the operationIds come from api.smorest.ServiceDocs).
JOB_EXAMPLE = {
    "name": "tiny", "model": {"arch": "resnet18"},
    "data": {"format": "imagefolder", "root": "synthetic", "image_size": 32},
    "optim": {"epochs": 1, "batch_size": 8, "lr": 0.01}, "priority": 5,
}
NAMED_CONFIG_EXAMPLE = {"config": "demo", "overrides": {"optim": {"epochs": 1}}, "name": "demo-short"}
_JOB_ID = {"job_id": "$response.body#/id"}
JOB_LINKS = {
    "GetJob": {"operationId": "jobs_job", "parameters": _JOB_ID},
    "CancelJob": {"operationId": "jobs_cancel", "parameters": _JOB_ID},
    "GetJobLogs": {"operationId": "jobs_logs", "parameters": _JOB_ID},
    "GetJobMetrics": {"operationId": "jobs_metrics", "parameters": _JOB_ID},
    "ListJobCheckpoints": {"operationId": "jobs_checkpoints", "parameters": _JOB_ID},
    "DownloadBestCheckpoint": {"operationId": "jobs_checkpoint", "parameters": {**_JOB_ID, "name": "best"}},
    "GetJobReport": {"operationId": "analysis_job_report", "parameters": _JOB_ID},
    "GetJobExport": {"operationId": "jobs_export", "parameters": _JOB_ID},
    "ListJobPlots": {"operationId": "analysis_job_plots", "parameters": _JOB_ID},
}


# ---------------------------------------------------------------------------------- helpers
def job_to_dict(job: Job) -> dict[str, Any]:
    links = {
        "self": url_for("jobs.job", job_id=job.id),
        "cancel": url_for("jobs.cancel", job_id=job.id),
        "logs": url_for("jobs.logs", job_id=job.id),
        "metrics": url_for("jobs.metrics", job_id=job.id),
        "checkpoints": url_for("jobs.checkpoints", job_id=job.id),
        "report": url_for("analysis.job_report", job_id=job.id),
        "plots": url_for("analysis.job_plots", job_id=job.id),
        "export": url_for("jobs.export", job_id=job.id),
    }
    integrity = (job.progress or {}).get("integrity") if isinstance(job.progress, dict) else None
    return {
        "id": job.id, "name": job.name, "user": job.user.name, "status": job.status, "queue": job.queue,
        "priority": job.priority, "attempts": job.attempts, "max_attempts": job.max_attempts,
        "interruptions": job.interruptions or 0,
        "run_seconds": round(job.run_seconds or 0.0, 3),
        "cancel_requested": job.cancel_requested, "after": job.after_id, "init_from": job.init_from,
        "created_at": job.created_at, "updated_at": job.updated_at, "started_at": job.started_at,
        "heartbeat_at": job.heartbeat_at, "finished_at": job.finished_at, "exit_code": job.exit_code,
        "failure_reason": scrub(job.failure_reason, server_roots()) if job.failure_reason else None,
        "progress": job.progress, "integrity": integrity, "result": job.result,
        "config": job.config, "links": links,
    }


def _parse_body() -> Any:
    try:
        return _parse_body_unchecked()
    except RecursionError:  # absurdly deep nesting; the parsers recurse
        raise ApiError(400, "the body is nested too deeply") from None


def _parse_body_unchecked() -> Any:
    mimetype = request.mimetype
    if mimetype in YAML_TYPES:
        try:
            text = request.get_data(as_text=False).decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "the YAML body is not UTF-8") from None
        _precheck_yaml(text)
        return parse_yaml(text, source="request body")
    if mimetype == "application/json":
        data = request.get_json(silent=True)
        if data is None:
            raise ApiError(400, "the body is not valid JSON")
        return data
    raise ApiError(415, "send the job as application/json or application/yaml")


MAX_YAML_DEPTH = 32
_FAST_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _precheck_yaml(text: str) -> None:
    """Cheap structural checks with libyaml before the full (pure-Python) safe_load: a job never
    needs aliases (nested ones, "billion laughs", expand exponentially when the body is hashed
    or serialised) nor deep nesting (the pure-Python scanner is super-linear in it)."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_FAST_YAML_LOADER):
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError({"_schema": ["YAML aliases (*name) are not allowed in a job"]})
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise ConfigError({"_schema": [f"the YAML body nests deeper than {MAX_YAML_DEPTH} levels"]})
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError as exc:
        raise ConfigError({"_schema": [f"request body is not valid YAML: {exc}"]}) from None


def _flatten_overrides(overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(_flatten_overrides(value, dotted))
        else:
            out[dotted] = value
    return out


def _named_config(name: str) -> dict[str, Any]:
    root = services().settings.configs_dir or CONFIGS_DIR
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


def _build_spec(raw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split and validate a job body into (service options, resolved training config).
    Every bad field is reported at once, under its dotted name."""
    if not isinstance(raw, dict):
        raise ConfigError({"_schema": ["the job body must be a mapping"]})
    option_keys = set(JobOptionsSchema().fields)
    opts_raw = {k: v for k, v in raw.items() if k in option_keys}
    rest = {k: v for k, v in raw.items() if k not in option_keys}
    errors: dict[str, list[str]] = {}
    if isinstance(opts_raw.get("init_from"), str):
        errors["init_from"] = ['refer to another job\'s checkpoint as {"job": ID, "checkpoint": "best"}']
        opts_raw.pop("init_from")
    try:
        opts = JobOptionsSchema().load(opts_raw)
    except ma.ValidationError as exc:
        errors.update(flatten_errors(exc.messages))
        # Keep the options that were valid: a body naming a config with one bad service key
        # reports that key only, not the config sections the named file would have supplied.
        opts = exc.valid_data if isinstance(exc.valid_data, dict) else {}
        if "config" in opts_raw and "config" not in opts:
            raise ConfigError(errors) from None  # the config name itself is bad: nothing to validate against
    queues = services().settings.queues
    if opts.get("queue") is not None and opts["queue"] not in queues:
        errors["queue"] = [f"unknown queue; use one of: {', '.join(queues)}"]
    config: dict[str, Any] = {}
    try:
        if opts.get("config"):
            extra = sorted(set(rest) - {"name"})
            if extra:
                raise ConfigError({k: ["not allowed next to 'config'; use 'overrides'"] for k in extra})
            base = _named_config(opts["config"])
            if "name" in rest:
                base["name"] = rest["name"]
            rest = base
        if opts.get("overrides"):
            rest = apply_overrides(rest, _flatten_overrides(opts["overrides"]))
        config = load_config_dict(rest)
        if config.get("init_from") and not opts.get("init_from"):
            # A raw path under the runs root could name anyone's job; only job references,
            # checked for ownership at submit, may set it.
            raise ConfigError({"init_from": ['in the service, name the job: {"init_from": {"job": ID, "checkpoint": "best"}}']})
    except ConfigError as exc:
        errors.update(exc.errors)
    if errors:
        raise ConfigError(errors)
    return opts, config


def _check_dataset(config: dict[str, Any]) -> None:
    """The dataset, without torch and without listing every image: what would otherwise fail
    only once a worker picks the job up (400 naming the field)."""
    errors = check_data(config, services().settings.data_root)
    if errors:
        raise ConfigError(errors)


def _resolve_ref(s: Any, user: Any, field_name: str, ref: str | None) -> str | None:
    """The full id of the caller's job that ``ref`` (an id or a unique prefix) names."""
    if not ref:
        return None
    try:
        return resolve_job(s, user, ref, field=field_name).id
    except JobNotFound:
        # 404 as for the job's own URL: another user's job and no job at all are the same
        # answer, so ids do not leak.
        raise ApiError(404, f"{field_name}: job {ref} not found", {field_name: [f"no job {ref} (or not yours)"]}) from None


def _check_init_from(s: Any, init_from: dict[str, Any]) -> None:
    """A checkpoint that can never exist is refused now: a finished job must already have it
    (a job still to run may write it later; `after` then waits for it)."""
    job = s.scalar(select(Job).where(Job.id == init_from["job"]))
    if job is None or not job.job_status.finished:
        return
    name = init_from["checkpoint"]
    filename = name if name.endswith(".pt") else f"{name}.pt"
    checkpoints = JobPaths.of(services().settings.jobs_root, job.id).checkpoints
    try:
        exists = confine(checkpoints, filename, what="init_from.checkpoint").is_file()
    except PathEscapeError:
        exists = False
    if not exists:
        raise ConfigError({"init_from.checkpoint": [
            f"job {job.id} ended {job.status} without a checkpoint '{filename}'"]})


def _body_hash(raw: Any) -> str:
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _encode_cursor(pk: int) -> str:
    return base64.urlsafe_b64encode(f"pk:{pk}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("pk:"):
            raise ValueError(text)
        return int(text[3:])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(400, "invalid cursor", {"cursor": ["not a cursor returned by this API"]}) from None


# ---------------------------------------------------------------------------------- views
@blp.route("", methods=["POST"])
@blp.doc(
    summary="Submit a training job",
    requestBody={
        "required": True,
        "content": {
            "application/json": {"schema": {"oneOf": [JobSpecSchema, NamedConfigSpecSchema]}, "examples": {
                "config": {"summary": "a training config", "value": JOB_EXAMPLE},
                "named": {"summary": "a file under configs/, with overrides", "value": NAMED_CONFIG_EXAMPLE}}},
            "application/yaml": {"schema": JobSpecSchema, "example": JOB_EXAMPLE},
        },
    },
    parameters=[{"in": "header", "name": "Idempotency-Key", "required": False, "schema": {"type": "string", "maxLength": 255}}],
    responses={202: {"links": JOB_LINKS, "headers": {
        "Location": {"description": "the job's URL", "schema": {"type": "string"}},
        "Idempotent-Replayed": {"description": "true when an earlier job with this Idempotency-Key and body is returned",
                                "schema": {"type": "string", "enum": ["true"]}},
    }}},
)
@blp.response(202, JobSchema)
@blp.alt_response(400, description="invalid job (per-field errors)")
@blp.alt_response(404, description="`after` or `init_from.job` names no job of yours (the field is in `errors`)")
@blp.alt_response(413, description="body too large")
@blp.alt_response(415, description="unsupported content type")
@blp.alt_response(422, description="Idempotency-Key reused with a different body")
def submit() -> Any:
    svc = services()
    user = current_user()
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.match(key):
        raise ApiError(400, "invalid Idempotency-Key", {"Idempotency-Key": ["1-255 printable ASCII characters"]})
    raw = _parse_body()
    opts, config = _build_spec(raw)
    body_hash = _body_hash(raw)

    created = False
    for _ in range(3):  # a concurrent request with the same key wins the unique constraint
        try:
            with transaction(svc.sessions) as s:
                job = find_idempotent(s, user, key, body_hash) if key else None
                if job is not None and job.deleted_at is not None:
                    raise ApiError(409, "the job this Idempotency-Key created was deleted; use a new key",
                                   {"Idempotency-Key": ["its job was deleted"]})
                if job is None:
                    _check_dataset(config)  # not for a replay: its job exists whatever the data is now
                    after_id = _resolve_ref(s, user, "after", opts.get("after"))
                    init_from = opts.get("init_from")
                    if init_from:
                        init_from = {**init_from, "job": _resolve_ref(s, user, "init_from.job", init_from["job"])}
                        _check_init_from(s, init_from)
                    if init_from:
                        config["init_from"] = init_from_path(init_from["job"], init_from["checkpoint"])
                        after_id = after_id or init_from["job"]  # its checkpoint must exist first
                    # 429 (nothing inserted, nothing enqueued) when the user has too many pending jobs
                    check_queued_cap(s, user, svc.settings.max_queued_per_user)
                    job = create_job(
                        s, user=user, config=config, name=config["name"],
                        queue=opts.get("queue") or svc.settings.default_queue, priority=opts["priority"],
                        max_attempts=svc.settings.max_attempts, after_id=after_id, init_from=init_from,
                        idempotency=(key, body_hash) if key else None,
                    )
                    created = True
                job.user  # noqa: B018  (load while the session is open)
            break
        except IntegrityError:
            created = False
            continue
    else:
        raise ApiError(409, "could not create the job because of concurrent requests; retry")

    if created and job.status == JobStatus.queued.value:
        svc.enqueue(job.id, job.queue, job.priority)
    headers = {"Location": url_for("jobs.job", job_id=job.id)}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return job_to_dict(job), 202, headers


@blp.route("", methods=["GET"])
@blp.arguments(JobListQuerySchema, location="query")
@blp.response(200, JobListSchema)
def index(args: dict[str, Any]) -> Any:
    before = _decode_cursor(args["cursor"]) if args.get("cursor") else None
    limit = args["limit"]
    with services().sessions() as s:
        jobs = list_jobs(s, current_user(), statuses=args["status"], before_pk=before, limit=limit + 1)
        page = [job_to_dict(j) for j in jobs[:limit]]
    next_cursor = _encode_cursor(jobs[limit - 1].pk) if len(jobs) > limit else None
    return {"jobs": page, "next_cursor": next_cursor}


@blp.route("/<string:job_id>", methods=["GET"], endpoint="job")
@blp.doc(responses={200: {"links": JOB_LINKS}})  # int: merged with @blp.response's 200
@blp.response(200, JobSchema)
@blp.alt_response(400, description=AMBIGUOUS)
@blp.alt_response(404, description="no such job (or not yours)")
def get_job(job_id: str) -> Any:
    return job_to_dict(load_job(job_id))


@blp.route("/<string:job_id>/cancel", methods=["POST"], endpoint="cancel")
@blp.doc(responses={202: {"links": JOB_LINKS}})
@blp.response(202, JobSchema)
@blp.alt_response(400, description=AMBIGUOUS)
@blp.alt_response(404, description="no such job")
@blp.alt_response(409, description="the job already finished")
def cancel(job_id: str) -> Any:
    with transaction(services().sessions) as s:
        job = resolve_job(s, current_user(), job_id, for_update=True)
        request_cancel(s, job)
        job.user  # noqa: B018
    return job_to_dict(job)


LAST_EVENT_ID = {"in": "header", "name": "Last-Event-ID", "required": False, "schema": {"type": "string"},
                 "description": "with follow=true: the `id:` of the last event received; the stream resumes "
                                "after that line instead of sending the tail again (EventSource sends it on reconnect)"}


@blp.route("/<string:job_id>/logs", methods=["GET"], endpoint="logs")
@blp.doc(parameters=[LAST_EVENT_ID], responses={200: {"content": {"text/event-stream": {"schema": {
    "type": "string", "description": "with follow=true: one `data:` event per line, each with an `id:` (the byte offset "
                                     "just after the line; send it back as Last-Event-ID to resume), then `event: end` "
                                     "with the final status"}}}}})
@blp.arguments(LogsQuerySchema, location="query")
@blp.response(200, LogsSchema, description="the last lines; with follow=true a text/event-stream")
@blp.alt_response(400, description=AMBIGUOUS)
@blp.alt_response(404, description="no such job (or not yours)")
def logs(args: dict[str, Any], job_id: str) -> Any:
    job = load_job(job_id)
    paths = JobPaths.of(services().settings.jobs_root, job.id)
    finished = job.job_status.finished
    resume = _last_event_offset() if args["follow"] else None
    if resume is not None:
        events, offset = read_new_events(paths.log, resume, include_partial=finished)
        if offset < resume:  # the log was replaced since (shorter now): its offsets mean nothing
            resume = None
    if resume is None:
        events, offset = tail_events(paths.log, args["tail"], include_partial=finished)
    if not args["follow"]:
        return {"lines": [line for _, line in events], "status": job.status}
    return Response(
        stream_with_context(_follow(job.id, paths, events, offset)),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _last_event_offset() -> int | None:
    """The byte offset a reconnecting client asks to resume from (our event ids are offsets);
    None when absent or not one of ours, and the tail is sent as for a first connection."""
    raw = request.headers.get("Last-Event-ID", "").strip()
    return int(raw) if raw.isdigit() and len(raw) <= 18 else None


def _event(end_offset: int, line: str) -> str:
    return f"id: {end_offset}\ndata: {line}\n\n"


def _follow(job_id: str, paths: JobPaths, events: list[tuple[int, str]], offset: int) -> Iterator[str]:
    """Server-sent events: one `data:` event per log line, with the byte offset after the line
    as its `id:`, then `event: end` with the final status. The store is polled for the status;
    the session is never held across sleeps."""
    svc = services()
    poll = svc.settings.sse_poll_s
    for end, line in events:
        yield _event(end, line)
    last_beat = time.monotonic()
    while True:
        with svc.sessions() as s:
            status = JobStatus(s.scalar(select(Job.status).where(Job.id == job_id)))
        new, offset = read_new_events(paths.log, offset)
        for end, line in new:
            yield _event(end, line)
        if status.finished:
            # lines written just before the end, the unterminated last one included
            rest, offset = read_new_events(paths.log, offset, include_partial=True)
            for end, line in rest:
                yield _event(end, line)
            yield f"event: end\ndata: {status.value}\n\n"
            return
        if time.monotonic() - last_beat > 15:
            yield ": keep-alive\n\n"  # lets proxies and clients notice a dead connection
            last_beat = time.monotonic()
        time.sleep(poll)


@blp.route("/<string:job_id>/metrics", methods=["GET"], endpoint="metrics")
@blp.response(200, HistorySchema)
@blp.alt_response(400, description=AMBIGUOUS)
@blp.alt_response(404, description="no such job")
def metrics(job_id: str) -> Any:
    job = load_job(job_id)
    history = read_json(JobPaths.of(services().settings.jobs_root, job.id).history)
    return history if isinstance(history, dict) else {"epochs": []}


@blp.route("/<string:job_id>/checkpoints", methods=["GET"], endpoint="checkpoints")
@blp.doc(responses={200: {"links": {"DownloadCheckpoint": {"operationId": "jobs_checkpoint", "parameters": {
    "job_id": "$request.path.job_id", "name": "$response.body#/checkpoints/0/name"}}}}})
@blp.response(200, CheckpointListSchema)
@blp.alt_response(400, description=AMBIGUOUS)
@blp.alt_response(404, description="no such job")
def checkpoints(job_id: str) -> Any:
    job = load_job(job_id)
    manifest = read_json(JobPaths.of(services().settings.jobs_root, job.id).manifest) or {}
    out = []
    for entry in manifest.get("checkpoints", []):
        name = str(entry.get("name") or "")
        if not name:
            continue
        out.append({**{k: entry.get(k) for k in ("name", "epoch", "step", "size", "sha256", "metrics")},
                    "url": url_for("jobs.checkpoint", job_id=job.id, name=name)})
    return {"checkpoints": out}


@blp.route("/<string:job_id>/checkpoints/<path:name>", methods=["GET"], endpoint="checkpoint")
@blp.doc(responses={"200": {"description": "the checkpoint file (supports Range and If-None-Match)",
                            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                    "206": {"description": "partial content"}, "304": {"description": "not modified"}})
@blp.alt_response(400, description="invalid checkpoint name, or " + AMBIGUOUS)
@blp.alt_response(404, description="no such job or checkpoint")
def checkpoint(job_id: str, name: str) -> Any:
    job = load_job(job_id)
    paths = JobPaths.of(services().settings.jobs_root, job.id)
    try:
        CHECKPOINT_REF(name)
    except ma.ValidationError:
        raise ApiError(400, "invalid checkpoint name", {"name": ["use a name such as best, last or epoch_0003.pt"]}) from None
    filename = name if name.endswith(".pt") else f"{name}.pt"
    if not paths.checkpoints.is_dir():
        raise ApiError(404, f"job {job.id} has no checkpoints yet")
    try:
        # Resolves symlinks: a link pointing outside the job's checkpoint dir is refused.
        path = confine(paths.checkpoints, filename, what="name")
    except PathEscapeError as exc:
        raise ApiError(400, "invalid checkpoint name", exc.errors) from None
    if not path.is_file():
        raise ApiError(404, f"no checkpoint {filename} in job {job.id}")
    etag: str | bool = True
    manifest = read_json(paths.manifest) or {}
    for entry in manifest.get("checkpoints", []):
        if entry.get("name") == filename and entry.get("sha256") and entry.get("size") == path.stat().st_size:
            etag = str(entry["sha256"])
    return send_file(path, mimetype="application/octet-stream", as_attachment=True,
                     download_name=f"{job.id}-{filename}", conditional=True, etag=etag, max_age=0)


# ---------------------------------------------------------------------------------- delete
@blp.route("/<string:job_id>", methods=["DELETE"], endpoint="delete")
@blp.doc(summary="Delete a finished job and its files",
         description="The owner or an admin. Removes the job's directory (checkpoints, logs, run files) under the "
                     "jobs root and marks the job deleted: it no longer lists and its URLs answer 404. A job that "
                     "has not finished (queued, waiting, running, interrupted) is 409: cancel it first.",
         responses={204: {"description": "deleted"}})
@blp.alt_response(400, description=AMBIGUOUS)
@blp.alt_response(404, description="no such job (or not yours)")
@blp.alt_response(409, description="the job has not finished, or an unfinished job starts from its checkpoint")
def delete(job_id: str) -> Any:
    delete_finished_job(services().sessions, lambda s: resolve_job(s, current_user(), job_id, for_update=True),
                        services().settings.jobs_root)  # JobConflict: 409 (errors.py)
    return Response(status=204)


# ---------------------------------------------------------------------------------- export
def _export_dir(job_id: str) -> tuple[Job, Path]:
    job = load_job(job_id)
    export = JobPaths.of(services().settings.jobs_root, job.id).run / "export"
    if not (export / "model.json").is_file() or not (export / "model.pt").is_file():
        if not job.job_status.finished:
            raise ApiError(409, f"job {job.id} is {job.status}; its export is written when it succeeds")
        raise ApiError(404, f"job {job.id} has no export (it ended {job.status}"
                            + ("" if job.status == JobStatus.succeeded.value else "; only a succeeded job is exported")
                            + ")")
    return job, export


@blp.route("/<string:job_id>/export", methods=["GET"], endpoint="export")
@blp.doc(summary="The exported model's description (model.json)",
         description="arch, class names, image size, mean/std, source job, metrics and the sha256 of model.pt, "
                     "as the exporter wrote them; the weights are at `/export/model.pt`.",
         responses={200: {"description": "model.json", "content": {"application/json": {"schema": {"type": "object"}}},
                          "links": {"DownloadExportedWeights": {"operationId": "jobs_export_weights",
                                                                "parameters": {"job_id": "$request.path.job_id"}}}}})
@blp.alt_response(400, description=AMBIGUOUS)
@blp.alt_response(404, description="no such job, or it has no export")
@blp.alt_response(409, description="the job has not finished; the export is written when it succeeds")
def export(job_id: str) -> Any:
    _, export_dir = _export_dir(job_id)
    return send_file(export_dir / "model.json", mimetype="application/json", max_age=0, conditional=True)


@blp.route("/<string:job_id>/export/model.pt", methods=["GET"], endpoint="export_weights")
@blp.doc(summary="The exported weights (a state_dict, model.pt)",
         responses={"200": {"description": "model.pt (supports Range and If-None-Match; the ETag is its sha256 when "
                                           "model.json records it)",
                            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                    "206": {"description": "partial content"}, "304": {"description": "not modified"}})
@blp.alt_response(400, description=AMBIGUOUS)
@blp.alt_response(404, description="no such job, or it has no export")
@blp.alt_response(409, description="the job has not finished; the export is written when it succeeds")
def export_weights(job_id: str) -> Any:
    job, export_dir = _export_dir(job_id)
    weights = export_dir / "model.pt"
    etag: str | bool = True
    try:
        meta = read_json(export_dir / "model.json")
    except ValueError:
        meta = None
    sha = meta.get("sha256") if isinstance(meta, dict) else None
    if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha):
        etag = sha
    return send_file(weights, mimetype="application/octet-stream", as_attachment=True,
                     download_name=f"{job.id}-model.pt", conditional=True, etag=etag, max_age=0)
