"""`teacher` commands of the job service: an HTTP client (submit, status, logs, cancel,
download) and local operations on the job store (tokens, db). Imports nothing heavy: no torch,
no Flask.

Exit codes, for every client command: 0 done; 2 the input was wrong (a bad config, bad YAML,
``--set`` without ``=``, a schema error, no or a bad token, an unknown job or checkpoint, an
ambiguous job id prefix); 1 the request was valid and something failed (the job did not
succeed, a checksum did not match, the server refused the operation in the job's state or is
unreachable).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import click

from common.config import CONFIGS_DIR, ConfigError, apply_overrides, parse_set_option, parse_yaml

DEFAULT_URL = "http://127.0.0.1:8000"
# The values of common.store.FINISHED (tests/unit/common/test_lifecycle.py checks), spelled out:
# importing the store pulls SQLAlchemy, 1.3 s more for every client command.
FINISHED = {"succeeded", "failed", "cancelled"}
SHORT_ID = 12  # what the CLI prints; any unique prefix of 6 or more characters is accepted
JOB_REF = re.compile(r"^[0-9a-fA-F]{6,32}$")
_FULL_ID = re.compile(r"\b[0-9a-f]{32}\b")
# The request was wrong as given (exit 2); any other error status is a failure (exit 1): 409 a
# conflict with the job's state, 429 try later, 5xx the server.
INPUT_ERROR_STATUSES = {400, 401, 403, 404, 405, 413, 415, 422}
from common.exitcodes import EXIT_FAILED, EXIT_USAGE


class CliError(click.ClickException):
    """A message and an exit code (1 a failure, 2 bad input)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED):
        super().__init__(message)
        self.exit_code = exit_code


def _error_message(r: Any) -> str:
    """``404: no such job`` plus the per-field errors the message does not already say."""
    try:
        body = r.json()
        message = str(body.get("message") or r.reason)
        fields = body.get("errors") or {}
    except ValueError:
        return f"{r.status_code}: {r.text[:500] or r.reason}"
    matches = _FULL_ID.findall(message)
    if r.status_code == 400 and "ambiguous" in message and matches:
        prefix = message.split("'")[1] if message.count("'") >= 2 else "the job id prefix"
        more = " (and more)" if "..." in message else ""
        return (f"job id prefix '{prefix}' is ambiguous; it matches{more}:\n"
                + "".join(f"  {m}\n" for m in matches) + "give more characters of the id")
    details = []
    for key, msgs in fields.items():
        text = " ".join(map(str, msgs if isinstance(msgs, list) else [msgs]))
        if text not in message:
            details.append(f"\n  {key}: {text}")
    return f"{r.status_code}: {message}{''.join(details)}"


class ApiClient:
    def __init__(self, url: str, token: str | None):
        import requests

        self.url = url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 202), **kw: Any) -> Any:
        import requests

        kw.setdefault("timeout", 60)
        try:
            r = self.session.request(method, self.url + "/api/v1" + path, **kw)
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as exc:  # before ConnectionError: InvalidURL is not one
            raise CliError(f"invalid server URL {self.url!r} (--url / TEACHER_URL): {exc}", EXIT_USAGE) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise CliError(f"cannot reach {self.url}: {exc}") from None
        if r.status_code not in ok:
            code = EXIT_USAGE if r.status_code in INPUT_ERROR_STATUSES else EXIT_FAILED
            raise CliError(_error_message(r), code)
        return r


def default_url() -> str:
    """Where the client goes when neither --url nor TEACHER_URL says: the API of the local stack
    `teacher serve` is running (its endpoints file), else the default port."""
    from common import serve_state

    state = serve_state.read()
    return state.api_url if state is not None else DEFAULT_URL


def client_options(func: Callable[..., Any]) -> Callable[..., Any]:
    @click.option("--url", envvar="TEACHER_URL", default=None,
                  help=f"Server URL (env TEACHER_URL; default: the running `teacher serve`, else {DEFAULT_URL}).")
    @click.option("--token", envvar="TEACHER_TOKEN", help="Bearer token (env TEACHER_TOKEN).")
    @functools.wraps(func)
    def wrapper(url: str | None, token: str | None, **kwargs: Any) -> Any:
        if not token:
            raise click.UsageError("no token: pass --token or set TEACHER_TOKEN (mint one with `teacher tokens create`)")
        return func(ApiClient(url or default_url(), token), **kwargs)

    return wrapper


