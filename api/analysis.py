"""Metrics-integrity reports and plots: for a job's run directory, and for uploaded artifacts of
any training run (``POST /api/v1/analyses``). The work is the analysis package's
(common/analysis/service.py: the cached report of a run; common/analysis/uploads.py: storing
and analysing uploads); these views parse the request, check who may see what, and translate
its errors. ``form_fields``, ``analyse_uploads`` and ``find_analysis`` are also the dashboard's
upload form and report page (api/ui/views.py): one path to uploads for both.

Nothing from the request becomes a path: plot names come from an allowlist, analysis ids must
be 32 hex digits, uploaded files are stored under names of the server's own. Uploads live under
``<analyses root>/<user id>/<analysis id>/``, so a user can only ever reach their own (an admin
may read all, as with jobs).
"""
from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

from flask import Response, request, send_file, url_for
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from api.errors import ApiError
from api.extensions import current_user, services
from api.lookup import AMBIGUOUS, load_job
from api.schemas import AnalysisSchema, PlotListSchema, ReportSchema
from api.smorest import Blueprint
from common.analysis.service import PLOT_NAMES, NoMetrics, RunAnalysis, plot_path, run_analysis, strip_base
from common.analysis.uploads import OUT, IncomingFile, StoredAnalysis, for_form, is_complete, load_analysis
from common.analysis.uploads import create_analysis as store_analysis
from common.store import Job
from common.rundir import JobPaths

blp = Blueprint("analysis", __name__, url_prefix="/api/v1", description="Metrics-integrity reports and plots")

