"""marshmallow schemas of the API: request bodies, query strings and responses. Each one both
validates (or dumps) and documents its body in the OpenAPI document.

The training config itself is ``common.config.TrainConfigSchema`` (the exact class `teacher
train` validates with); this module adds only what the service layers on top. Bodies load into
the dataclasses below; responses are dumped from the objects the views return (a job's row for
JobSchema).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import marshmallow as ma
from flask import current_app, has_request_context, request, url_for
from marshmallow import fields, post_load, pre_load, validate

from api.dumping import CompiledDump, CompiledList
from api.redact import scrub, server_roots
from common.config import ConfigError, StrictInteger, TrainConfigSchema, apply_overrides
from common.analysis.formats import FileKind
from common.analysis.service import PLOT_NAMES
from common.analysis.uploads import StoredAnalysis
from common.rundir import RunStatus
from common.store.attempts import resumed_from
from common.store.models import AttemptCause, Job, JobAttempt, JobStatus, StopCause

JOB_ID = validate.Regexp(r"^[0-9a-f]{32}$", error="not a job id")
# Where a client names one of its jobs: the id or a unique prefix of it (api.jobs.resolve_job).
JOB_REF = validate.Regexp(r"^[0-9a-f]{6,32}$", error="a job id, or a unique prefix of at least 6 of its hex digits")
CHECKPOINT_REF = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", error="not a checkpoint name")
CONFIG_NAME = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", error="not a config name")
STATUSES = [s.value for s in JobStatus]
TAG = validate.Regexp(r"^[A-Za-z0-9._:=-]{1,64}$", error="1-64 letters, digits, '.', '_', '-', ':' or '='")
MAX_TAGS = 16


class _Strict(ma.Schema):
    class Meta:
        unknown = ma.RAISE


# ---------------------------------------------------------------------------- job bodies
@dataclass(frozen=True)
class InitFrom:
    """Another job's checkpoint that initialises a job: ``job`` as the client wrote it (an id
    or a unique prefix) until the submission resolves it to the full id."""

    job: str
    checkpoint: str = "best"


@dataclass(frozen=True)
class JobSpec:
    """A validated job body: the training config (TrainConfigSchema's result, every default
    filled in; ``init_from`` is set from the job reference at submit) and the service options."""

    config: dict[str, Any]
    queue: str | None = None
    priority: int = 5
    after: str | None = None
    init_from: InitFrom | None = None
    tags: tuple[str, ...] = ()


class InitFromSchema(_Strict):
    job = fields.String(required=True, validate=JOB_REF)
    checkpoint = fields.String(load_default="best", validate=CHECKPOINT_REF,
                               metadata={"description": "checkpoint name in that job: best, last, epoch_0003 ..."})

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> InitFrom:
        return InitFrom(**data)


class CheckpointRefField(fields.Nested):
    """``init_from`` in a job body: a reference to another job's checkpoint, never a path (a
    path under the runs root could name anyone's job; a reference is checked for ownership)."""

    default_error_messages = {"type": 'refer to another job\'s checkpoint as {{"job": ID, "checkpoint": "best"}}'}

    def __init__(self, **kwargs: Any):
        super().__init__(InitFromSchema, **kwargs)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, Mapping):
            raise self.make_error("type")
        return super()._deserialize(value, attr, data, **kwargs)


