"""Metrics-integrity reports and plots: for a job's run directory, and for uploaded artifacts of
any training run (``POST /api/v1/analyses``).

Nothing from the request becomes a path: plot names come from an allowlist, analysis ids must
be 32 hex digits, uploaded files are stored as ``upload_<n>.<ext>`` with the extension chosen
from their detected type. Uploads live under ``<analyses root>/<user id>/<analysis id>/``, so a
user can only ever reach their own (an admin may read all, as with jobs).
"""
from __future__ import annotations

import contextlib
import csv
import datetime as dt
import fcntl
import io
import json
import logging
import re
import shutil
import struct
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator

from flask import Response, request, send_file, url_for
from werkzeug.datastructures import FileStorage

from api.errors import ApiError
from api.extensions import current_user, services
from api.jobs import AMBIGUOUS, _load_job
from api.schemas import PLOT_NAMES, AnalysisSchema, PlotListSchema, ReportSchema
from api.smorest import Blueprint
from common.store import Job
from common.store.jobs import JobPaths

log = logging.getLogger(__name__)

blp = Blueprint("analysis", __name__, url_prefix="/api/v1", description="Metrics-integrity reports and plots")

ANALYSIS_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_FILES = 16
MAX_NUM_CLASSES = 10_000_000
# The files of a run directory whose changes make a cached report stale.
RUN_INPUTS = ("history.json", "steps.jsonl", "train.log", "config.yaml")
PNG_RESPONSE = {"200": {"description": "the plot", "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}}

@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One writer or reader of a job's analysis directory at a time, across gunicorn's threads
    and processes (flock on a fresh descriptor), so a request never serves a PNG that another
    request is still writing."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------- helpers
def _public_report(report: dict[str, Any], base: Path) -> dict[str, Any]:
    """The report without server paths: sources are named relative to ``base``."""
    for source in report.get("sources", []):
        raw = str(source.get("path") or "")
        try:
            source["path"] = str(Path(raw).relative_to(base))
        except ValueError:
            source["path"] = Path(raw).name
    text = json.dumps(report, allow_nan=False)
    for prefix in {str(base), str(base.resolve())}:
        text = text.replace(prefix + "/", "")
    return json.loads(text)


def _plot_links(out_dir: Path, endpoint: str, **ids: str) -> list[dict[str, str]]:
    return [{"name": name, "url": url_for(endpoint, name=name, **ids)}
            for name in PLOT_NAMES if (out_dir / f"{name}.png").is_file()]


def _plot_file(out_dir: Path, name: str) -> Path:
    """The PNG for an allowlisted plot name; the path is built from the constant, not the input."""
    for allowed in PLOT_NAMES:
        if name == allowed:
            path = out_dir / f"{allowed}.png"
            if path.is_file():
                return path
            raise ApiError(404, f"no {allowed} plot: the run has no data for it")
    raise ApiError(404, f"no such plot; plots are {', '.join(PLOT_NAMES)}")


def _send_png(path: Path) -> Any:
    return send_file(path, mimetype="image/png", max_age=0, conditional=True)


# ---------------------------------------------------------------------------------- jobs
def _signature(run_dir: Path) -> list[list[Any]]:
    """What the report of a run directory depends on: (name, size, mtime) of each input."""
    files = [run_dir / name for name in RUN_INPUTS]
    tb = run_dir / "tb"
    if tb.is_dir():
        files += sorted(p for p in tb.rglob("*tfevents*") if p.is_file())
    out = []
    for path in files:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        out.append([str(path.relative_to(run_dir)), st.st_size, st.st_mtime_ns])
    return out


def _no_metrics(job: Job | None) -> ApiError:
    """409 (retry later) while the job may still write metrics; 410 once it has ended without
    any, which no retry will change, saying how it ended."""
    if job is None or not job.job_status.finished:
        return ApiError(409, "the job has no metrics yet (no finished epoch or logged step); try again later")
    why = f": {job.failure_reason}" if job.failure_reason else ""
    return ApiError(410, f"job {job.id} ended {job.status} without metrics (no epoch finished, no step logged); "
                         f"there will be no report or plots{why}")


def job_analysis(run_dir: Path, job: Job | None = None) -> tuple[dict[str, Any], Path]:
    """The report of a job's run directory, and the directory holding its plots. Computed with
    ``write_analysis`` into ``run_dir/analysis`` and reused while the run's files are unchanged."""
    from common.analysis.series import AnalysisInputError

    if not ((run_dir / "history.json").is_file() or (run_dir / "steps.jsonl").is_file()):
        raise _no_metrics(job)
    out = run_dir / "analysis"
    with _locked(out):
        signature = _signature(run_dir)
        stamp = out / "inputs.json"
        try:
            cached = json.loads(stamp.read_text()) == signature and json.loads((out / "report.json").read_text())
        except (FileNotFoundError, ValueError):
            cached = None
        if cached:
            return _public_report(cached, run_dir), out
        from common.analysis.cli import write_analysis
        from common.atomic import atomic_write_text

        for name in PLOT_NAMES:  # a plot whose data is gone must not be served from an older run
            (out / f"{name}.png").unlink(missing_ok=True)
        try:
            report, _ = write_analysis([run_dir], out)
        except AnalysisInputError as exc:
            # Our own files are written atomically; a malformed one is unexpected but is the
            # run's problem, not the request's.
            raise ApiError(409, f"the job's metrics cannot be analysed: {_strip(str(exc), run_dir)}") from None
        atomic_write_text(stamp, json.dumps(signature))
        return _public_report(report.to_dict(), run_dir), out


NO_METRICS_YET = "the job has no metrics yet (it may still write them: retry later)"
ENDED_WITHOUT_METRICS = "the job ended without metrics (no epoch finished): the message says how it ended; do not retry"


def _analysed_job(job_id: str) -> tuple[Job, dict[str, Any], Path]:
    job = _load_job(job_id)  # 404 for unknown ids and other users' jobs, like every job endpoint
    report, out = job_analysis(JobPaths.of(services().settings.jobs_root, job.id).run, job)
    return job, report, out


@blp.route("/jobs/<string:job_id>/report", methods=["GET"], endpoint="job_report")
@blp.response(200, ReportSchema)
@blp.alt_response(400, description=AMBIGUOUS)
@blp.alt_response(404, description="no such job (or not yours)")
@blp.alt_response(409, description=NO_METRICS_YET)
@blp.alt_response(410, description=ENDED_WITHOUT_METRICS)
def job_report(job_id: str) -> Any:
    _, report, _ = _analysed_job(job_id)
    return report


@blp.route("/jobs/<string:job_id>/plots", methods=["GET"], endpoint="job_plots")
@blp.doc(responses={200: {"links": {"GetPlot": {"operationId": "analysis_job_plot", "parameters": {
    "job_id": "$request.path.job_id", "name": "$response.body#/plots/0/name"}}}}})
@blp.response(200, PlotListSchema)
@blp.alt_response(400, description=AMBIGUOUS)
@blp.alt_response(404, description="no such job (or not yours)")
@blp.alt_response(409, description=NO_METRICS_YET)
@blp.alt_response(410, description=ENDED_WITHOUT_METRICS)
def job_plots(job_id: str) -> Any:
    job, _, out = _analysed_job(job_id)
    return {"plots": _plot_links(out, "analysis.job_plot", job_id=job.id)}


@blp.route("/jobs/<string:job_id>/plots/<string:name>.png", methods=["GET"], endpoint="job_plot")
@blp.doc(responses=PNG_RESPONSE)
@blp.alt_response(400, description=AMBIGUOUS)
@blp.alt_response(404, description="no such job or plot")
@blp.alt_response(409, description=NO_METRICS_YET)
@blp.alt_response(410, description=ENDED_WITHOUT_METRICS)
def job_plot(job_id: str, name: str) -> Any:
    if name not in PLOT_NAMES:
        _load_job(job_id)  # an unknown job is 404 before anything else
        raise ApiError(404, f"no such plot; plots are {', '.join(PLOT_NAMES)}")
    _, _, out = _analysed_job(job_id)
    with _locked(out):  # a concurrent recomputation may rewrite the file
        data = _plot_file(out, name).read_bytes()
    return Response(data, mimetype="image/png")


# ---------------------------------------------------------------------------------- uploads
class UploadError(ApiError):
    """400 naming the multipart field; ``message`` starts with the file's label."""

    def __init__(self, field: str, message: str):
        super().__init__(400, message, {field: [message]})


def _strip(message: str, base: Path) -> str:
    for prefix in {str(base.resolve()), str(base)}:
        message = message.replace(prefix + "/", "")
    return message


def _masked_crc32c(data: bytes) -> int:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    return int(masked_crc32c(data))


def sniff(name: str, head: bytes, size: int) -> str:
    """The kind of an uploaded file from its name's extension, confirmed by its content.
    Raises ValueError with a human message when the two do not fit."""
    lower = name.lower()
    if "tfevents" in lower:
        # A TFRecord: uint64 length, masked crc32c of the length, payload, masked crc32c.
        if len(head) < 12:
            raise ValueError("too short for a TensorBoard event file")
        (length,) = struct.unpack("<Q", head[:8])
        (crc,) = struct.unpack("<I", head[8:12])
        if _masked_crc32c(head[:8]) != crc or length > size:
            raise ValueError("not a TensorBoard event file (its first record is invalid)")
        return "tensorboard"
    ext = lower.rsplit(".", 1)[-1] if "." in lower else ""
    if ext not in TEXT_EXTENSIONS:
        raise ValueError("unknown file type; upload history JSON (.json), CSV (.csv), step streams (.jsonl), "
                         "TensorBoard event files (events.out.tfevents.*) or console logs (.log, .txt, .out, .err)")
    if b"\x00" in head:
        raise ValueError("binary content; expected text (JSON, CSV or a console log)")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if size <= len(head) or exc.start < len(head) - 4:  # not just a character cut by the sniff
            raise ValueError("not UTF-8 text") from None
        text = head[:exc.start].decode("utf-8")
    if ext == "json":
        return "history"  # parsed in full below
    if ext == "jsonl":
        first = text.split("\n", 1)[0].strip()
        try:
            if not isinstance(json.loads(first), dict):
                raise ValueError
        except (ValueError, RecursionError):
            raise ValueError("not JSON lines (the first line is not a JSON object)") from None
        return "steps"
    if ext == "csv":
        try:
            header = next(csv.reader(io.StringIO(text.split("\n", 1)[0])))
        except (StopIteration, csv.Error):
            header = []
        if len([h for h in header if h.strip()]) < 2:
            raise ValueError("not a CSV with a header row (e.g. epoch,train_loss,eval_loss)")
        return "csv"
    return "log"  # .log .txt .out .err: UTF-8 text, checked in full when saved


TEXT_EXTENSIONS = frozenset({"json", "jsonl", "csv", "log", "txt", "out", "err"})
EXTENSIONS = {"history": ".json", "steps": ".jsonl", "csv": ".csv", "tensorboard": ".tfevents", "log": ".log"}
SNIFF_BYTES = 64 * 1024


def _display_name(name: str | None) -> str | None:
    if not name:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch if ch.isprintable() else "?" for ch in name)[:200] or None


def _save_uploads(items: Iterable[tuple[str, FileStorage]], inputs: Path) -> list[dict[str, Any]]:
    saved: list[dict[str, Any]] = []
    for index, (field, storage) in enumerate(items):
        label = f"{field}[{index}] ({_display_name(storage.filename) or 'unnamed'})"
        if index >= MAX_FILES:
            raise UploadError(field, f"{field}: at most {MAX_FILES} files per analysis")
        head = storage.stream.read(SNIFF_BYTES)
        storage.stream.seek(0, io.SEEK_END)
        size = storage.stream.tell()
        storage.stream.seek(0)
        if size == 0:
            raise UploadError(field, f"{label}: the file is empty")
        try:
            kind = sniff(storage.filename or "", head, size)
        except ValueError as exc:
            raise UploadError(field, f"{label}: {exc}") from None
        stored = f"upload_{index}{EXTENSIONS[kind]}"
        path = inputs / stored
        storage.save(path)
        if kind == "history":
            try:
                json.loads(path.read_bytes().decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                raise UploadError(field, f"{label}: not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
        elif kind == "log" and size > SNIFF_BYTES:
            try:
                with path.open(encoding="utf-8") as fh:
                    while fh.read(1 << 20):
                        pass
            except UnicodeDecodeError:
                raise UploadError(field, f"{label}: not UTF-8 text") from None
        saved.append({"field": field, "filename": _display_name(storage.filename), "stored_as": stored,
                      "kind": kind, "size": size})
    return saved


FORM_FIELDS = frozenset({"num_classes", "pattern"})
FILE_FIELD = "files"
MAX_PATTERNS = 16
MAX_PATTERN_LENGTH = 1000


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
        message = _for_api(str(exc))
        raise ApiError(400, f"pattern: {message}", {"pattern": [message]}) from None
    return tuple(values)


def _for_api(message: str) -> str:
    """The readers speak to ``teacher analyze`` users; this endpoint's option is a form field."""
    return (message.replace("pass --pattern REGEX", "send a `pattern` form field (a regex)")
            .replace("--pattern ", "pattern "))


def _display_names(files: list[dict[str, Any]]) -> dict[str, str]:
    """stored name -> the name reports and plot legends show: the client's (sanitised) file
    name, made unique with the stored name when two uploads share one. Display only."""
    counts: dict[str, int] = {}
    for f in files:
        if f["filename"]:
            counts[f["filename"]] = counts.get(f["filename"], 0) + 1
    return {f["stored_as"]: (f["filename"] if f["filename"] and counts[f["filename"]] == 1
                             else f"{f['filename'] or 'unnamed'} ({f['stored_as']})") for f in files}


def _analyse_uploads(inputs: Path, files: list[dict[str, Any]], out: Path, num_classes: int | None,
                     patterns: tuple[str, ...]) -> None:
    """``write_analysis`` with the sources renamed for display before the checks and plots
    run, so the report's messages and the legends say "console.log", not "upload_1.log"."""
    from common.analysis.checks import run_checks
    from common.analysis.plots import write_plots
    from common.analysis.readers import load_inputs
    from common.atomic import atomic_write_text

    run = load_inputs([inputs / f["stored_as"] for f in files], num_classes=num_classes, patterns=patterns)
    shown = _display_names(files)
    for source in run.sources:
        stored = Path(source.path).name
        if stored in shown:
            new = shown[stored] if source.name == stored else source.name.replace(stored, shown[stored])
            for series in [*source.series.values(), *source.steps.values()]:
                series.source = new
            source.name = new
    report = run_checks(run)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", report.to_json() + "\n")
    write_plots(run, report, out)


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
            if (path / "analysis.json").is_file():
                return path
    raise ApiError(404, f"analysis {analysis_id} not found")


def _analysis_body(base: Path) -> dict[str, Any]:
    meta = json.loads((base / "analysis.json").read_text())
    meta["created_at"] = dt.datetime.fromisoformat(meta["created_at"])
    report = json.loads((base / "out" / "report.json").read_text())
    return {**meta, "report": _public_report(report, base / "inputs"),
            "plots": _plot_links(base / "out", "analysis.analysis_plot", analysis_id=meta["id"]),
            "links": {"self": url_for("analysis.analysis", analysis_id=meta["id"])}}


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
    items = [(field, fs) for field, fs in request.files.items(multi=True)]
    if not items:
        raise ApiError(400, "files: no files uploaded; upload at least one file (multipart field 'files')",
                       {"files": ["upload at least one file"]})
    num_classes = _num_classes()
    patterns = _patterns()
    user = current_user()
    analysis_id = uuid.uuid4().hex
    base = settings.analyses_dir / str(user.id) / analysis_id
    inputs = base / "inputs"
    inputs.mkdir(parents=True)
    try:
        files = _save_uploads(items, inputs)
        by_stored = {f["stored_as"]: f for f in files}
        from common.analysis.series import AnalysisInputError

        try:
            _analyse_uploads(inputs, files, base / "out", num_classes, patterns)
        except (AnalysisInputError, ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as exc:
            message = _for_api(_strip(str(exc), inputs)) or type(exc).__name__
            if message.startswith("pattern "):  # a bad regex is the pattern field's fault
                raise ApiError(400, f"pattern: {message}", {"pattern": [message]}) from None
            stored = next((s for s in by_stored if message.startswith(s)), None)
            field = by_stored[stored]["field"] if stored else "files"
            if stored and by_stored[stored]["filename"]:
                message = message.replace(stored, f"{stored} ({by_stored[stored]['filename']})", 1)
            if not isinstance(exc, AnalysisInputError):
                log.warning("analysis %s: reader error on uploaded files", analysis_id, exc_info=exc)
            raise ApiError(400, f"{field}: cannot analyse the upload: {message}", {field: [message]}) from None
        meta = {"id": analysis_id, "user": user.name, "user_id": user.id,
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(), "num_classes": num_classes, "files": files}
        from common.atomic import atomic_write_text

        atomic_write_text(base / "analysis.json", json.dumps(meta))  # written last: marks it complete
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    body = _analysis_body(base)
    return body, 201, {"Location": body["links"]["self"]}


@blp.route("/analyses/<string:analysis_id>", methods=["GET"], endpoint="analysis")
@blp.response(200, AnalysisSchema)
@blp.alt_response(404, description="no such analysis (or not yours)")
def get_analysis(analysis_id: str) -> Any:
    return _analysis_body(_analysis_dir(analysis_id))


@blp.route("/analyses/<string:analysis_id>/plots/<string:name>.png", methods=["GET"], endpoint="analysis_plot")
@blp.doc(responses=PNG_RESPONSE)
@blp.alt_response(404, description="no such analysis or plot")
def analysis_plot(analysis_id: str, name: str) -> Any:
    base = _analysis_dir(analysis_id)
    return _send_png(_plot_file(base / "out", name))