ANALYSIS_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_NUM_CLASSES = 10_000_000
FILE_FIELD = "files"
MAX_PATTERNS = 16
MAX_PATTERN_LENGTH = 1000
PNG_RESPONSE = {"200": {"description": "the plot", "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}}
NO_METRICS_YET = "the job has no metrics yet (it may still write them: retry later)"
ENDED_WITHOUT_METRICS = "the job ended without metrics (no epoch finished): the message says how it ended; do not retry"


def _plot_links(names: list[str], endpoint: str, **ids: str) -> list[dict[str, str]]:
    return [{"name": name, "url": url_for(endpoint, name=name, **ids)} for name in names]


def _no_such_plot() -> ApiError:
    return ApiError(404, f"no such plot; plots are {', '.join(PLOT_NAMES)}")


def _no_plot_data(name: str) -> ApiError:
    return ApiError(404, f"no {name} plot: the run has no data for it")


# ---------------------------------------------------------------------------------- jobs
def _no_metrics(job: Job | None) -> ApiError:
    """409 (retry later) while the job may still write metrics; 410 once it has ended without
    any, which no retry will change, saying how it ended."""
    if job is None or not job.job_status.finished:
        return ApiError(409, "the job has no metrics yet (no finished epoch or logged step); try again later")
    why = f": {job.failure_reason}" if job.failure_reason else ""
    return ApiError(410, f"job {job.id} ended {job.status} without metrics (no epoch finished, no step logged); "
                         f"there will be no report or plots{why}")


def job_analysis(run_dir: Path, job: Job | None = None) -> RunAnalysis:
    """The (cached) analysis of a job's run directory, its errors as the API answers them."""
    from common.analysis.series import AnalysisInputError

    try:
        return run_analysis(run_dir)
    except NoMetrics:
        raise _no_metrics(job) from None
    except AnalysisInputError as exc:
        # Our own files are written atomically; a malformed one is unexpected but is the
        # run's problem, not the request's.
        raise ApiError(409, f"the job's metrics cannot be analysed: {strip_base(str(exc), run_dir)}") from None


def _analysed_job(job_id: str) -> tuple[Job, RunAnalysis]:
    job = load_job(job_id)  # 404 for unknown ids and other users' jobs, like every job endpoint
    return job, job_analysis(JobPaths.of(services().settings.jobs_root, job.id).run, job)


@blp.route("/jobs/<string:job_id>/report", methods=["GET"], endpoint="job_report")
@blp.response(200, ReportSchema)
@blp.alt_response(400, description=AMBIGUOUS)
@blp.alt_response(404, description="no such job (or not yours)")
@blp.alt_response(409, description=NO_METRICS_YET)
@blp.alt_response(410, description=ENDED_WITHOUT_METRICS)
def job_report(job_id: str) -> Any:
    _, analysis = _analysed_job(job_id)
    return analysis.report


@blp.route("/jobs/<string:job_id>/plots", methods=["GET"], endpoint="job_plots")
@blp.doc(responses={200: {"links": {"GetPlot": {"operationId": "analysis_job_plot", "parameters": {
    "job_id": "$request.path.job_id", "name": "$response.body#/plots/0/name"}}}}})
@blp.response(200, PlotListSchema)
@blp.alt_response(400, description=AMBIGUOUS)
@blp.alt_response(404, description="no such job (or not yours)")
@blp.alt_response(409, description=NO_METRICS_YET)
@blp.alt_response(410, description=ENDED_WITHOUT_METRICS)
def job_plots(job_id: str) -> Any:
    job, analysis = _analysed_job(job_id)
    return {"plots": _plot_links(analysis.plots(), "analysis.job_plot", job_id=job.id)}


@blp.route("/jobs/<string:job_id>/plots/<string:name>.png", methods=["GET"], endpoint="job_plot")
@blp.doc(responses=PNG_RESPONSE)
@blp.alt_response(400, description=AMBIGUOUS)
@blp.alt_response(404, description="no such job or plot")
@blp.alt_response(409, description=NO_METRICS_YET)
@blp.alt_response(410, description=ENDED_WITHOUT_METRICS)
def job_plot(job_id: str, name: str) -> Any:
    if name not in PLOT_NAMES:
        load_job(job_id)  # an unknown job is 404 before anything else
        raise _no_such_plot()
    _, analysis = _analysed_job(job_id)
    data = analysis.plot_bytes(name)
    if data is None:
        raise _no_plot_data(name)
    return Response(data, mimetype="image/png")


# ---------------------------------------------------------------------------------- uploads
class AnalysisFormSchema(Schema):
    """The form fields of ``POST /analyses`` besides the files: the hints ``teacher analyze``
    takes as flags. Unknown fields are errors (a misspelt option must not be silently ignored)."""

    class Meta:
        unknown = RAISE

    num_classes = fields.Integer(strict=False, validate=validate.Range(2, MAX_NUM_CLASSES),
                                 metadata={"description": "C, for the chance loss ln(C)"})
    pattern = fields.List(fields.String(validate=validate.Length(max=MAX_PATTERN_LENGTH)),
                          validate=validate.Length(max=MAX_PATTERNS))
    label_smoothing = fields.Float(validate=validate.Range(0, 1, max_inclusive=False))
    mixup = fields.Boolean()
    ema = fields.Boolean()
    pretrained = fields.Boolean()
    accuracy_unit = fields.String(validate=validate.OneOf(("percent", "fraction")))


def _form() -> dict[str, Any]:
    """The request's form fields, validated by :class:`AnalysisFormSchema`; 400 naming each bad field."""
    return form_fields({key: request.form.getlist(key) for key in request.form},
                       sorted(k for k in request.files if k != FILE_FIELD))


def form_fields(values_by_key: dict[str, list[str]], unknown_files: list[str] | None = None) -> dict[str, Any]:
    """Form values (each key's list, as multipart sends them) validated by
    :class:`AnalysisFormSchema`, patterns compiled; 400 naming each bad field. Blank values are
    absent; a repeated field other than ``pattern`` takes its last value."""
    unknown_files = unknown_files or []
    raw: dict[str, Any] = {}
    for key, values in values_by_key.items():
        if key == "pattern":
            raw[key] = [v for v in values if v.strip()]
        elif any(v.strip() for v in values):
            raw[key] = values[-1]
    try:
        form = AnalysisFormSchema().load(raw)
    except ValidationError as exc:
        errors = {k: (v if isinstance(v, list) else [str(v)]) for k, v in exc.normalized_messages().items()}
        errors.update({k: ["unknown field"] for k in unknown_files})
        unknown = sorted(k for k, v in errors.items() if v == ["Unknown field."] or v == ["unknown field"])
        if unknown:
            raise ApiError(400, f"unknown form field(s): {', '.join(unknown)}; the fields are {FILE_FIELD} (files), "
                                f"{', '.join(AnalysisFormSchema().fields)}", errors) from None
        first = sorted(errors)[0]
        raise ApiError(400, f"{first}: {_flat(errors[first])}", errors) from None
    if unknown_files:
        raise ApiError(400, f"unknown form field(s): {', '.join(unknown_files)}; files go in {FILE_FIELD}",
                       {k: ["unknown field"] for k in unknown_files})
    form["pattern"] = _patterns(form.get("pattern") or [])
    return form


def _flat(messages: Any) -> str:
    if isinstance(messages, dict):
        return "; ".join(f"{k}: {_flat(v)}" for k, v in messages.items())
    if isinstance(messages, list):
        return "; ".join(_flat(m) for m in messages)
    return str(messages)


def _patterns(values: list[str]) -> tuple[str, ...]:
    """Extra console-log regexes (as ``teacher analyze --pattern``), tried before the built-in ones."""
    from common.analysis.log_reader import compile_user_patterns
    from common.analysis.series import AnalysisInputError

    try:
        compile_user_patterns(values)  # checked even when no console log is uploaded
    except AnalysisInputError as exc:
        message = for_form(str(exc))
        raise ApiError(400, f"pattern: {message}", {"pattern": [message]}) from None
    return tuple(values)


def _analysis_dir(analysis_id: str) -> Path:
    """The caller's analysis (any user's for an admin); 404 otherwise, so ids do not leak."""
    root = services().settings.analyses_dir
    if ANALYSIS_ID.match(analysis_id):
        user = current_user()
        candidates = [root / str(user.id) / analysis_id]
        if user.is_admin:
            candidates = sorted(root.glob(f"*/{analysis_id}"))
        for path in candidates:
            if is_complete(path):
                return path
    raise ApiError(404, f"analysis {analysis_id} not found")


ANALYSIS_REQUEST = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                      "description": "history JSON, CSV, step-stream JSONL, TensorBoard event files, console logs"},
            "num_classes": {"type": "integer", "minimum": 2, "description": "C, for the chance loss ln(C)"},
            "label_smoothing": {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMaximum": True,
                                "description": "hint: label smoothing used in training"},
            "mixup": {"type": "boolean", "description": "hint: mixup/CutMix used in training"},
            "ema": {"type": "boolean", "description": "hint: validation runs on EMA weights"},
            "pretrained": {"type": "boolean", "description": "hint: fine-tuned from pretrained weights"},
            "accuracy_unit": {"type": "string", "enum": ["percent", "fraction"],
                              "description": "the unit of accuracies the files do not declare (default: detected)"},
            "pattern": {"type": "array", "items": {"type": "string", "maxLength": MAX_PATTERN_LENGTH},
                        "maxItems": MAX_PATTERNS,
                        "description": "extra console-log regexes with named groups (epoch, split, rest, or metric "
                                       "names such as val_loss), tried before the built-in ones; repeat the field "
                                       "for several (as `teacher analyze --pattern`)"},
        },
        "additionalProperties": False,
        "required": ["files"],
    }}},
}