def _job_ref(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> str | None:
    """A job id or a prefix of one (6+ hex characters, e.g. the 12 the CLI prints); passed to
    the API as given, which resolves it (an ambiguous prefix is a 400 listing the matches)."""
    if value is None:
        return None
    value = value.strip()
    if not JOB_REF.match(value):
        raise click.BadParameter(f"'{value}' is not a job id: give the id, or at least its first 6 characters "
                                 f"(hex, as `teacher status` shows)", ctx=ctx, param=param)
    return value.lower()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _pct(value: Any) -> str:
    return f"{float(value):.2f}%" if isinstance(value, (int, float)) else "n/a"


def _num(value: Any) -> str:
    return f"{float(value):.4f}" if isinstance(value, (int, float)) else "n/a"


def _fmt_progress(job: dict[str, Any]) -> str:
    p = job.get("progress") or {}
    parts = [f"{job['id'][:SHORT_ID]} {job['status']:<11}"]
    if p.get("epochs"):
        parts.append(f"epoch {p.get('epoch') or 0}/{p['epochs']}")
    if p.get("total_steps"):
        parts.append(f"step {p.get('step') or 0}/{p['total_steps']}")
    if p.get("percent") is not None:
        done = int(min(100.0, float(p["percent"])) / 5)
        parts.append(f"[{'#' * done}{'.' * (20 - done)}] {float(p['percent']):5.1f}%")
    if p.get("throughput"):
        parts.append(f"{float(p['throughput']):.0f} img/s")
    if p.get("eta_s") is not None and job["status"] == "running":
        parts.append(f"ETA {_duration(float(p['eta_s']))}")
    latest = p.get("latest") or {}
    parts.extend(f"{k}={v:.4g}" for k, v in list(latest.items())[:3] if isinstance(v, (int, float)))
    return "  ".join(parts)


def _final_val(job: dict[str, Any]) -> dict[str, Any]:
    return ((job.get("result") or {}).get("final") or {}).get("val") or {}


def _best(job: dict[str, Any]) -> dict[str, Any]:
    return (job.get("result") or {}).get("best") or {}


def _best_line(job: dict[str, Any]) -> str | None:
    best = _best(job)
    if not best:
        return None
    metrics = best.get("metrics") or {}
    return f"best.pt: epoch {best.get('epoch')}, val top-1 {_pct(metrics.get('val.top1'))}, val loss {_num(metrics.get('val.loss'))}"


def _summary_lines(job: dict[str, Any]) -> list[str]:
    """What a finished job gives: its final validation metrics and its best checkpoint."""
    lines = []
    val = _final_val(job)
    if val:
        lines.append(f"val (last epoch): top-1 {_pct(val.get('top1'))}, top-5 {_pct(val.get('top5'))}, "
                     f"loss {_num(val.get('loss'))}, {val.get('samples')} samples")
    best = _best_line(job)
    if best:
        lines.append(f"{best}  (teacher download {job['id'][:SHORT_ID]} --checkpoint best)")
    return lines


def _wait(api: ApiClient, job_id: str, interval: float = 1.0) -> dict[str, Any]:
    tty = sys.stderr.isatty()
    last = ""
    while True:
        job = api.request("GET", f"/jobs/{job_id}").json()
        line = _fmt_progress(job)
        if line != last:
            click.echo(("\r\033[K" if tty else "") + line, err=True, nl=not tty)
            last = line
        if job["status"] in FINISHED:
            if tty:
                click.echo("", err=True)
            return job
        time.sleep(interval)


# ------------------------------------------------------------------------------ client
@click.command()
@click.argument("config")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config value (repeatable).")
@click.option("--name", help="Job (and run) name.")
@click.option("--queue", help="Queue name.")
@click.option("--priority", type=click.IntRange(0, 9), help="0..9, higher first.")
@click.option("--after", "after", help="Start only after this job succeeded.")
@click.option("--init-from", "init_from", metavar="JOB[:CHECKPOINT]", help="Initialise from another job's checkpoint (default best).")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Tag the job (repeatable); `teacher status --tag` lists by tag.")
@click.option("--idempotency-key", help="Resubmitting with the same key returns the same job.")
@click.option("--wait", is_flag=True, help="Show live progress until the job ends; exit 1 unless it succeeded.")
@client_options
def submit(api: ApiClient, config: str, sets: tuple[str, ...], name: str | None, queue: str | None,
           priority: int | None, after: str | None, init_from: str | None, tags: tuple[str, ...],
           idempotency_key: str | None, wait: bool) -> None:
    """Submit CONFIG (a YAML file, or the name of a file under configs/) as a training job."""
    body = _job_body(config, sets)
    if name:
        body["name"] = name
    for key, value in (("queue", queue), ("priority", priority), ("after", after)):
        if value is not None:
            body[key] = value
    if init_from:
        job, _, ckpt = init_from.partition(":")
        body["init_from"] = {"job": job, "checkpoint": ckpt or "best"}
    if tags:
        body["tags"] = list(tags)  # checked by the API (400 naming tags)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    job = api.request("POST", "/jobs", json=body, headers=headers).json()
    click.echo(job["id"])
    if wait:
        final = _wait(api, job["id"])
        for line in _summary_lines(final):
            click.echo(line)
        if final["status"] != "succeeded":
            raise CliError(f"job {final['status']}: {final.get('failure_reason') or ''}", EXIT_FAILED)


def _job_body(config: str, sets: tuple[str, ...]) -> dict[str, Any]:
    """The POST /jobs body for CONFIG and its --set overrides; bad input is exit 2 before any
    request is made."""
    try:
        overrides = dict(parse_set_option(item) for item in sets)
        path = Path(config)
        if path.is_file():
            raw = parse_yaml(path.read_text(encoding="utf-8"), source=config)
            if not isinstance(raw, dict):
                raise ConfigError({"_schema": [f"{config} is not a mapping"]})
            return apply_overrides(raw, overrides)
        if (CONFIGS_DIR / f"{config}.yaml").is_file() or "/" not in config and not config.endswith((".yaml", ".yml")):
            return {"config": config, "overrides": overrides}
    except ConfigError as exc:
        raise CliError(f"invalid config: {exc}", EXIT_USAGE) from None
    raise click.BadParameter(f"no such file: {config}", param_hint="CONFIG")


@click.command()
@click.argument("job_id", required=False, callback=_job_ref)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.option("--limit", type=click.IntRange(1, 200), default=20, show_default=True)
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="List only jobs with this tag (repeatable: all of them).")
@click.option("--name", help="List only jobs of this name (a prefix when it ends with '*').")
@client_options
def status(api: ApiClient, job_id: str | None, as_json: bool, limit: int, tags: tuple[str, ...],
           name: str | None) -> None:
    """Show one job (JOB_ID: the id or a unique prefix of 6+ characters), or list your newest jobs."""
    if job_id:
        job = api.request("GET", f"/jobs/{job_id}").json()
        if as_json:
            click.echo(json.dumps(job, indent=2))
        else:
            _print_job(job)
        return
    params: dict[str, Any] = {"limit": limit, "tag": list(tags)}
    if name:
        params["name"] = name
    data = api.request("GET", "/jobs", params=params).json()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"{'ID':<{SHORT_ID}}  {'STATUS':<11} {'NAME':<20} {'CREATED (UTC)':<16}  PROGRESS / RESULT")
    for job in data["jobs"]:
        click.echo(f"{job['id'][:SHORT_ID]}  {job['status']:<11} {job['name'][:20]:<20} "
                   f"{str(job.get('created_at') or '')[:16].replace('T', ' '):<16}  {_list_detail(job)}".rstrip())


