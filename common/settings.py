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


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


@dataclass(frozen=True)
class RateLimit:
    """At most ``requests`` requests per ``seconds``-second window."""

    requests: int
    seconds: int

    def __str__(self) -> str:
        return f"{self.requests}/{self.seconds}"


def parse_rate_limit(name: str, raw: str) -> RateLimit | None:
    """``"<requests>/<seconds>"`` (e.g. ``"600/60"``); ``"0"`` or ``"off"`` disables (None)."""
    text = raw.strip().lower()
    if text in ("0", "off"):
        return None
    requests, sep, seconds = text.partition("/")
    try:
        if not sep:
            raise ValueError(text)
        limit = RateLimit(int(requests), int(seconds))
    except ValueError:
        raise ValueError(f"{name} must be '<requests>/<seconds>' (e.g. '600/60'), '0' or 'off'; got {raw!r}") from None
    if limit.requests < 1 or limit.seconds < 1:
        raise ValueError(f"{name}: requests and seconds must both be at least 1 (or '0'/'off' to disable); got {raw!r}")
    return limit


def _env_rate_limit(env: Mapping[str, str], name: str, default: RateLimit | None) -> RateLimit | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    return parse_rate_limit(name, raw)


def _env_cap(env: Mapping[str, str], name: str, default: int) -> int:
    """A non-negative count; ``0`` or ``off`` disables (0)."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    if raw.strip().lower() == "off":
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, '0' or 'off'; got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative (use '0' or 'off' to disable); got {raw!r}")
    return value


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
    max_attempts: int = 3             # attempts lost while training (worker/child died): then failed
    max_interruptions: int = 20       # graceful stops and attempts lost before training: then failed
    heartbeat_s: float = 5.0
    stale_after_s: float = 60.0       # a running job whose heartbeat is older is presumed lost
    cancel_grace_s: float = 120.0     # SIGTERM -> SIGKILL escalation for a training child
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
        queues = tuple(q.strip() for q in env.get("TEACHER_QUEUES", "default").split(",") if q.strip())
        bad = [q for q in queues if not QUEUE_NAME.match(q)]
        if not queues or bad:
            raise ValueError(f"TEACHER_QUEUES must be comma-separated queue names, bad: {bad}")
        s = cls(
            database_url=database_url(env),
            redis_url=env.get("TEACHER_REDIS_URL") or cls.redis_url,
            jobs_root=_env_path(env, "TEACHER_JOBS_ROOT", DEFAULT_JOBS_ROOT),
            data_root=data_root(env),
            torch_home=torch_home(env),
            state_root=state_root(env),
            configs_dir=Path(env["TEACHER_CONFIGS_DIR"]) if env.get("TEACHER_CONFIGS_DIR") else None,
            max_content_length=_env_int(env, "TEACHER_MAX_CONTENT_LENGTH", cls.max_content_length),
            max_upload_length=_env_int(env, "TEACHER_MAX_UPLOAD_LENGTH", cls.max_upload_length),
            analyses_root=Path(env["TEACHER_ANALYSES_ROOT"]) if env.get("TEACHER_ANALYSES_ROOT") else None,
            queues=queues,
            max_attempts=_env_int(env, "TEACHER_MAX_ATTEMPTS", cls.max_attempts),
            max_interruptions=_env_int(env, "TEACHER_MAX_INTERRUPTIONS", cls.max_interruptions),
            heartbeat_s=_env_float(env, "TEACHER_HEARTBEAT_S", cls.heartbeat_s),
            stale_after_s=_env_float(env, "TEACHER_STALE_AFTER_S", cls.stale_after_s),
            cancel_grace_s=_env_float(env, "TEACHER_CANCEL_GRACE_S", cls.cancel_grace_s),
            max_job_seconds=_env_int(env, "TEACHER_MAX_JOB_SECONDS", cls.max_job_seconds),
            visibility_timeout_s=_env_int(env, "TEACHER_VISIBILITY_TIMEOUT_S", cls.visibility_timeout_s),
            reconcile_interval_s=_env_float(env, "TEACHER_RECONCILE_INTERVAL_S", cls.reconcile_interval_s),
            lost_message_grace_s=_env_float(env, "TEACHER_LOST_MESSAGE_GRACE_S", cls.lost_message_grace_s),
            worker_beat_s=_env_float(env, "TEACHER_WORKER_BEAT_S", cls.worker_beat_s),
            python=env.get("TEACHER_PYTHON", ""),
            rate_limit=_env_rate_limit(env, "TEACHER_RATE_LIMIT", cls.rate_limit),
            submit_rate_limit=_env_rate_limit(env, "TEACHER_SUBMIT_RATE_LIMIT", cls.submit_rate_limit),
            max_queued_per_user=_env_cap(env, "TEACHER_MAX_QUEUED_PER_USER", cls.max_queued_per_user),
        )
        return replace(s, **overrides) if overrides else s

    def as_flask_config(self) -> dict[str, Any]:
        return {"TEACHER_SETTINGS": self, "MAX_CONTENT_LENGTH": self.max_content_length}


__all__ = ["Settings", "QUEUE_NAME", "RateLimit", "parse_rate_limit", "absolute", "absolute_database_url",
           "data_root", "runs_root", "torch_home", "state_root", "database_url"]