@blp.route("/analyses", methods=["POST"], endpoint="analyses")
@blp.doc(summary="Analyse uploaded training artifacts", requestBody=ANALYSIS_REQUEST, responses={201: {
    "headers": {"Location": {"description": "the analysis's URL", "schema": {"type": "string"}}},
    "links": {"GetAnalysis": {"operationId": "analysis_analysis", "parameters": {"analysis_id": "$response.body#/id"}},
              "GetPlot": {"operationId": "analysis_analysis_plot",
                          "parameters": {"analysis_id": "$response.body#/id", "name": "$response.body#/plots/0/name"}}}}})
@blp.response(201, AnalysisSchema)
@blp.alt_response(400, description="no files, an unknown or malformed file, a bad num_classes or pattern, or an "
                                   "unknown form field (errors name the field)")
@blp.alt_response(413, description="upload too large")
@blp.alt_response(415, description="not multipart/form-data")
def create_analysis() -> Any:

    settings = services().settings
    request.max_content_length = settings.max_upload_length  # this endpoint's own limit
    if request.mimetype != "multipart/form-data":
        raise ApiError(415, "send the files as multipart/form-data")
    form = _form()
    incoming = [IncomingFile(field, fs.filename, fs.stream) for field, fs in request.files.items(multi=True)]
    analysis = analyse_uploads(incoming, form)
    return analysis, 201, {"Location": url_for("analysis.analysis", analysis_id=analysis.record.id)}


def analyse_uploads(incoming: list[IncomingFile], form: dict[str, Any]) -> StoredAnalysis:
    """Store and analyse the caller's uploads as a new analysis. ``form`` is :func:`form_fields`'s
    result. The one path for ``POST /analyses`` and the dashboard's upload form. Raises ApiError
    (400) when there are no files, and UploadRejected (400, naming the field) when one cannot be
    read."""
    if not incoming:
        raise ApiError(400, "files: no files uploaded; upload at least one file (multipart field 'files')",
                       {"files": ["upload at least one file"]})
    from common.analysis.hints import user_hints

    hints = user_hints(num_classes=form.get("num_classes"), label_smoothing=form.get("label_smoothing"),
                       mixup=form.get("mixup"), ema=form.get("ema"), pretrained=form.get("pretrained"),
                       accuracy_unit=form.get("accuracy_unit"), origin="form field")
    user = current_user()
    analysis_id = uuid.uuid4().hex
    return store_analysis(services().settings.analyses_dir / str(user.id) / analysis_id, incoming,
                          analysis_id=analysis_id, user=user.name, user_id=user.id,
                          num_classes=form.get("num_classes"), patterns=tuple(form.get("pattern") or ()),
                          hints=hints)


def find_analysis(analysis_id: str) -> StoredAnalysis:
    """The caller's analysis (any user's for an admin), as GET /analyses/{id} answers; else 404."""
    return load_analysis(_analysis_dir(analysis_id))


@blp.route("/analyses/<string:analysis_id>", methods=["GET"], endpoint="analysis")
@blp.response(200, AnalysisSchema)
@blp.alt_response(404, description="no such analysis (or not yours)")
def get_analysis(analysis_id: str) -> Any:
    return find_analysis(analysis_id)


@blp.route("/analyses/<string:analysis_id>/plots/<string:name>.png", methods=["GET"], endpoint="analysis_plot")
@blp.doc(responses=PNG_RESPONSE)
@blp.alt_response(404, description="no such analysis or plot")
def analysis_plot(analysis_id: str, name: str) -> Any:
    base = _analysis_dir(analysis_id)
    if name not in PLOT_NAMES:
        raise _no_such_plot()
    path = plot_path(base / OUT, name)
    if path is None:
        raise _no_plot_data(name)
    return send_file(path, mimetype="image/png", max_age=0, conditional=True)