def _list_detail(job: dict[str, Any]) -> str:
    """Progress for a running job, the outcome for a finished one."""
    p = job.get("progress") or {}
    if job["status"] == "running":
        parts = []
        if p.get("epochs"):
            parts.append(f"epoch {p.get('epoch') or 0}/{p['epochs']}")
        if p.get("percent") is not None:
            parts.append(f"{float(p['percent']):.1f}%")
        if p.get("eta_s") is not None:
            parts.append(f"ETA {_duration(float(p['eta_s']))}")
        return "  ".join(parts) or "starting"
    if job["status"] == "succeeded":
        best = _best(job)
        parts = [f"val top-1 {_pct(_final_val(job).get('top1'))}"]
        if best:
            parts.append(f"best.pt epoch {best.get('epoch')} ({_pct((best.get('metrics') or {}).get('val.top1'))})")
        return "  ".join(parts)
    if job["status"] in ("failed", "cancelled") and job.get("failure_reason"):
        reason = str(job["failure_reason"]).splitlines()[0]
        return reason[:60] + ("..." if len(reason) > 60 else "")
    return ""


def _print_job(job: dict[str, Any]) -> None:
    click.echo(_fmt_progress(job))
    for key in ("id", "name", "queue", "attempts", "interruptions", "failures", "created_at", "started_at",
                "finished_at", "failure_reason"):
        if job.get(key) is not None:
            click.echo(f"  {key}: {job[key]}")
    integrity = job.get("integrity")
    if isinstance(integrity, dict):
        found = "; ".join(f"{what}: {', '.join(ids)}" for what, ids in
                          (("failed", integrity.get("failed") or []), ("warnings", integrity.get("warnings") or [])) if ids)
        click.echo(f"  integrity: {str(integrity.get('verdict')).upper()}" + (f" ({found})" if found else ""))
    for line in _summary_lines(job):
        click.echo(f"  {line}")
    for line in _timeline_lines(job.get("timeline") or []):
        click.echo(f"  {line}")


