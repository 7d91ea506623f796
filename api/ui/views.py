"""The dashboard's pages (blueprint ``ui``, mounted at /ui/).

Every view reads through the API's own code: ``api.lookup`` (a job the caller may see, else
404), ``common.store.jobs.list_jobs`` (GET /jobs's query), ``api.submission.submit`` (POST
/jobs), ``common.store.jobs.request_cancel``, ``api.analysis`` (form_fields, analyse_uploads,
find_analysis: POST and GET /analyses), and the API's checkpoint and plot views for the files. Errors are translated by the API's handlers (api/errors.py) and shown as a page.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from flask import (Blueprint, Response, abort, current_app, g, jsonify, make_response, redirect, render_template,
                   render_template_string, request, url_for)
from flask_wtf.csrf import CSRFError, CSRFProtect
from markupsafe import Markup
from sqlalchemy import func, select
from werkzeug.exceptions import HTTPException

from api import analysis as analysis_api
from api import errors as api_errors
from api import jobs as jobs_api
from api import submission as submission_service
from api.extensions import services
from api.lookup import load_job, resolve_job
from api.schemas import JobSchema
from api.ui import present
from api.ui.forms import AnalysisForm, CancelForm, SignInForm, SignOutForm, SubmitForm
from api.ui.session import session_user, sign_in, sign_out
from common import rundir
from common.auth import AuthError
from api.body import precheck_yaml
from common.config import CONFIGS_DIR, ConfigError, parse_yaml
from common.rundir import JobPaths
from common.runfiles import tail_events
from common import devices as devices_mod
from common.store import Job, JobStatus, WorkerBeat, transaction, utcnow
from common.store.jobs import list_jobs, request_cancel

log = logging.getLogger(__name__)

blp = Blueprint("ui", __name__, template_folder="templates", static_folder="static",
                static_url_path="/static")
csrf = CSRFProtect()

PAGE_SIZE = 25
LOG_TAIL = 200
OPEN_ENDPOINTS = frozenset({"ui.signin", "ui.static"})
POLLED_ENDPOINTS = frozenset({"ui.job_rows", "ui.job_live", "ui.job_integrity"})  # fetched by the pages' scripts
# No inline script or style anywhere: the pages load their code from /ui/static only.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


# ------------------------------------------------------------------ every request of the blueprint
@blp.before_request
def _guard() -> Any:
    """CSRF on every POST (sign-in included), then the session's user, else sign in first."""
    disabled = current_app.config.get("TEACHER_UI_DISABLED")
    if disabled and request.endpoint != "ui.static":
        return render_template("ui/error.html", status=503, message=disabled), 503
    if request.method == "POST":
        if request.endpoint == "ui.analysis_new":  # the upload form: the API's upload limit, not the app's
            request.max_content_length = services().settings.max_upload_length
        csrf.protect()
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    user = session_user(services().sessions, _session_hours())
    if user is None:
        if request.endpoint in POLLED_ENDPOINTS:  # a script's poll: never the sign-in page in its place
            return jsonify({"code": 401, "message": "signed out", "errors": {}}), 401
        return redirect(url_for("ui.signin", next=request.full_path.rstrip("?") if request.method == "GET" else None))
    g.user = user
    return None


@blp.after_request
def _headers(resp: Response) -> Response:
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint == "ui.static":
        resp.headers["Cache-Control"] = "no-cache"  # revalidated (ETag), so an update shows at once
    return resp


@blp.context_processor
def _context() -> dict[str, Any]:
    return {"user": g.get("user"), "signout_form": SignOutForm(), "fmt": present}


@blp.errorhandler(Exception)
def _error(e: Exception) -> Any:
    """The API's answer to this error (its status and message, api/errors.py), as a page."""
    if isinstance(e, CSRFError):
        status, message = 400, f"the form was refused: {e.description} Reload the page and try again."
    else:
        status, message, _ = api_answer(e)
    if request.path.endswith(".json"):
        return jsonify({"code": status, "message": message, "errors": {}}), status
    return render_template("ui/error.html", status=status, message=message), status


