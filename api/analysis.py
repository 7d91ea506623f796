"""Metrics-integrity reports and plots: for a job's run directory, and for uploaded artifacts of
any training run (``POST /api/v1/analyses``). The work is the analysis package's
(common/analysis/service.py: the cached report of a run; common/analysis/uploads.py: storing
and analysing uploads); these views parse the request, check who may see what, and translate
its errors.

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

from api.errors import ApiError
from api.extensions import current_user, services
from api.lookup import AMBIGUOUS, load_job
from api.schemas import AnalysisSchema, PlotListSchema, ReportSchema
from api.smorest import Blueprint
from common.analysis.service import PLOT_NAMES, NoMetrics, RunAnalysis, plot_path, run_analysis, strip_base
from common.analysis.uploads import OUT, IncomingFile, for_form, is_complete, load_analysis
from common.analysis.uploads import create_analysis as store_analysis
from common.store import Job
from common.rundir import JobPaths

blp = Blueprint("analysis", __name__, url_prefix="/api/v1", description="Metrics-integrity reports and plots")

ANALYSIS_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_NUM_CLASSES = 10_000_000
FORM_FIELDS = frozenset({"num_classes", "pattern"})
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
def _check_form_fields() -> None:
    """Every multipart field is one this endpoint reads: a misspelt option is an error, not
    silently ignored."""
    unknown = sorted({k for k in request.form if k not in FORM_FIELDS}
                     | {k for k in request.files if k != FILE_FIELD})
    if unknown:
        raise ApiError(400, f"unknown form field(s): {', '.join(unknown)}; the fields are "
                            f"{FILE_FIELD} (files), num_classes and pattern",
                       {k: ["unknown field"] for k in unknown})


def _patterns() -> tuple[str, ...]:
    """Extra console-log regexes (as ``teacher analyze --pattern``), tried before the built-in ones."""
    values = [v for v in request.form.getlist("pattern") if v.strip()]
    if len(values) > MAX_PATTERNS:
        raise ApiError(400, f"pattern: at most {MAX_PATTERNS}", {"pattern": [f"at most {MAX_PATTERNS} patterns"]})
    for value in values:
        if len(value) > MAX_PATTERN_LENGTH:
            raise ApiError(400, "pattern: too long", {"pattern": [f"at most {MAX_PATTERN_LENGTH} characters"]})
    from common.analysis.log_reader import compile_user_patterns
    from common.analysis.series import AnalysisInputError

    try:
        compile_user_patterns(values)  # checked even when no console log is uploaded
    except AnalysisInputError as exc:
        message = for_form(str(exc))
        raise ApiError(400, f"pattern: {message}", {"pattern": [message]}) from None
    return tuple(values)


def _num_classes() -> int | None:
    raw = request.form.get("num_classes")
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "num_classes: not an integer", {"num_classes": ["an integer >= 2"]}) from None
    if not 2 <= value <= MAX_NUM_CLASSES:
        raise ApiError(400, "num_classes: out of range", {"num_classes": [f"between 2 and {MAX_NUM_CLASSES}"]})
    return value


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
    _check_form_fields()
    incoming = [IncomingFile(field, fs.filename, fs.stream) for field, fs in request.files.items(multi=True)]
    if not incoming:
        raise ApiError(400, "files: no files uploaded; upload at least one file (multipart field 'files')",
                       {"files": ["upload at least one file"]})
    num_classes = _num_classes()
    patterns = _patterns()
    user = current_user()
    analysis_id = uuid.uuid4().hex
    analysis = store_analysis(settings.analyses_dir / str(user.id) / analysis_id, incoming,  # UploadRejected: 400
                              analysis_id=analysis_id, user=user.name, user_id=user.id,
                              num_classes=num_classes, patterns=patterns)
    return analysis, 201, {"Location": url_for("analysis.analysis", analysis_id=analysis_id)}


@blp.route("/analyses/<string:analysis_id>", methods=["GET"], endpoint="analysis")
@blp.response(200, AnalysisSchema)
@blp.alt_response(404, description="no such analysis (or not yours)")
def get_analysis(analysis_id: str) -> Any:
    return load_analysis(_analysis_dir(analysis_id))


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
