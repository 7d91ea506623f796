"""marshmallow schemas of the API: request options, query strings and responses.

The training config itself is ``common.config.TrainConfigSchema`` (the exact class `teacher
train` validates with); this module adds only what the service layers on top.
"""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from common.config import StrictInteger, TrainConfigSchema
from common.store.models import JobStatus

JOB_ID = validate.Regexp(r"^[0-9a-f]{32}$", error="not a job id")
# Where a client names one of its jobs: the id or a unique prefix of it (api.jobs.resolve_job).
JOB_REF = validate.Regexp(r"^[0-9a-f]{6,32}$", error="a job id, or a unique prefix of at least 6 of its hex digits")
CHECKPOINT_REF = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", error="not a checkpoint name")
CONFIG_NAME = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", error="not a config name")
STATUSES = [s.value for s in JobStatus]


class _Strict(ma.Schema):
    class Meta:
        unknown = ma.RAISE


class InitFromSchema(_Strict):
    job = fields.String(required=True, validate=JOB_REF)
    checkpoint = fields.String(load_default="best", validate=CHECKPOINT_REF,
                               metadata={"description": "checkpoint name in that job: best, last, epoch_0003 ..."})


class JobOptionsSchema(_Strict):
    """Service keys that may sit next to the config sections in a job body."""

    queue = fields.String(load_default=None, metadata={"description": "queue name (a configured one)"})
    priority = StrictInteger(load_default=5, validate=validate.Range(min=0, max=9),
                              metadata={"description": "0..9; higher runs first"})
    after = fields.String(load_default=None, allow_none=True, validate=JOB_REF,
                          metadata={"description": "start only when this job has succeeded"})
    init_from = fields.Nested(InitFromSchema, load_default=None, allow_none=True,
                              metadata={"description": "initialise from another job's checkpoint"})
    config = fields.String(load_default=None, validate=CONFIG_NAME,
                           metadata={"description": "name of a file under configs/ (without .yaml)"})
    overrides = fields.Dict(keys=fields.String(), load_default=dict,
                            metadata={"description": "dotted-key overrides, e.g. {\"optim.lr\": 0.1}"})


class JobSpecSchema(TrainConfigSchema):
    """Documentation of a full job body: a training config plus the service options. (The body
    is validated in two parts, options then config, so that both report every bad field.)"""

    queue = JobOptionsSchema._declared_fields["queue"]
    priority = JobOptionsSchema._declared_fields["priority"]
    after = JobOptionsSchema._declared_fields["after"]
    init_from = fields.Nested(InitFromSchema, load_default=None, allow_none=True)


class NamedConfigSpecSchema(_Strict):
    """Documentation of a job body that names a config file."""

    config = fields.String(required=True, validate=CONFIG_NAME)
    overrides = fields.Dict(keys=fields.String())
    name = fields.String()
    queue = fields.String()
    priority = StrictInteger()
    after = fields.String(allow_none=True)
    init_from = fields.Nested(InitFromSchema, allow_none=True)


class IntegritySummarySchema(ma.Schema):
    """The live metrics-integrity check the trainer runs after every epoch (progress.json)."""

    verdict = fields.String(required=True, validate=validate.OneOf(["pass", "warn", "fail"]))
    failed = fields.List(fields.String(), required=True, metadata={"description": "ids of failed checks"})
    warnings = fields.List(fields.String(), required=True, metadata={"description": "ids of checks that warned"})


class ProgressSchema(ma.Schema):
    status = fields.String(allow_none=True)
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


class JobSchema(ma.Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    user = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    queue = fields.String(required=True)
    priority = fields.Integer(required=True)
    attempts = fields.Integer(required=True, metadata={"description": "attempts started (interruptions included)"})
    max_attempts = fields.Integer(required=True, metadata={
        "description": "cap on attempts whose worker or training process died while training (TEACHER_MAX_ATTEMPTS)"})
    interruptions = fields.Integer(required=True, metadata={
        "description": "attempts that ended without a failure of their own: a graceful stop (worker shutdown, "
                       "preemption) or a worker lost before it trained; capped by TEACHER_MAX_INTERRUPTIONS"})
    run_seconds = fields.Float(required=True, metadata={
        "description": "Training time so far, summed over attempts (counts against TEACHER_MAX_JOB_SECONDS)"})
    cancel_requested = fields.Boolean(required=True)
    after = fields.String(allow_none=True)
    init_from = fields.Nested(InitFromSchema, allow_none=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(allow_none=True)
    started_at = fields.DateTime(allow_none=True)
    heartbeat_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    exit_code = fields.Integer(allow_none=True)
    failure_reason = fields.String(allow_none=True)
    progress = fields.Nested(ProgressSchema, allow_none=True)
    integrity = fields.Nested(IntegritySummarySchema, allow_none=True, metadata={
        "description": "the latest live integrity check (after the last finished epoch); null before the first"})
    result = fields.Dict(allow_none=True, metadata={"description": "final metrics of a succeeded job"})
    config = fields.Dict(metadata={"description": "the resolved training config"})
    links = fields.Nested(LinksSchema)


class JobListSchema(ma.Schema):
    jobs = fields.List(fields.Nested(JobSchema), required=True)
    next_cursor = fields.String(allow_none=True, metadata={"description": "pass as ?cursor= for the next page"})


class JobListQuerySchema(_Strict):
    status = fields.List(fields.String(validate=validate.OneOf(STATUSES)), load_default=list)
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    cursor = fields.String(load_default=None, validate=validate.Length(max=64))


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
PLOT_NAMES = ("loss", "accuracy", "lr", "throughput", "step_loss")


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
    kind = fields.String(required=True, validate=validate.OneOf(["history", "csv", "steps", "tensorboard", "log"]))
    size = fields.Integer(required=True)


class AnalysisLinksSchema(ma.Schema):
    self = fields.String(required=True)


class AnalysisSchema(ma.Schema):
    id = fields.String(required=True)
    user = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    num_classes = fields.Integer(allow_none=True)
    files = fields.List(fields.Nested(UploadedFileSchema), required=True)
    report = fields.Nested(ReportSchema, required=True)
    plots = fields.List(fields.Nested(PlotLinkSchema), required=True)
    links = fields.Nested(AnalysisLinksSchema, required=True)