class _JobOptions(_Strict):
    """The service's keys in a job body, next to the config (or to a config's name)."""

    queue = fields.String(load_default=None, allow_none=True,
                          metadata={"description": "queue name (a configured one)"})
    priority = StrictInteger(load_default=5, validate=validate.Range(min=0, max=9),
                             metadata={"description": "0..9; higher runs first"})
    after = fields.String(load_default=None, allow_none=True, validate=JOB_REF,
                          metadata={"description": "start only when this job has succeeded"})
    init_from = CheckpointRefField(load_default=None, allow_none=True,
                                   metadata={"description": "initialise from another job's checkpoint"})
    tags = fields.List(fields.String(validate=TAG), load_default=list, validate=validate.Length(max=MAX_TAGS),
                       metadata={"description": f"labels the jobs list filters by (?tag=): at most {MAX_TAGS}, "
                                                "each 1-64 letters, digits, '.', '_', '-', ':' or '='; "
                                                "duplicates dropped, order kept"})
    overrides = fields.Dict(keys=fields.String(), load_default=dict, metadata={
        "description": "dotted-key overrides of the config, applied before it is validated, e.g. "
                       "{\"optim.lr\": 0.1} or {\"optim\": {\"lr\": 0.1}}"})

    def __init__(self, *args: Any, queues: Sequence[str] | None = None, **kwargs: Any):
        """``queues``: the configured ones (Settings.queues), which ``queue`` must name; not
        checked without (as when the OpenAPI document is generated)."""
        super().__init__(*args, **kwargs)
        if queues is not None:
            queue = self.fields["queue"]  # a shallow copy of the declared field: its list is shared
            queue.validators = [*queue.validators, _one_of_queues(tuple(queues))]


def _one_of_queues(queues: tuple[str, ...]) -> Callable[[str | None], None]:
    def check(value: str | None) -> None:
        if value is not None and value not in queues:
            raise ma.ValidationError(f"unknown queue; use one of: {', '.join(queues)}")

    return check


OPTION_FIELDS = frozenset(_JobOptions._declared_fields)
# The config key the service sets from the body's job reference, never through overrides.
SERVICE_OWNED = "init_from"
OWNED_BY_SERVICE = 'in the service, name the job: {"init_from": {"job": ID, "checkpoint": "best"}}'
NOT_CONFIG = "a service option, not part of the config: set it in the body, not in overrides"


class JobSpecSchema(_JobOptions, TrainConfigSchema):
    """A job body: a training config (the exact schema `teacher train` validates with) and the
    service options. ``overrides`` are applied to the config before it is validated. Loads
    into a :class:`JobSpec`; every bad field is reported at once, under its dotted name."""

    @pre_load
    def _apply_overrides(self, data: Any, **_: Any) -> Any:
        overrides = data.get("overrides") if isinstance(data, Mapping) else None
        if not isinstance(overrides, Mapping) or not all(isinstance(k, str) for k in overrides):
            return data  # not a mapping: the field reports it
        flat = _flatten(overrides)
        refused = {head: [OWNED_BY_SERVICE if head == SERVICE_OWNED else NOT_CONFIG]
                   for head in (k.split(".")[0] for k in flat) if head in OPTION_FIELDS}
        if refused:
            raise ma.ValidationError(refused)
        try:
            return {**apply_overrides(dict(data), flat), "overrides": overrides}
        except ConfigError as exc:
            raise ma.ValidationError(exc.errors) from None

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> JobSpec:
        config = {k: v for k, v in data.items() if k not in OPTION_FIELDS}
        config[SERVICE_OWNED] = None  # the path of init_from's checkpoint, set once it is resolved
        return JobSpec(config=config, queue=data["queue"], priority=data["priority"], after=data["after"],
                       init_from=data["init_from"], tags=tuple(dict.fromkeys(data["tags"])))


class NamedConfigSpecSchema(_JobOptions):
    """A job body that names a config file (under configs/, without .yaml). The body's other
    keys go on top of the file's config, which is then validated as a job body."""

    config = fields.String(required=True, validate=CONFIG_NAME,
                           metadata={"description": "name of a file under configs/ (without .yaml)"})
    name = fields.String(validate=TrainConfigSchema._declared_fields["name"].validate,
                         metadata={"description": "the job's name (default: the file's)"})

    error_messages = {"unknown": "not allowed next to 'config'; use 'overrides'"}


