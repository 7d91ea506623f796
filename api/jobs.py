"""/api/v1/jobs: submit, list, inspect, cancel, delete, logs, metrics, checkpoints and the export.

Views parse the request, call the service that does the work (api/submission.py, the job store,
common/runfiles.py for logs) and return objects the response schemas dump (a Job row for
JobSchema); errors are raised as specific exceptions that api/errors.py answers.
"""
from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from pathlib import Path
from typing import Any, Iterator

import marshmallow as ma
from flask import Response, request, send_file, stream_with_context, url_for
from sqlalchemy import select

from api import submission as submission_service
from api.body import parse_body
from api.errors import ApiError
from api.extensions import current_user, services
from api.lookup import AMBIGUOUS, load_job, resolve_job
from api.schemas import (
    CHECKPOINT_REF,
    CheckpointListSchema,
    HistorySchema,
    JobListQuerySchema,
    JobListSchema,
    JobSchema,
    JobSpecSchema,
    LogsQuerySchema,
    LogsSchema,
    NamedConfigSpecSchema,
)
from api.smorest import Blueprint
from common import rundir
from common.config import PathEscapeError, confine
from common.rundir import JobPaths
from common.runfiles import read_new_events, tail_events
from common.store import Job, JobStatus, transaction
from common.store.deletion import delete_finished_job
from common.store.jobs import list_jobs, request_cancel

log = logging.getLogger(__name__)

blp = Blueprint("jobs", __name__, url_prefix="/api/v1/jobs", description="Training jobs")

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
def _files(job: Job) -> JobPaths:
    return JobPaths.of(services().settings.jobs_root, job.id)


CHECKPOINT_KEYS = ("name", "epoch", "step", "size", "sha256", "metrics")


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
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.match(key):
        raise ApiError(400, "invalid Idempotency-Key", {"Idempotency-Key": ["1-255 printable ASCII characters"]})
    submission = submission_service.submit(services(), current_user(), parse_body(), key)
    headers = {"Location": url_for("jobs.job", job_id=submission.job.id)}
    if not submission.created:
        headers["Idempotent-Replayed"] = "true"
    return submission.job, 202, headers


@blp.route("", methods=["GET"])
@blp.arguments(JobListQuerySchema, location="query")
@blp.response(200, JobListSchema)
def index(args: dict[str, Any]) -> Any:
    before = _decode_cursor(args["cursor"]) if args.get("cursor") else None
    limit = args["limit"]
    with services().reads() as s:  # the request's read session: no write lock, the caller already in it
        jobs = list_jobs(s, current_user(), statuses=args["status"], before_pk=before, limit=limit + 1,
                         name=args["name"], tags=args["tag"])
        page = jobs[:limit]
    next_cursor = _encode_cursor(jobs[limit - 1].pk) if len(jobs) > limit else None
    return {"jobs": page, "next_cursor": next_cursor}


@blp.route("/<string:job_id>", methods=["GET"], endpoint="job")
@blp.doc(responses={200: {"links": JOB_LINKS}})  # int: merged with @blp.response's 200
@blp.response(200, JobSchema)
@blp.alt_response(400, description=AMBIGUOUS)
@blp.alt_response(404, description="no such job (or not yours)")
def get_job(job_id: str) -> Any:
    return load_job(job_id)


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
    return job


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
    paths = _files(job)
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
    history = rundir.read_object(_files(job).history)  # as written: HistorySchema documents its keys
    return history if history is not None else {"epochs": []}


@blp.route("/<string:job_id>/checkpoints", methods=["GET"], endpoint="checkpoints")
@blp.doc(responses={200: {"links": {"DownloadCheckpoint": {"operationId": "jobs_checkpoint", "parameters": {
    "job_id": "$request.path.job_id", "name": "$response.body#/checkpoints/0/name"}}}}})
@blp.response(200, CheckpointListSchema)
@blp.alt_response(400, description=AMBIGUOUS)
@blp.alt_response(404, description="no such job")
def checkpoints(job_id: str) -> Any:
    job = load_job(job_id)
    return {"checkpoints": [{**{k: entry.get(k) for k in CHECKPOINT_KEYS},
                             "url": url_for("jobs.checkpoint", job_id=job.id, name=entry["name"])}
                            for entry in rundir.manifest_entries(_files(job).manifest)]}


@blp.route("/<string:job_id>/checkpoints/<path:name>", methods=["GET"], endpoint="checkpoint")
@blp.doc(responses={"200": {"description": "the checkpoint file (supports Range and If-None-Match)",
                            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                    "206": {"description": "partial content"}, "304": {"description": "not modified"}})
@blp.alt_response(400, description="invalid checkpoint name, or " + AMBIGUOUS)
@blp.alt_response(404, description="no such job or checkpoint")
def checkpoint(job_id: str, name: str) -> Any:
    job = load_job(job_id)
    paths = _files(job)
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
    etag: str | bool = True  # the manifest's digest when it describes these bytes, else werkzeug's
    for entry in rundir.manifest_entries(paths.manifest):
        if entry["name"] == filename and entry.get("sha256") and entry.get("size") == path.stat().st_size:
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
    export = _files(job).files.export
    if not (export / rundir.EXPORT_META).is_file() or not (export / rundir.EXPORT_MODEL).is_file():
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
    return send_file(export_dir / rundir.EXPORT_META, mimetype="application/json", max_age=0, conditional=True)


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
    weights = export_dir / rundir.EXPORT_MODEL
    etag: str | bool = True
    try:
        meta = rundir.read_object(export_dir / rundir.EXPORT_META)  # as written: only its sha256 matters here
    except rundir.RunFileCorrupt:
        meta = None
    sha = meta.get("sha256") if isinstance(meta, dict) else None
    if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha):
        etag = sha
    return send_file(weights, mimetype="application/octet-stream", as_attachment=True,
                     download_name=f"{job.id}-model.pt", conditional=True, etag=etag, max_age=0)