def api_answer(e: Exception) -> tuple[int, str, dict[str, list[str]]]:
    """(status, message, field errors) exactly as the JSON API answers ``e``."""
    if isinstance(e, HTTPException):
        resp = api_errors.handle_http_exception(e)
    else:
        handler = current_app._find_error_handler(e, [])  # the app's handlers, not this blueprint's
        resp = handler(e) if handler is not None else api_errors.handle_unexpected(e)
    resp = current_app.make_response(resp)
    body = resp.get_json(silent=True) or {}
    return resp.status_code, str(body.get("message", "")), dict(body.get("errors") or {})


# ------------------------------------------------------------------ sign-in
@blp.route("/signin", methods=["GET", "POST"], endpoint="signin")
def signin() -> Any:
    form = SignInForm()
    error = None
    if form.validate_on_submit():
        try:
            sign_in(services().sessions, form.token.data or "", lifetime_hours=_session_hours(),
                    user_agent=request.user_agent.string)
            return redirect(_safe_next(request.args.get("next")))
        except AuthError as exc:
            error = f"{exc}: paste a live token (teacher tokens create --user NAME)"
    status = 401 if error else 200
    return render_template("ui/signin.html", form=form, error=error), status


def _session_hours() -> float:
    return float(current_app.config["TEACHER_UI_SESSION_HOURS"])


