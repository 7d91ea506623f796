"""`teacher` commands of the job service: an HTTP client (submit, status, logs, cancel,
download) and local operations (tokens, serve, db). Imports nothing heavy: no torch, no Flask
unless `serve` needs it."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from common.config import CONFIGS_DIR, ConfigError, apply_overrides, parse_set_option, parse_yaml

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = {"succeeded", "failed", "cancelled"}


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
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise click.ClickException(f"cannot reach {self.url}: {exc}") from None
        if r.status_code not in ok:
            try:
                body = r.json()
                message = body.get("message", r.reason)
                details = "".join(f"\n  {k}: {' '.join(v)}" for k, v in (body.get("errors") or {}).items())
            except ValueError:
                message, details = r.text[:500] or r.reason, ""
            exc = click.ClickException(f"{r.status_code}: {message}{details}")
            exc.exit_code = 2 if r.status_code in (400, 413, 415, 422) else 1
            raise exc
        return r


def client_options(func: Callable[..., Any]) -> Callable[..., Any]:
    @click.option("--url", envvar="TEACHER_URL", default=DEFAULT_URL, show_default=True, help="Server URL (env TEACHER_URL).")
    @click.option("--token", envvar="TEACHER_TOKEN", help="Bearer token (env TEACHER_TOKEN).")
    @functools.wraps(func)
    def wrapper(url: str, token: str | None, **kwargs: Any) -> Any:
        if not token:
            raise click.UsageError("no token: pass --token or set TEACHER_TOKEN (mint one with `teacher tokens create`)")
        return func(ApiClient(url, token), **kwargs)

    return wrapper


def _fmt_progress(job: dict[str, Any]) -> str:
    p = job.get("progress") or {}
    parts = [f"{job['id'][:12]} {job['status']:<11}"]
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
        parts.append(f"ETA {int(p['eta_s'])}s")
    latest = p.get("latest") or {}
    parts.extend(f"{k}={v:.4g}" for k, v in list(latest.items())[:3] if isinstance(v, (int, float)))
    return "  ".join(parts)


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
@click.option("--idempotency-key", help="Resubmitting with the same key returns the same job.")
@click.option("--wait", is_flag=True, help="Show live progress until the job ends; exit 1 unless it succeeded.")
@client_options
def submit(api: ApiClient, config: str, sets: tuple[str, ...], name: str | None, queue: str | None,
           priority: int | None, after: str | None, init_from: str | None, idempotency_key: str | None, wait: bool) -> None:
    """Submit CONFIG (a YAML file, or the name of a file under configs/) as a training job."""
    try:
        overrides = dict(parse_set_option(item) for item in sets)
        path = Path(config)
        if path.is_file():
            raw = parse_yaml(path.read_text(encoding="utf-8"), source=config)
            if not isinstance(raw, dict):
                raise ConfigError({"_schema": [f"{config} is not a mapping"]})
            body: dict[str, Any] = apply_overrides(raw, overrides)
        elif (CONFIGS_DIR / f"{config}.yaml").is_file() or "/" not in config and not config.endswith((".yaml", ".yml")):
            body = {"config": config, "overrides": overrides}
        else:
            raise click.BadParameter(f"no such file: {config}", param_hint="CONFIG")
    except ConfigError as exc:
        raise click.ClickException(f"invalid config: {exc}") from None
    if name:
        body["name"] = name
    for key, value in (("queue", queue), ("priority", priority), ("after", after)):
        if value is not None:
            body[key] = value
    if init_from:
        job, _, ckpt = init_from.partition(":")
        body["init_from"] = {"job": job, "checkpoint": ckpt or "best"}
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    job = api.request("POST", "/jobs", json=body, headers=headers).json()
    click.echo(job["id"])
    if wait:
        final = _wait(api, job["id"])
        if final["status"] != "succeeded":
            raise click.ClickException(f"job {final['status']}: {final.get('failure_reason') or ''}")


@click.command()
@click.argument("job_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.option("--limit", type=click.IntRange(1, 200), default=20, show_default=True)
@client_options
def status(api: ApiClient, job_id: str | None, as_json: bool, limit: int) -> None:
    """Show one job, or list your newest jobs."""
    if job_id:
        job = api.request("GET", f"/jobs/{job_id}").json()
        if as_json:
            click.echo(json.dumps(job, indent=2))
            return
        click.echo(_fmt_progress(job))
        for key in ("name", "queue", "attempts", "created_at", "started_at", "finished_at", "failure_reason"):
            if job.get(key) is not None:
                click.echo(f"  {key}: {job[key]}")
        integrity = job.get("integrity")
        if isinstance(integrity, dict):
            found = "; ".join(f"{what}: {', '.join(ids)}" for what, ids in
                              (("failed", integrity.get("failed") or []), ("warnings", integrity.get("warnings") or [])) if ids)
            click.echo(f"  integrity: {str(integrity.get('verdict')).upper()}" + (f" ({found})" if found else ""))
        return
    data = api.request("GET", "/jobs", params={"limit": limit}).json()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for job in data["jobs"]:
        click.echo(f"{job['id']}  {job['status']:<11} {job['name']:<20} {job['created_at']}")


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
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new lines until the job ends.")
@click.option("--tail", type=click.IntRange(1, 10_000), default=200, show_default=True)
@client_options
def logs(api: ApiClient, job_id: str, follow: bool, tail: int) -> None:
    """Print a job's log."""
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
@click.argument("job_id")
@client_options
def cancel(api: ApiClient, job_id: str) -> None:
    """Cancel a job (a running one stops within one step and keeps its last checkpoint)."""
    job = api.request("POST", f"/jobs/{job_id}/cancel").json()
    click.echo(f"{job['id']} {job['status']}{' (stopping)' if job['status'] == 'running' else ''}")


@click.command()
@click.argument("job_id")
@click.option("--checkpoint", default="best", show_default=True, help="best, last, epoch_0003 ...")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True)
@client_options
def download(api: ApiClient, job_id: str, checkpoint: str, out: Path) -> None:
    """Download a checkpoint and verify its sha256 against the job's manifest."""
    filename = checkpoint if checkpoint.endswith(".pt") else f"{checkpoint}.pt"
    listing = api.request("GET", f"/jobs/{job_id}/checkpoints").json()["checkpoints"]
    expected = next((c.get("sha256") for c in listing if c["name"] == filename), None)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{job_id}-{filename}"
    tmp = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    with api.request("GET", f"/jobs/{job_id}/checkpoints/{filename}", stream=True) as resp, tmp.open("wb") as fh:
        for chunk in resp.iter_content(1 << 20):
            fh.write(chunk)
            digest.update(chunk)
    if expected and digest.hexdigest() != expected:
        tmp.unlink()
        raise click.ClickException(f"sha256 mismatch for {filename}: the file changed during download; retry")
    os.replace(tmp, target)
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
    except TokenNotFound as exc:
        raise click.ClickException(str(exc)) from None
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