def _flatten(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``; an empty mapping is a value."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(_flatten(value, dotted))
        else:
            out[dotted] = value
    return out


# ---------------------------------------------------------------------------- responses
class IntegritySummarySchema(ma.Schema):
    """The live metrics-integrity check the trainer runs after every epoch (progress.json)."""

    verdict = fields.String(required=True, validate=validate.OneOf(["pass", "warn", "fail"]))
    failed = fields.List(fields.String(), required=True, metadata={"description": "ids of failed checks"})
    warnings = fields.List(fields.String(), required=True, metadata={"description": "ids of checks that warned"})


class ProgressSchema(ma.Schema):
    status = fields.String(allow_none=True, metadata={
        "description": "how the trainer's last record says the attempt stands: running, succeeded, failed or "
                       "stopped; never running while the job is not (see docs/api.md, Progress)"})
    phase = fields.String(allow_none=True)
    epoch = fields.Integer(allow_none=True)
    epochs = fields.Integer(allow_none=True)
    batch = fields.Integer(allow_none=True)
    batches = fields.Integer(allow_none=True)
    step = fields.Integer(allow_none=True)
    total_steps = fields.Integer(allow_none=True)
    percent = fields.Float(allow_none=True)
    throughput = fields.Float(allow_none=True, metadata={"description": "training images per second"})
    eta_s = fields.Float(allow_none=True)
    latest = fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True), allow_none=True)
    updated_at = fields.Float(allow_none=True)
    error = fields.String(allow_none=True)
    integrity = fields.Nested(IntegritySummarySchema, allow_none=True)


class LinksSchema(ma.Schema):
    self = fields.String()
    cancel = fields.String()
    logs = fields.String()
    metrics = fields.String()
    checkpoints = fields.String()
    report = fields.String()
    plots = fields.String()
    export = fields.String(metadata={"description": "the exported model (model.json; weights at .../export/model.pt)"})


# What a job response derives from the row, rather than reads from one column.
_LINK_ENDPOINTS = {"self": "jobs.job", "cancel": "jobs.cancel", "logs": "jobs.logs", "metrics": "jobs.metrics",
                   "checkpoints": "jobs.checkpoints", "report": "analysis.job_report",
                   "plots": "analysis.job_plots", "export": "jobs.export"}
# The progress status a job that is not running shows for a record left at "running" (the
# trainer was killed before it could write how the attempt ended); any other: stopped.
_ENDED_PROGRESS = {JobStatus.succeeded: RunStatus.SUCCEEDED, JobStatus.failed: RunStatus.FAILED}


def reported_progress(job: Job) -> dict[str, Any] | None:
    """The trainer's last progress record (the supervisor copies progress.json into the row),
    with a status that never contradicts the job's: while the job is not running, a record
    still saying ``running`` is shown as it was when the attempt ended, with ``failed`` or
    ``succeeded`` for a job that did, else ``stopped`` (cancelled, interrupted, queued again)."""
    progress = job.progress if isinstance(job.progress, dict) else None
    if progress is None or progress.get("status") != RunStatus.RUNNING.value or job.status == JobStatus.running.value:
        return progress
    return {**progress, "status": _ENDED_PROGRESS.get(job.job_status, RunStatus.STOPPED).value}


_LINK_SLOT = "__job_id__"  # a job id never looks like this (32 hex digits)
_LINK_CACHE = "teacher_job_link_templates"  # app.extensions key: {script root: {name: URL with the slot}}
_MAX_ROOTS = 8  # mount points cached per app (a proxy's X-Forwarded-Prefix must not grow it without bound)


def _link_templates() -> dict[str, str]:
    # The links differ between jobs only by the id, and between requests only by the app's mount
    # point (SCRIPT_NAME), so url_for runs once per app and mount point, then the id is put in:
    # eight url_for calls per poll were ~4 % of its CPU, and ~25 % of dumping a page of 50 jobs.
    cache: dict[str, dict[str, str]] = current_app.extensions.setdefault(_LINK_CACHE, {})
    root = request.script_root if has_request_context() else ""
    templates = cache.get(root)
    if templates is None:
        templates = {name: url_for(endpoint, job_id=_LINK_SLOT) for name, endpoint in _LINK_ENDPOINTS.items()}
        if len(cache) < _MAX_ROOTS:
            cache[root] = templates
    return templates


def _job_links(job: Job) -> dict[str, str]:
    return {name: url.replace(_LINK_SLOT, job.id) for name, url in _link_templates().items()}


def _failure_reason(job: Job) -> str | None:
    return scrub(job.failure_reason, server_roots()) if job.failure_reason else None  # no server paths


