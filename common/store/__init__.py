"""The durable job store (SQLAlchemy 2): models, engine, migrations and job operations. Every
change of a job's status is common.store.lifecycle's (its transition table, the Outcome of an
attempt)."""
from common.store.db import (
    DEFAULT_DATABASE_URL,
    LATEST_VERSION,
    current_version,
    database_url,
    make_engine,
    make_sessionmaker,
    transaction,
    upgrade,
)
from common.store.models import FINISHED, Base, IdempotencyKey, Job, JobStatus, Token, User, WorkerBeat, utcnow
from common.store import lifecycle  # noqa: E402 (imports the models and db above)
from common.store.lifecycle import IllegalTransition, Outcome

__all__ = [
    "DEFAULT_DATABASE_URL", "LATEST_VERSION", "current_version", "database_url", "make_engine",
    "make_sessionmaker", "transaction", "upgrade", "FINISHED", "Base", "IdempotencyKey", "Job",
    "JobStatus", "Token", "User", "WorkerBeat", "utcnow", "lifecycle", "IllegalTransition", "Outcome",
]
