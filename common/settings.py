"""Settings, read once from the environment (shared by the API, worker, trainer and CLI).

The one place that turns ``TEACHER_*`` variables into values. Every path setting may be given
relative (the defaults are: ``volumes/...``); it is made absolute here, against the working
directory of the process that reads the settings, so that a child started with another working
directory (the training child runs inside its job's directory) sees the same files. No other
module reads a root from the environment on its own.

This module imports nothing heavy (no Flask, no torch, no SQLAlchemy).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import environs
import marshmallow as ma


QUEUE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

# Defaults, relative to the working directory of the process reading them (the project root for
# `make demo`/`make run`, /app in the image).
DEFAULT_DATA_ROOT = "volumes/datasets"
DEFAULT_RUNS_ROOT = "volumes/runs"
DEFAULT_JOBS_ROOT = "volumes/jobs"
DEFAULT_TORCH_HOME = "volumes/torch"
DEFAULT_STATE_ROOT = "volumes/state"
DEFAULT_DATABASE_URL = "sqlite:///volumes/state/teacher.db"


def absolute(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute against the current directory (``~`` expanded; symlinks kept, as
    the configured name is what the user sees; confinement checks resolve them separately)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def absolute_database_url(url: str) -> str:
    """A SQLite URL with a relative file path made absolute; any other URL unchanged."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    rest = url[len(prefix):]
    name, sep, query = rest.partition("?")
    if not name or name == ":memory:" or name.startswith("/"):
        return url
    return f"{prefix}{absolute(name)}{sep}{query}"


def _env_path(env: Mapping[str, str], name: str, default: str) -> Path:
    raw = env.get(name)
    return absolute(raw if raw else default)


def data_root(env: Mapping[str, str] | None = None) -> Path:
    """``TEACHER_DATA_ROOT``: datasets; every ``data.root`` in a config is relative to it."""
    return _env_path(os.environ if env is None else env, "TEACHER_DATA_ROOT", DEFAULT_DATA_ROOT)


def runs_root(env: Mapping[str, str] | None = None) -> Path:
    """``TEACHER_RUNS_ROOT``: default parent of ``teacher train`` run directories and the root of
    ``init_from`` paths (the supervisor points it at the jobs root for its children)."""
    return _env_path(os.environ if env is None else env, "TEACHER_RUNS_ROOT", DEFAULT_RUNS_ROOT)


def stop_grace_s(env: Mapping[str, str] | None = None) -> float:
    """``TEACHER_CANCEL_GRACE_S`` as a training child sees it (the worker's environment): how
    long after a SIGTERM it has before the SIGKILL, so it knows whether a last checkpoint fits."""
    return float(_Env(os.environ if env is None else env).parse("number", "TEACHER_CANCEL_GRACE_S",
                                                              Settings.cancel_grace_s))


def stall_timeout_s(env: Mapping[str, str] | None = None) -> float:
    """``TEACHER_STALL_TIMEOUT_S`` as a training child sees it: a run of several processes sets
    its collectives' timeout from it (a job's ``runtime.stall_timeout_s`` wins)."""
    return float(_Env(os.environ if env is None else env).parse("number", "TEACHER_STALL_TIMEOUT_S",
                                                              Settings.stall_timeout_s))


def torch_home(env: Mapping[str, str] | None = None) -> Path:
    """``TORCH_HOME``: the local cache of pretrained weights (never downloaded into)."""
    return _env_path(os.environ if env is None else env, "TORCH_HOME", DEFAULT_TORCH_HOME)


def state_root(env: Mapping[str, str] | None = None) -> Path:
    """``TEACHER_STATE_ROOT``: the local stack's state (SQLite file, private Redis, logs, the
    endpoints file of `teacher serve`)."""
    return _env_path(os.environ if env is None else env, "TEACHER_STATE_ROOT", DEFAULT_STATE_ROOT)