def _safe_next(target: str | None) -> str:
    """Only a path of this dashboard: never another site (an open redirect)."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("ui.jobs")


@blp.route("/signout", methods=["POST"], endpoint="signout")
def signout() -> Any:
    sign_out(services().sessions)
    return redirect(url_for("ui.signin"))


@blp.route("/", endpoint="home")
def home() -> Any:
    return redirect(url_for("ui.jobs"))


# ------------------------------------------------------------------ jobs list
def _list_args() -> tuple[list[str], str, list[str], int | None]:
    statuses = [s for s in request.args.getlist("status") if s in present.STATUSES]
    name = request.args.get("name", "").strip()[:128]
    tags = present.split_tags(" ".join(request.args.getlist("tag")))
    cursor = request.args.get("before", "")
    return statuses, name, tags, int(cursor) if cursor.isdigit() else None


def _page() -> tuple[list[dict[str, Any]], int | None]:
    """One page of the caller's jobs (GET /jobs's query and ownership: list_jobs, which
    filters in SQL), newest first, as JobSchema dumps, and the cursor of the next page (None:
    the last page). The name field is a prefix (the API's ``name*``); a tag the API would
    refuse matches no job."""
    statuses, name, tags, cursor = _list_args()
    if any(not present.valid_tag(t) for t in tags):
        return [], None
    with services().sessions() as s:
        rows = list_jobs(s, g.user, statuses=statuses, before_pk=cursor, limit=PAGE_SIZE + 1,
                         name=f"{name.rstrip('*')}*" if name else None, tags=tags)
        page = rows[:PAGE_SIZE]
        next_before = page[-1].pk if len(rows) > PAGE_SIZE else None
        return JobSchema(many=True).dump(page), next_before


@blp.route("/jobs", endpoint="jobs")
def jobs() -> Any:
    rows, next_before = _page()
    statuses, name, tags, _ = _list_args()
    rows_html = render_template("ui/_job_rows.html", rows=rows, admin=g.user.is_admin)
    return render_template("ui/jobs.html", rows_html=Markup(rows_html), rows_etag=_etag(rows_html),
                           next_before=next_before, statuses=statuses, name=name, tags=" ".join(tags),
                           all_statuses=present.STATUSES, admin=g.user.is_admin)


@blp.route("/jobs/rows", endpoint="job_rows")
def job_rows() -> Any:
    """The rows of the list as it would render now (polled by jobs.js, which starts with the
    page's own ETag); 304 while unchanged."""
    rows, _ = _page()
    html = render_template("ui/_job_rows.html", rows=rows, admin=g.user.is_admin)
    resp = make_response(html)
    resp.set_etag(_etag(html))
    resp.headers["Cache-Control"] = "no-cache"
    return resp.make_conditional(request)


def _etag(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# ------------------------------------------------------------------ one job
def _paths(job: Job) -> JobPaths:
    return JobPaths.of(services().settings.jobs_root, job.id)


@blp.route("/jobs/<string:job_id>", endpoint="job")
def job(job_id: str) -> Any:
    row = load_job(job_id)  # 404 for another user's job, as GET /api/v1/jobs/{id}
    dump = JobSchema().dump(row)
    paths = _paths(row)
    integrity_etag = _integrity_etag(row, paths)  # before the report: a newer history only makes it stale
    report = _report(row, paths)
    return render_template("ui/job.html", job=dump, report=report, flags=present.flagged_points(report),
                           integrity_etag=integrity_etag, log_lines=_log_lines(row, paths),
                           checkpoints=_checkpoints(row, paths), epochs=_epochs(paths),
                           config_yaml=present.as_yaml(dump.get("config") or {}),
                           cancel_form=CancelForm(), finished=row.job_status.finished, log_tail=LOG_TAIL,
                           plots=[n for n in analysis_api.PLOT_NAMES if n in ("loss", "accuracy", "lr", "throughput")])


def _report(row: Job, paths: JobPaths) -> dict[str, Any] | None:
    """The integrity report with every check's evidence, once there are metrics to check."""
    try:
        return analysis_api.job_analysis(paths.run, row).report
    except Exception as exc:  # no metrics yet (409/410) or unreadable: the page still shows the rest
        log.debug("no report for job %s: %s", row.id, exc)
        return None


def _log_lines(row: Job, paths: JobPaths) -> list[str]:
    events, _ = tail_events(paths.log, LOG_TAIL, include_partial=row.job_status.finished)
    return [line for _, line in events]


def _checkpoints(row: Job, paths: JobPaths) -> list[dict[str, Any]]:
    return [{**{k: entry.get(k) for k in jobs_api.CHECKPOINT_KEYS},
             "url": url_for("ui.checkpoint", job_id=row.id, name=entry["name"])}
            for entry in rundir.manifest_entries(paths.manifest)]


def _epochs(paths: JobPaths) -> list[dict[str, Any]]:
    history = rundir.read_object(paths.files.history)
    epochs = history.get("epochs") if isinstance(history, dict) else None
    return [e for e in epochs or [] if isinstance(e, dict)]


STEP_TAIL = 2000  # steps.jsonl lines read for the current epoch's step stream


def _current_steps(paths: JobPaths) -> list[dict[str, Any]]:
    """The newest epoch's training steps as running means (the trainer's exact sums divided by
    the samples so far): {"epoch", "batch", "step", "loss", "top1", "lr", "throughput"}."""
    events, _ = tail_events(paths.files.steps, STEP_TAIL)
    records = []
    for _, line in events:
        try:
            records.append(rundir.StepRecord.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue  # a line being written, or damaged: the stream is a live view, not the record
    train = [r for r in records if r.split == "train" and r.samples > 0]
    if not train:
        return []
    epoch = max(r.epoch for r in train)
    return [{"epoch": r.epoch, "batch": r.batch, "step": r.step,
             "loss": r.loss_sum / r.samples if r.loss_sum is not None else None,
             "top1": 100.0 * r.correct1 / r.samples, "lr": r.lr, "throughput": r.throughput}
            for r in train if r.epoch == epoch]


def _files_stamp(paths: JobPaths) -> str:
    """Size and mtime of the files the live view reads: it changes when any of them does."""
    parts = []
    for path in (paths.files.history, paths.log, paths.manifest, paths.files.steps):
        try:
            st = path.stat()
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append("-")
    return "|".join(parts)


@blp.route("/jobs/<string:job_id>/live.json", endpoint="job_live")
def job_live(job_id: str) -> Any:
    """What the job page shows live. The ETag is the job's row (as dumped) and the stat of its
    files, so an unchanged job costs one row read and three stats, answered 304."""
    row = load_job(job_id)
    dump = JobSchema().dump(row)
    paths = _paths(row)
    etag = hashlib.sha256((json.dumps(dump, sort_keys=True, default=str) + _files_stamp(paths)).encode()).hexdigest()[:32]
    if request.if_none_match.contains(etag):
        resp = Response(status=304)
        resp.set_etag(etag)
        resp.headers["Cache-Control"] = "no-cache"
        return resp
    body = {"job": dump, "epochs": _epochs(paths), "log": _log_lines(row, paths), "steps": _current_steps(paths),
            "checkpoints": _checkpoints(row, paths), "finished": row.job_status.finished}
    resp = jsonify(body)
    resp.set_etag(etag)
    resp.headers["Cache-Control"] = "no-cache"
    return resp


# the page's own macros (ui/_integrity.html), rendered alone with the blueprint's context (fmt)
INTEGRITY_PART = ('{% import "ui/_integrity.html" as integ with context %}'
                  '{{ integ.section(report) if part == "section" else integ.flag_note(flags) }}')


def _integrity_etag(row: Job, paths: JobPaths) -> str:
    """What the integrity section is redrawn for: the job's status and the stat of its history
    and run config. Steps and log lines change the report only between epochs' checks, and
    re-running the analysis (plots included) on every step would cost a poll far more."""
    parts = [row.status]
    for path in (paths.files.history, paths.files.config):
        try:
            st = path.stat()
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append("-")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


@blp.route("/jobs/<string:job_id>/integrity.json", endpoint="job_integrity")
def job_integrity(job_id: str) -> Any:
    """The integrity section as the page renders it (its checks table and the note on the
    curves, escaped by Jinja) and the points to mark on the curves. job.js asks for it when
    an epoch finished or the status changed; 304 while the history and status are unchanged."""
    row = load_job(job_id)  # 404 for another user's job
    paths = _paths(row)
    etag = _integrity_etag(row, paths)
    if request.if_none_match.contains(etag):
        resp = Response(status=304)
    else:
        report = _report(row, paths)
        flags = present.flagged_points(report)
        resp = jsonify({"verdict": (report or {}).get("verdict"), "last_epoch": (report or {}).get("last_epoch"),
                        "checks": [{"id": c.get("id"), "status": c.get("status")} for c in (report or {}).get("checks") or []],
                        "flags": flags, "html": render_template_string(INTEGRITY_PART, part="section", report=report),
                        "flag_note_html": render_template_string(INTEGRITY_PART, part="flag_note", flags=flags),
                        "finished": row.job_status.finished})
    resp.set_etag(etag)
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@blp.route("/jobs/<string:job_id>/cancel", methods=["POST"], endpoint="cancel")
def cancel(job_id: str) -> Any:
    form = CancelForm()
    if not form.validate_on_submit():
        abort(400)
    with transaction(services().sessions) as s:
        row = resolve_job(s, g.user, job_id, for_update=True)
        request_cancel(s, row)  # 409 (already finished) is shown as the API says it
        job_id = row.id
    return redirect(url_for("ui.job", job_id=job_id))


@blp.route("/jobs/<string:job_id>/checkpoints/<path:name>", endpoint="checkpoint")
def checkpoint(job_id: str, name: str) -> Any:
    return jobs_api.checkpoint(job_id, name)  # the API's view: same checks, ETag, Range


@blp.route("/jobs/<string:job_id>/plots/<string:name>.png", endpoint="plot")
def plot(job_id: str, name: str) -> Any:
    return analysis_api.job_plot(job_id, name)


# ------------------------------------------------------------------ compare
COMPARE_MIN, COMPARE_MAX = 2, 6


@blp.route("/compare", endpoint="compare")
def compare() -> Any:
    """2-6 of the caller's jobs side by side: curves overlaid, final and best metrics, and the
    config keys whose values differ. ``?job=<id>&job=<id>...`` (ids or unique prefixes)."""
    refs = list(dict.fromkeys(r.strip() for r in request.args.getlist("job") if r.strip()))
    if not refs:
        return render_template("ui/compare_pick.html", rows=_page()[0], max=COMPARE_MAX)
    if not COMPARE_MIN <= len(refs) <= COMPARE_MAX:
        return render_template("ui/error.html", status=400,
                               message=f"pick {COMPARE_MIN} to {COMPARE_MAX} jobs to compare (got {len(refs)})"), 400
    rows = [load_job(ref) for ref in refs]  # each one 404 unless the caller may see it
    runs = []
    for row in rows:
        dump = JobSchema().dump(row)
        epochs = _epochs(_paths(row))
        runs.append({"job": dump, "epochs": epochs, "final": epochs[-1] if epochs else None,
                     "best": present.best_epoch(epochs)})
    return render_template("ui/compare.html", runs=runs,
                           differences=present.config_differences([r["job"].get("config") or {} for r in runs]),
                           series={"runs": [{"id": r["job"]["id"], "name": r["job"]["name"], "epochs": r["epochs"]}
                                            for r in runs]})


# ------------------------------------------------------------------ admin
@blp.route("/admin/workers", endpoint="workers")
def workers() -> Any:
    """Admins: each worker's last beat (alive as /health counts it), its queues and the job it
    runs; jobs waiting per queue, counted in the store (the truth; Redis holds only ids)."""
    if not g.user.is_admin:
        abort(404)  # as for a job that is not yours: nothing to see here
    svc = services()
    now = utcnow()
    with svc.sessions() as s:
        beats = list(s.scalars(select(WorkerBeat).order_by(WorkerBeat.name)))
        running = {row.worker: row for row in s.scalars(
            select(Job).where(Job.status == JobStatus.running.value, Job.deleted_at.is_(None)))}
        depths = dict(s.execute(select(Job.queue, func.count()).where(
            Job.status.in_([JobStatus.queued.value, JobStatus.interrupted.value]), Job.deleted_at.is_(None))
            .group_by(Job.queue)).all())
        rows = []
        for beat in beats:
            age = (now - beat.seen_at).total_seconds()
            job = running.get(beat.name)
            rows.append({"name": beat.name, "queues": beat.queues, "seen_s": age,
                         "alive": WorkerBeat.is_alive(age, svc.settings.worker_beat_s),
                         "job": {"id": job.id, "name": job.name} if job else None,
                         "devices": _devices_cell(beat.devices)})
    queues = [(q, depths.get(q, 0)) for q in svc.settings.queues] + \
             [(q, n) for q, n in depths.items() if q not in svc.settings.queues]
    return render_template("ui/workers.html", workers=rows, queues=queues)


def _devices_cell(raw: Any) -> dict[str, Any] | None:
    """The devices column: "2 × NVIDIA H100 80GB" or "CPU (16 cores)", with the probe's error
    (such a worker takes no job that asks for GPUs); None: not reported (an older worker)."""
    found = devices_mod.stored(raw)
    if found is None:
        return None
    return {"summary": devices_mod.describe(found), "error": found.error,
            "fake": found.source != "probe",
            "detail": "; ".join(f"{g.name} {g.memory_mb / 1024:.0f} GiB" for g in found.gpus)}


# ------------------------------------------------------------------ analyses
ANALYSIS_FIELDS = tuple(analysis_api.AnalysisFormSchema().fields)  # what POST /api/v1/analyses takes
HINT_CHOICES = ("mixup", "ema", "pretrained")  # yes / no / not said (then detected from the files)
ANALYSIS_LIST_MAX = 100
ANALYSIS_CHARTED_PLOTS = ("loss", "accuracy")  # PNGs the curves replace when scripts run (the others stay)


@blp.route("/analyses", endpoint="analyses")
def analyses() -> Any:
    """The caller's own uploads, newest first (read from their folder's records: no store rows)."""
    from common.analysis.uploads import AnalysisRecord, is_complete

    folder = services().settings.analyses_dir / str(g.user.id)
    records = []
    for path in folder.iterdir() if folder.is_dir() else []:
        if analysis_api.ANALYSIS_ID.match(path.name) and is_complete(path):
            try:
                records.append(AnalysisRecord.read(path))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("analysis %s: unreadable record: %s", path.name, exc)
    records.sort(key=lambda r: r.created_at, reverse=True)
    return render_template("ui/analyses.html", records=records[:ANALYSIS_LIST_MAX], more=len(records) > ANALYSIS_LIST_MAX)


@blp.route("/analyses/new", methods=["GET", "POST"], endpoint="analysis_new")
def analysis_new() -> Any:
    """Upload files for an analysis: the same checks and code as POST /api/v1/analyses
    (api.analysis.form_fields, then analyse_uploads); its 400s are shown on the form."""
    form = AnalysisForm()
    if request.method == "GET":
        return render_template("ui/analysis_new.html", form=form, values={}, message=None, errors={})
    values = {key: request.form.getlist(key) for key in ANALYSIS_FIELDS if key in request.form}
    if "pattern" in values:  # one regex per line of the textarea, as repeated fields
        values["pattern"] = [line for text in values["pattern"] for line in text.splitlines()]
    from common.analysis.uploads import IncomingFile, UploadRejected

    incoming = [IncomingFile("files", fs.filename, fs.stream) for fs in request.files.getlist("files")
                if fs.filename or fs.content_length]  # a file input left empty sends one nameless, empty part
    try:
        stored = analysis_api.analyse_uploads(incoming, analysis_api.form_fields(values))
    except (api_errors.ApiError, UploadRejected) as exc:
        status, message, errors = api_answer(exc)
        shown = {k: v[-1] for k, v in values.items() if k != "pattern"} | {"pattern": "\n".join(values.get("pattern", []))}
        return render_template("ui/analysis_new.html", form=form, values=shown, message=message,
                               errors=errors), status
    return redirect(url_for("ui.analysis", analysis_id=stored.record.id))


@blp.route("/analyses/<string:analysis_id>", endpoint="analysis")
def analysis(analysis_id: str) -> Any:
    """The report, with the job page's interactive curves drawn from the per-epoch series stored
    beside report.json when the analysis was made (StoredAnalysis.series). Stored, not computed
    here: that would parse every upload again (TensorBoard files, long logs, NumPy) on each
    view of a report that never changes. They go in the page as a JSON data block, checked by
    the same lookup as the page (another user's analysis is a 404 before anything is read)."""
    stored = analysis_api.find_analysis(analysis_id)  # 404 for another user's, as GET /api/v1/analyses/{id}
    return render_template("ui/analysis.html", a=stored, report=stored.report, series=stored.series or None,
                           flags=present.flagged_points(stored.report), CHARTED_PLOTS=ANALYSIS_CHARTED_PLOTS)


@blp.route("/analyses/<string:analysis_id>/plots/<string:name>.png", endpoint="analysis_plot")
def analysis_plot(analysis_id: str, name: str) -> Any:
    return analysis_api.analysis_plot(analysis_id, name)  # the API's view: same lookup, same 404s


# ------------------------------------------------------------------ submit
def _configs_dir() -> Path:
    return services().settings.configs_dir or CONFIGS_DIR


def _config_names() -> list[str]:
    return sorted(p.stem for p in _configs_dir().glob("*.yaml"))


@blp.route("/submit", methods=["GET", "POST"], endpoint="submit")
def submit() -> Any:
    names = _config_names()
    form = SubmitForm()
    form.config.choices = [(n, n) for n in names]
    chosen = request.args.get("config") or ("demo" if "demo" in names else (names[0] if names else ""))
    if request.method == "GET":
        form.config.data = chosen if chosen in names else None
        if chosen in names:
            form.yaml.data = (_configs_dir() / f"{chosen}.yaml").read_text(encoding="utf-8")
        return render_template("ui/submit.html", form=form, errors={}, message=None)
    if not form.validate_on_submit():
        return render_template("ui/submit.html", form=form, errors={}, message="fill in the config"), 400
    text = form.yaml.data or ""
    try:
        precheck_yaml(text)  # the API's limits first: no aliases, bounded depth (as POST /jobs)
        body = parse_yaml(text, source="the config")
        # comma-separated only: "a b" is one (bad) tag, reported as typed, not two good ones
        tags = present.split_tags(form.tags.data or "", separators=",")
        if tags and isinstance(body, dict):
            body = {**body, "tags": tags}  # the form's field, validated as the API validates a body's tags
        result = submission_service.submit(services(), g.user, body)
    except Exception as exc:  # noqa: BLE001 - answered as the API answers it, field by field
        if not isinstance(exc, (ConfigError, LookupError)) and not hasattr(exc, "errors") \
                and not hasattr(exc, "retry_after"):
            raise
        status, message, errors = api_answer(exc)
        return render_template("ui/submit.html", form=form, message=message,
                               errors=present.errors_with_lines(text, errors)), status
    return redirect(url_for("ui.job", job_id=result.job.id))


__all__ = ["blp", "csrf", "JobStatus"]