def _resumed_text(point: dict[str, Any] | None) -> str:
    if not point:
        return "start"
    batch = point.get("batch")
    return f"epoch {point.get('epoch')} step {point.get('step')}" + (f" (+{batch} batches)" if batch else "")


def _when(value: Any) -> str:
    return str(value)[:19].replace("T", " ") if value else ""


def _timeline_lines(timeline: list[dict[str, Any]]) -> list[str]:
    """The attempts as a small table: when each ran, how it ended, where it resumed from and
    the work it lost (done again by the next attempt)."""
    if not timeline:
        return []
    rows = [("ATTEMPT", "START (UTC)", "END (UTC)", "CAUSE", "RESUMED FROM", "LOST")]
    for a in timeline:
        cause = a.get("cause") or "running"
        if a.get("stop") and a.get("cause") not in ("cancelled",):
            cause += f" ({a['stop']})"
        lost = a.get("lost_s")
        rows.append((str(a.get("number")), _when(a.get("started_at")), _when(a.get("ended_at")) or "-", cause,
                     _resumed_text(a.get("resumed_from")), _duration(float(lost)) if lost is not None else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["timeline:"] + ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _sse_lines(resp: Any) -> Iterator[tuple[str, str]]:
    event, data = "message", []
    for raw in resp.iter_lines(decode_unicode=True):
        if raw is None:
            continue
        if raw == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif raw.startswith("event:"):
            event = raw[6:].strip()
        elif raw.startswith("data:"):
            data.append(raw[5:][1:] if raw[5:].startswith(" ") else raw[5:])


@click.command()
@click.argument("job_id", callback=_job_ref)
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new lines until the job ends.")
@click.option("--tail", type=click.IntRange(1, 10_000), default=200, show_default=True)
@client_options
def logs(api: ApiClient, job_id: str, follow: bool, tail: int) -> None:
    """Print a job's log (JOB_ID: the id or a unique prefix of 6+ characters)."""
    if not follow:
        for line in api.request("GET", f"/jobs/{job_id}/logs", params={"tail": tail}).json()["lines"]:
            click.echo(line)
        return
    resp = api.request("GET", f"/jobs/{job_id}/logs", params={"tail": tail, "follow": "true"}, stream=True, timeout=None)
    for event, data in _sse_lines(resp):
        if event == "end":
            click.echo(f"-- job {data}", err=True)
            return
        click.echo(data)


@click.command()
@click.argument("job_id", callback=_job_ref)
@client_options
def cancel(api: ApiClient, job_id: str) -> None:
    """Cancel a job (a running one stops within one step and keeps its last checkpoint)."""
    job = api.request("POST", f"/jobs/{job_id}/cancel").json()
    click.echo(f"{job['id']} {job['status']}{' (stopping)' if job['status'] == 'running' else ''}")


class _Progress:
    """A download progress bar on a terminal (stderr); nothing at all when it is not one, so
    logs and pipes get no control characters."""

    def __init__(self, total: int | None, stream: IO[str], label: str):
        self.total, self.stream, self.label = total, stream, label
        self.enabled = stream.isatty()
        self.done, self._drawn = 0, -1.0

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._drawn < 0.1 and (self.total is None or self.done < self.total):
            return
        self._drawn = now
        mb = self.done / 1e6
        if self.total:
            frac = min(1.0, self.done / self.total)
            filled = int(frac * 30)
            text = f"{self.label} [{'#' * filled}{'.' * (30 - filled)}] {100 * frac:5.1f}% {mb:.1f}/{self.total / 1e6:.1f} MB"
        else:
            text = f"{self.label} {mb:.1f} MB"
        self.stream.write("\r\033[K" + text)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._drawn >= 0:
            self.stream.write("\n")
            self.stream.flush()


@click.command()
@click.argument("job_id", callback=_job_ref)
@click.option("--checkpoint", default="best", show_default=True, help="best, last, epoch_0003 ...")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True)
@client_options
def download(api: ApiClient, job_id: str, checkpoint: str, out: Path) -> None:
    """Download a checkpoint and verify its sha256 against the job's manifest."""
    job_id = api.request("GET", f"/jobs/{job_id}").json()["id"]  # a prefix becomes the full id
    filename = checkpoint if checkpoint.endswith(".pt") else f"{checkpoint}.pt"
    listing = api.request("GET", f"/jobs/{job_id}/checkpoints").json()["checkpoints"]
    entry = next((c for c in listing if c["name"] == filename), None)
    if entry is None:
        names = ", ".join(c["name"] for c in listing) or "none yet"
        raise CliError(f"job {job_id[:SHORT_ID]} has no checkpoint {filename} (it has: {names})", EXIT_USAGE)
    expected = entry.get("sha256")
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{job_id}-{filename}"
    tmp = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    with api.request("GET", f"/jobs/{job_id}/checkpoints/{filename}", stream=True) as resp, tmp.open("wb") as fh:
        size = resp.headers.get("Content-Length")
        bar = _Progress(int(size) if size and size.isdigit() else entry.get("size"), sys.stderr, filename)
        for chunk in resp.iter_content(1 << 20):
            fh.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
        bar.close()
    if expected and digest.hexdigest() != expected:
        tmp.unlink()
        raise CliError(f"sha256 mismatch for {filename}: the file changed during download; retry", EXIT_FAILED)
    os.replace(tmp, target)
    if expected:
        click.echo(f"sha256 verified against the job's manifest: {expected}", err=True)
    else:
        click.echo(f"sha256 NOT verified (the server lists no digest for {filename}): {digest.hexdigest()}", err=True)
    click.echo(str(target))


# ------------------------------------------------------------------------------ operations
def _settings():  # type: ignore[no-untyped-def]
    from common.settings import Settings

    return Settings.from_env()


@contextlib.contextmanager
def _store_session():  # type: ignore[no-untyped-def]
    from common.store import make_engine, make_sessionmaker, transaction, upgrade

    engine = make_engine(_settings().database_url)
    upgrade(engine)
    try:
        with transaction(make_sessionmaker(engine)) as s:
            yield s
    finally:
        engine.dispose()


@click.group()
def tokens() -> None:
    """Manage API tokens (runs against the job store directly)."""


@tokens.command("create")
@click.option("--user", required=True, help="User name (created if new).")
@click.option("--admin", is_flag=True, help="The user may see and manage every job.")
def tokens_create(user: str, admin: bool) -> None:
    """Mint a token for USER; it is shown once and stored only as a hash."""
    from common.auth import create_token

    try:
        with _store_session() as s:
            token = create_token(s, user, admin=admin)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--user") from None
    click.echo(token)


@tokens.command("list")
@click.option("--user", default=None, help="Only this user's tokens.")
def tokens_list(user: str | None) -> None:
    """List tokens: id, user, created, state. The secrets are not stored and cannot be shown."""
    from common.auth import list_tokens

    with _store_session() as s:
        rows = [(t.id, t.user.name, "admin" if t.user.is_admin else "user",
                 t.created_at.strftime("%Y-%m-%d %H:%M:%S"), "revoked" if t.revoked else "live")
                for t in list_tokens(s, user)]
    click.echo("id\tuser\trole\tcreated (UTC)\tstate")
    for row in rows:
        click.echo("\t".join(map(str, row)))


@tokens.command("revoke")
@click.argument("token_id", type=int, required=False)
@click.option("--token", "token", default=None, help="Revoke this token (read from the value given).")
@click.option("--user", default=None, help="Revoke every live token of this user.")
def tokens_revoke(token_id: int | None, token: str | None, user: str | None) -> None:
    """Revoke TOKEN_ID (see `teacher tokens list`), a given --token, or all of a --user's tokens.
    Requests with a revoked token get 401 from the next request on."""
    from common.auth import TokenNotFound, revoke_tokens

    try:
        with _store_session() as s:
            revoked = [t.id for t in revoke_tokens(s, token_id=token_id, token=token, user_name=user)]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except TokenNotFound as exc:  # nothing the arguments name: bad input, like an unknown job
        raise CliError(str(exc), EXIT_USAGE) from None
    click.echo(f"revoked {len(revoked)} token(s): {', '.join(map(str, revoked))}")


@click.group()
def db() -> None:
    """Job-store maintenance."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations (safe to run concurrently)."""
    from common.store import LATEST_VERSION, make_engine, upgrade

    engine = make_engine(_settings().database_url)
    try:
        version = upgrade(engine)
    finally:
        engine.dispose()
    click.echo(f"job store at schema version {version} (latest {LATEST_VERSION})")