def database_url(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return absolute_database_url(env.get("TEACHER_DATABASE_URL") or DEFAULT_DATABASE_URL)


@dataclass(frozen=True)
class RateLimit:
    """At most ``requests`` requests per ``seconds``-second window."""

    requests: int
    seconds: int

    def __str__(self) -> str:
        return f"{self.requests}/{self.seconds}"


# -------------------------------------------------------------------- parsing (environs)
# Each variable is read by environs through a marshmallow field. The fields' messages say
# "{name}" and "{raw}" for the variable and its value as given, filled in by _fill (marshmallow
# formats built-in messages itself, hence the doubled braces there).
def _fill(message: str, name: str, raw: str) -> str:
    return message.replace("{name}", name).replace("{raw}", repr(raw))


class _IntField(ma.fields.Integer):
    default_error_messages = {"invalid": "{{name}} must be an integer, got {{raw}}",
                              "too_large": "{{name}} must be an integer, got {{raw}}"}


class _FloatField(ma.fields.Float):
    # NaN and infinities are refused too (a heartbeat of nan seconds never fires).
    default_error_messages = {"invalid": "{{name}} must be a number, got {{raw}}",
                              "too_large": "{{name}} must be a number, got {{raw}}",
                              "special": "{{name}} must be a number, got {{raw}}"}


class _RateLimitField(ma.fields.Field):
    """``"<requests>/<seconds>"`` (e.g. ``"600/60"``); ``"0"`` or ``"off"`` disables (None)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> RateLimit | None:
        text = str(value).strip().lower()
        if text in ("0", "off"):
            return None
        requests, sep, seconds = text.partition("/")
        try:
            if not sep:
                raise ValueError(text)
            limit = RateLimit(int(requests), int(seconds))
        except ValueError:
            raise ma.ValidationError("{name} must be '<requests>/<seconds>' (e.g. '600/60'), '0' or 'off'; got {raw}") from None
        if limit.requests < 1 or limit.seconds < 1:
            raise ma.ValidationError("{name}: requests and seconds must both be at least 1 (or '0'/'off' to disable); got {raw}")
        return limit


class _CapField(ma.fields.Field):
    """A non-negative count; ``0`` or ``off`` disables (0)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> int:
        if str(value).strip().lower() == "off":
            return 0
        try:
            count = int(value)
        except ValueError:
            raise ma.ValidationError("{name} must be a whole number, '0' or 'off'; got {raw}") from None
        if count < 0:
            raise ma.ValidationError("{name} must not be negative (use '0' or 'off' to disable); got {raw}")
        return count


class _QueuesField(ma.fields.Field):
    """Comma-separated queue names (the first is the default queue)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> tuple[str, ...]:
        queues = tuple(q.strip() for q in str(value).split(",") if q.strip())
        bad = [q for q in queues if not QUEUE_NAME.match(q)]
        if not queues or bad:
            raise ma.ValidationError(f"{{name}} must be comma-separated queue names, bad: {bad}")
        return queues


class _Env(environs.Env):
    """environs over a given mapping (os.environ by default; tests pass a dict). An empty or
    blank value counts as unset (the default), as it always has here."""

    def __init__(self, source: Mapping[str, str]) -> None:
        super().__init__(eager=True)
        self._source = source
        for kind, field_cls in (("integer", _IntField), ("number", _FloatField), ("rate_limit", _RateLimitField),
                                ("cap", _CapField), ("queues", _QueuesField)):
            self.add_parser_from_field(kind, field_cls)

    def _get_value(self, env_key: str, default: Any) -> Any:  # environs' hook: where values come from
        raw = self._source.get(env_key)
        return default if raw is None or not raw.strip() else raw

    def parse(self, kind: str, name: str, default: Any) -> Any:
        """One variable through the parser ``kind``; a bad value is a ValueError with our message
        (environs' own reads 'Environment variable "X" invalid: [...]')."""
        try:
            return getattr(self, kind)(name, default)
        except environs.EnvValidationError as exc:
            messages = exc.error_messages if isinstance(exc.error_messages, list) else [str(exc)]
            raise ValueError(_fill(str(messages[0]), name, self._source[name])) from None


def parse_rate_limit(name: str, raw: str) -> RateLimit | None:
    """``"<requests>/<seconds>"`` (e.g. ``"600/60"``); ``"0"`` or ``"off"`` disables (None)."""
    try:
        return _RateLimitField().deserialize(raw)
    except ma.ValidationError as exc:
        raise ValueError(_fill(str(exc.messages[0]), name, raw)) from None


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = "redis://127.0.0.1:6379/0"
    jobs_root: Path = Path(DEFAULT_JOBS_ROOT)
    data_root: Path = Path(DEFAULT_DATA_ROOT)
    torch_home: Path = Path(DEFAULT_TORCH_HOME)
    state_root: Path = Path(DEFAULT_STATE_ROOT)
    configs_dir: Path | None = None  # None: common.config.CONFIGS_DIR
    max_content_length: int = 1 << 20          # request bodies (job submissions)
    max_upload_length: int = 64 << 20          # POST /api/v1/analyses (uploaded training artifacts)
    analyses_root: Path | None = None          # None: <jobs_root>/analyses
    queues: tuple[str, ...] = ("default",)
    max_attempts: int = 3             # failures (training raised; the child killed, e.g. OOM): then failed
    max_interruptions: int = 20       # graceful stops, lost workers, stalls: then failed
    heartbeat_s: float = 5.0
    stale_after_s: float = 60.0       # a running job whose heartbeat is older is presumed lost
    cancel_grace_s: float = 120.0     # SIGTERM -> SIGKILL escalation for a training child
    stall_timeout_s: float = 1800.0   # no training progress this long: the child is killed, the job retried
    max_job_seconds: int = 7 * 24 * 3600
    # 0: derived from max_job_seconds (the safe choice). Set only to test redelivery.
    visibility_timeout_s: int = 0
    reconcile_interval_s: float = 30.0
    lost_message_grace_s: float = 60.0  # a queued job with no broker message this long is re-sent
    worker_beat_s: float = 10.0
    sse_poll_s: float = 0.5
    python: str = field(default="")  # interpreter for the training child; "" = sys.executable
    # Per API token, every authenticated /api/v1 request (None: off); counted in Redis.
    rate_limit: RateLimit | None = RateLimit(600, 60)
    # Per API token, additionally POST /api/v1/jobs (None: off).
    submit_rate_limit: RateLimit | None = RateLimit(60, 60)
    # Per user, jobs not yet running (queued, waiting, interrupted); 0: no cap.
    max_queued_per_user: int = 100

    def __post_init__(self) -> None:
        # Resolved once, here: relative values (the defaults included) become absolute against
        # the current directory, whoever constructs the settings.
        for name in ("jobs_root", "data_root", "torch_home", "state_root", "analyses_root", "configs_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, absolute(value))
        object.__setattr__(self, "database_url", absolute_database_url(self.database_url))

    @property
    def analyses_dir(self) -> Path:
        return self.analyses_root if self.analyses_root is not None else self.jobs_root / "analyses"

    @property
    def default_queue(self) -> str:
        return self.queues[0]

    @property
    def visibility_timeout(self) -> int:
        # Longer than any job may run, so Redis never redelivers a job that is still running.
        # (If it did, the claim would drop the duplicate: tests set a short one to prove that.)
        return self.visibility_timeout_s or self.max_job_seconds + 3600

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        env = os.environ if env is None else env
        read = _Env(env).parse
        s = cls(
            database_url=database_url(env),
            redis_url=env.get("TEACHER_REDIS_URL") or cls.redis_url,
            jobs_root=_env_path(env, "TEACHER_JOBS_ROOT", DEFAULT_JOBS_ROOT),
            data_root=data_root(env),
            torch_home=torch_home(env),
            state_root=state_root(env),
            configs_dir=Path(env["TEACHER_CONFIGS_DIR"]) if env.get("TEACHER_CONFIGS_DIR") else None,
            max_content_length=read("integer", "TEACHER_MAX_CONTENT_LENGTH", cls.max_content_length),
            max_upload_length=read("integer", "TEACHER_MAX_UPLOAD_LENGTH", cls.max_upload_length),
            analyses_root=Path(env["TEACHER_ANALYSES_ROOT"]) if env.get("TEACHER_ANALYSES_ROOT") else None,
            queues=read("queues", "TEACHER_QUEUES", cls.queues),
            max_attempts=read("integer", "TEACHER_MAX_ATTEMPTS", cls.max_attempts),
            max_interruptions=read("integer", "TEACHER_MAX_INTERRUPTIONS", cls.max_interruptions),
            heartbeat_s=read("number", "TEACHER_HEARTBEAT_S", cls.heartbeat_s),
            stale_after_s=read("number", "TEACHER_STALE_AFTER_S", cls.stale_after_s),
            cancel_grace_s=read("number", "TEACHER_CANCEL_GRACE_S", cls.cancel_grace_s),
            stall_timeout_s=read("number", "TEACHER_STALL_TIMEOUT_S", cls.stall_timeout_s),
            max_job_seconds=read("integer", "TEACHER_MAX_JOB_SECONDS", cls.max_job_seconds),
            visibility_timeout_s=read("integer", "TEACHER_VISIBILITY_TIMEOUT_S", cls.visibility_timeout_s),
            reconcile_interval_s=read("number", "TEACHER_RECONCILE_INTERVAL_S", cls.reconcile_interval_s),
            lost_message_grace_s=read("number", "TEACHER_LOST_MESSAGE_GRACE_S", cls.lost_message_grace_s),
            worker_beat_s=read("number", "TEACHER_WORKER_BEAT_S", cls.worker_beat_s),
            python=env.get("TEACHER_PYTHON", ""),
            rate_limit=read("rate_limit", "TEACHER_RATE_LIMIT", cls.rate_limit),
            submit_rate_limit=read("rate_limit", "TEACHER_SUBMIT_RATE_LIMIT", cls.submit_rate_limit),
            max_queued_per_user=read("cap", "TEACHER_MAX_QUEUED_PER_USER", cls.max_queued_per_user),
        )
        return replace(s, **overrides) if overrides else s

    def as_flask_config(self) -> dict[str, Any]:
        return {"TEACHER_SETTINGS": self, "MAX_CONTENT_LENGTH": self.max_content_length}


__all__ = ["Settings", "QUEUE_NAME", "RateLimit", "parse_rate_limit", "absolute", "absolute_database_url",
           "data_root", "runs_root", "torch_home", "state_root", "database_url"]