class _Derived:
    """A field whose value is computed from the whole object being dumped, not read from one
    attribute; unlike ``fields.Function``, its own type documents it in the OpenAPI document."""

    def __init__(self, *args: Any, derive: Callable[[Any], Any], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.derive = derive

    def get_value(self, obj: Any, attr: str, accessor: Any = None, default: Any = ma.missing) -> Any:
        return self.derive(obj)


class DerivedFloat(_Derived, fields.Float):
    pass


class DerivedInteger(_Derived, fields.Integer):
    pass


class DerivedString(_Derived, fields.String):
    pass


class DerivedNested(_Derived, fields.Nested):
    pass


class DerivedList(_Derived, fields.List):
    pass


class ResumePointSchema(ma.Schema):
    """Where an attempt started: after ``epoch`` completed epochs and ``step`` optimizer steps,
    ``batch`` micro-batches into the next epoch, from checkpoint ``checkpoint``."""

    epoch = fields.Integer(required=True, metadata={"description": "epochs completed before it"})
    step = fields.Integer(required=True, metadata={"description": "optimizer steps done before it"})
    batch = fields.Integer(allow_none=True, metadata={
        "description": "micro-batches into the next epoch (0: an epoch boundary; null until the trainer reports it)"})
    checkpoint = fields.String(required=True, metadata={"description": "the checkpoint file it loaded"})
    created_at = fields.Float(allow_none=True, metadata={"description": "when that checkpoint was written (Unix time)"})


def _attempt_reason(attempt: JobAttempt) -> str | None:
    return scrub(attempt.reason, server_roots()) if attempt.reason else None


class AttemptSchema(ma.Schema):
    """One attempt of a job (a row of its timeline)."""

    number = fields.Integer(required=True, metadata={"description": "1 for the first attempt, then 2, ..."})
    worker = fields.String(allow_none=True, metadata={"description": "the worker that ran it (host:pid)"})
    started_at = fields.DateTime(required=True)
    ended_at = fields.DateTime(allow_none=True, metadata={"description": "null while it runs"})
    cause = fields.String(allow_none=True, validate=validate.OneOf([c.value for c in AttemptCause]), metadata={
        "description": "how it ended (null while it runs): succeeded, cancelled, failed (not retried: bad input, no "
                       "space, time limit, an integrity stop, a cap), training_failed (a failure; retried while "
                       "failures < max_attempts), preempted (stopped on request: an interruption), killed (its "
                       "training process died by a signal nobody sent: a failure), worker_lost (its worker "
                       "vanished: an interruption), stalled (killed by the stall watchdog: an interruption)"})
    stop = fields.String(allow_none=True, validate=validate.OneOf([c.value for c in StopCause]), metadata={
        "description": "what the supervisor stopped the training for, if it did: worker_shutdown (SIGTERM to the "
                       "worker, e.g. a preemption), cancel, time_limit, superseded (another worker took the job), stalled "
                       "(the stall watchdog: no training progress for the stall timeout)"})
    exit_code = fields.Integer(allow_none=True, metadata={"description": "the training process's (negative: a signal)"})
    reason = DerivedString(allow_none=True, derive=_attempt_reason)
    resumed_from = fields.Nested(ResumePointSchema, allow_none=True, metadata={
        "description": "where it started (null: from scratch)"})
    lost_s = fields.Float(allow_none=True, metadata={
        "description": "for an attempt the next one resumes after: seconds of work since its last checkpoint, "
                       "which are done again (null when it finished the job, or could not be read)"})


class JobSchema(CompiledDump, ma.Schema):
    """A job response, dumped from the job's row (common.store.Job); through api.dumping's
    compiled dump, since every status poll dumps one."""

    id = fields.String(required=True)
    name = fields.String(required=True)
    tags = fields.List(fields.String(), required=True, metadata={"description": "the job's tags, as submitted"})
    user = fields.String(required=True, attribute="user.name")
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    queue = fields.String(required=True)
    priority = fields.Integer(required=True)
    attempts = fields.Integer(required=True, metadata={"description": "attempts started (interruptions included)"})
    max_attempts = fields.Integer(required=True, metadata={
        "description": "cap on failures (TEACHER_MAX_ATTEMPTS)"})
    interruptions = DerivedInteger(required=True, derive=lambda job: job.interruptions or 0, metadata={
        "description": "attempts that ended without a failure of their own: a graceful stop (worker shutdown, "
                       "preemption), a lost worker, a stall; capped by TEACHER_MAX_INTERRUPTIONS"})
    failures = DerivedInteger(required=True, derive=lambda job: job.failures or 0, metadata={
        "description": "attempts that failed: the training failed (retried from its last checkpoint), or its "
                       "training process was killed by a signal nobody sent (the OOM killer); capped by max_attempts"})
    resumed_from = DerivedNested(ResumePointSchema, allow_none=True, derive=resumed_from, metadata={
        "description": "where the latest attempt started (null: from scratch, or not started)"})
    timeline = DerivedList(fields.Nested(AttemptSchema), required=True, derive=lambda job: list(job.attempt_rows),
                           metadata={"description": "the job's attempts, oldest first"})
    run_seconds = DerivedFloat(required=True, derive=lambda job: round(job.run_seconds or 0.0, 3), metadata={
        "description": "Training time so far, summed over attempts (counts against TEACHER_MAX_JOB_SECONDS)"})
    cancel_requested = fields.Boolean(required=True)
    after = fields.String(allow_none=True, attribute="after_id")
    init_from = fields.Nested(InitFromSchema, allow_none=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(allow_none=True)
    started_at = fields.DateTime(allow_none=True)
    heartbeat_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    exit_code = fields.Integer(allow_none=True)
    failure_reason = DerivedString(allow_none=True, derive=_failure_reason)
    progress = DerivedNested(ProgressSchema, allow_none=True, derive=reported_progress)
    integrity = DerivedNested(IntegritySummarySchema, allow_none=True,
                              derive=lambda job: (reported_progress(job) or {}).get("integrity"), metadata={
        "description": "the latest live integrity check (after the last finished epoch); null before the first"})
    result = fields.Dict(allow_none=True, metadata={"description": "final metrics of a succeeded job"})
    config = fields.Dict(metadata={"description": "the resolved training config"})
    links = DerivedNested(LinksSchema, derive=_job_links)


class JobListSchema(ma.Schema):
    # A page's jobs through JobSchema compiled once (api.dumping): marshmallow's per-field dump
    # chain was ~60 % of the CPU of a page of 50; the same JSON, the same OpenAPI document.
    jobs = CompiledList(fields.Nested(JobSchema), required=True)
    next_cursor = fields.String(allow_none=True, metadata={"description": "pass as ?cursor= for the next page"})


class JobListQuerySchema(_Strict):
    status = fields.List(fields.String(validate=validate.OneOf(STATUSES)), load_default=list)
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    cursor = fields.String(load_default=None, validate=validate.Length(max=64))
    tag = fields.List(fields.String(validate=TAG), load_default=list, validate=validate.Length(max=MAX_TAGS),
                      metadata={"description": "only jobs having this tag (repeat: every one of them)"})
    name = fields.String(load_default=None, validate=validate.Length(min=1, max=129), metadata={
        "description": "only jobs of this name, or whose name starts with it when it ends with '*'"})


class LogsQuerySchema(_Strict):
    tail = fields.Integer(load_default=200, validate=validate.Range(min=1, max=10_000))
    follow = fields.Boolean(load_default=False, metadata={"description": "stream new lines as server-sent events until the job ends"})


class LogsSchema(ma.Schema):
    lines = fields.List(fields.String(), required=True)
    status = fields.String(required=True)


class HistorySchema(ma.Schema):
    format = fields.String(allow_none=True)
    accuracy_unit = fields.String(allow_none=True)
    num_classes = fields.Integer(allow_none=True)
    class_names = fields.List(fields.String(), allow_none=True)
    dataset_sizes = fields.Dict(allow_none=True)
    epochs = fields.List(fields.Dict(), required=True)


class CheckpointInfoSchema(ma.Schema):
    name = fields.String(required=True)
    epoch = fields.Integer(allow_none=True)
    step = fields.Integer(allow_none=True)
    size = fields.Integer(allow_none=True)
    sha256 = fields.String(allow_none=True)
    metrics = fields.Dict(allow_none=True)
    url = fields.String()


class CheckpointListSchema(ma.Schema):
    checkpoints = fields.List(fields.Nested(CheckpointInfoSchema), required=True)


class HealthSchema(ma.Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok", "degraded", "down"]))
    checks = fields.Dict(keys=fields.String(), values=fields.Dict(), required=True)


# ---------------------------------------------------------------------------- analysis


class CheckResultSchema(ma.Schema):
    id = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["pass", "warn", "fail", "skipped"]))
    message = fields.String(required=True)
    metric = fields.String(allow_none=True)
    source = fields.String(allow_none=True)
    epochs = fields.List(fields.Integer(), required=True)
    values = fields.List(fields.Raw(allow_none=True), required=True,
                         metadata={"description": "non-finite numbers appear as the strings nan, inf, -inf"})
    reason = fields.String(allow_none=True, metadata={"description": "why a check was skipped"})
    details = fields.Dict(required=True)


class ReportSchema(ma.Schema):
    """The integrity report (``teacher analyze``'s report.json), strict JSON."""

    format = fields.String(required=True)
    verdict = fields.String(required=True, validate=validate.OneOf(["pass", "warn", "fail"]))
    counts = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    num_classes = fields.Integer(allow_none=True)
    chance_loss = fields.Float(allow_none=True)
    dataset_sizes = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    last_epoch = fields.Integer(allow_none=True)
    strength = fields.Dict(metadata={"description": "ran: check ids that looked at data; skipped: id -> why; weak: a "
                                                    "pass with more checks skipped than run"})
    hints = fields.Dict(metadata={"description": "used: the hints applied (num_classes, label_smoothing, mixup, ema, "
                                                 "pretrained, accuracy_unit); from: where each came from; notes"})
    checks = fields.List(fields.Nested(CheckResultSchema), required=True)
    sources = fields.List(fields.Dict(), required=True)


class PlotLinkSchema(ma.Schema):
    name = fields.String(required=True, validate=validate.OneOf(PLOT_NAMES))
    url = fields.String(required=True)


class PlotListSchema(ma.Schema):
    plots = fields.List(fields.Nested(PlotLinkSchema), required=True)


class UploadedFileSchema(ma.Schema):
    field = fields.String(required=True, metadata={"description": "the multipart field it came in"})
    filename = fields.String(allow_none=True, metadata={"description": "the client's file name (display only)"})
    stored_as = fields.String(required=True, metadata={"description": "the server's name for it (upload_0.json ...)"})
    kind = fields.String(required=True, validate=validate.OneOf([kind.value for kind in FileKind]))
    size = fields.Integer(required=True)


class AnalysisLinksSchema(ma.Schema):
    self = fields.String(required=True)


def _analysis_plots(analysis: StoredAnalysis) -> list[dict[str, str]]:
    return [{"name": name, "url": url_for("analysis.analysis_plot", analysis_id=analysis.record.id, name=name)}
            for name in analysis.plots]


class AnalysisSchema(ma.Schema):
    """An analysis of uploads, dumped from common.analysis.uploads.StoredAnalysis."""

    id = fields.String(required=True, attribute="record.id")
    user = fields.String(required=True, attribute="record.user")
    created_at = fields.DateTime(required=True, attribute="record.created_at")
    num_classes = fields.Integer(allow_none=True, attribute="record.num_classes")
    files = fields.List(fields.Nested(UploadedFileSchema), required=True, attribute="record.files")
    report = fields.Nested(ReportSchema, required=True)
    plots = DerivedList(fields.Nested(PlotLinkSchema), required=True, derive=_analysis_plots)
    links = DerivedNested(AnalysisLinksSchema, required=True, derive=lambda analysis: {
        "self": url_for("analysis.analysis", analysis_id=analysis.record.id)})
